//! The usage writer: appends usage records to the ledger in batches (group commit).
//! A caller waits until its record is committed, so a response is only finished once
//! its charge is durable, while many requests share one transaction. Under load a batch
//! stays open a little while records are still arriving (see `BUSY_RATE`).
//!
//! The writer runs on a thread of its own (the runtime's blocking pool), so a store with
//! a synchronous ledger connection commits a batch on it directly: a record crosses
//! threads once to get there and once when its caller is woken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError, UsageRecord};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 1024;
/// Above this many records per second, a batch may stay open up to `LINGER`.
/// Every commit writes each page it touched (seven on SQLite for one record: the ledger
/// row, its request-id index, the id sequence, the counters of the account and the key,
/// the day's roll-up and its index) whatever the batch size, so under load, commits of
/// one or two records each wrote 16 KB of WAL per request; a batch that waits for its
/// neighbours writes those pages once for many.
/// Below the rate (1,000 req/s is far below it) a record commits as soon as it arrives.
const BUSY_RATE: u64 = 5_000;
/// How long a batch stays open under load, at most: it closes sooner when no record is
/// on its way ([`Coming`]) or a step of `LINGER_STEP` brings none.
const LINGER: Duration = Duration::from_micros(500);
const LINGER_STEP: Duration = Duration::from_micros(100);
/// The window over which the rate is counted.
const RATE_WINDOW: Duration = Duration::from_millis(20);

struct Pending {
    record: UsageRecord,
    done: oneshot::Sender<()>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::UnboundedSender<Pending>,
    commits: Arc<AtomicU64>,
    /// Records on their way (see [`Coming`]).
    coming: Arc<AtomicU64>,
}

/// A record on its way to the writer: taken when a request is admitted, given up when
/// its record is sent (or the request ends without one). Under load the writer keeps a
/// batch open only while records are on their way, so a lone caller never waits.
pub struct Coming {
    writer: UsageWriter,
}

impl Coming {
    /// Sends the record and waits until it is committed (see [`UsageWriter::record`]).
    pub async fn record(self, record: UsageRecord) -> bool {
        let writer = self.writer.clone();
        drop(self);
        writer.record(record).await
    }
}

impl Drop for Coming {
    fn drop(&mut self) {
        self.writer.coming.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UsageWriter {
    /// Starts the writer. It ends once every handle is dropped and the queue is drained.
    pub fn start(store: Arc<dyn Store>) -> (UsageWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = Handle::current();
        let commits = Arc::new(AtomicU64::new(0));
        let coming = Arc::new(AtomicU64::new(0));
        let counters = (commits.clone(), coming.clone());
        let task = tokio::task::spawn_blocking(move || {
            write_loop(store.as_ref(), &rt, rx, &counters.0, &counters.1)
        });
        (
            UsageWriter {
                tx,
                commits,
                coming,
            },
            task,
        )
    }

    /// Counts a record on its way until the returned handle sends it or is dropped.
    pub fn coming(&self) -> Coming {
        self.coming.fetch_add(1, Ordering::Relaxed);
        Coming {
            writer: self.clone(),
        }
    }

    /// Batches written so far (each one transaction, unless the database refused it and
    /// its records were written one by one).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues a record and waits until it is committed. Returns `false` only if the
    /// writer is gone (shutting down), in which case the record was not written.
    pub async fn record(&self, record: UsageRecord) -> bool {
        let (done, committed) = oneshot::channel();
        if self.tx.send(Pending { record, done }).is_err() {
            tracing::error!("usage writer is gone; a usage record was not written");
            return false;
        }
        committed.await.is_ok()
    }
}

/// Writes records, retrying transient failures with backoff until they pass; returns
/// the first permanent failure.
fn write_with_retries(
    store: &dyn Store,
    rt: &Handle,
    records: &[UsageRecord],
) -> Result<(), StoreError> {
    let mut backoff = Duration::from_millis(10);
    loop {
        match store.record_usage_blocking(rt, records) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, batch = records.len(), "writing usage failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Records per second, counted over the last whole `RATE_WINDOW`.
struct Rate {
    window_start: Instant,
    in_window: u64,
    last: u64,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            window_start: now,
            in_window: 0,
            last: 0,
        }
    }

    fn add(&mut self, records: usize, now: Instant) {
        self.in_window += records as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.last = self.in_window * 1_000_000 / elapsed.as_micros().max(1) as u64;
            self.in_window = 0;
            self.window_start = now;
        }
    }

    /// Whether the last whole window saw `BUSY_RATE` or more. A window that has stayed
    /// open for two windows' time (no batch since) counts as quiet, so a burst that
    /// ended does not keep the next batch waiting.
    fn busy(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.window_start) < RATE_WINDOW * 2 && self.last >= BUSY_RATE
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

fn write_loop(
    store: &dyn Store,
    rt: &Handle,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    commits: &AtomicU64,
    coming: &AtomicU64,
) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut records: Vec<UsageRecord> = Vec::new();
    let mut rate = Rate::new(Instant::now());
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch);
        if rate.busy(Instant::now()) {
            let until = Instant::now() + LINGER;
            while batch.len() < MAX_BATCH
                && coming.load(Ordering::Relaxed) > 0
                && Instant::now() < until
            {
                std::thread::sleep(LINGER_STEP);
                let before = batch.len();
                drain(&mut rx, &mut batch);
                if batch.len() == before {
                    break;
                }
            }
        }
        rate.add(batch.len(), Instant::now());
        records.clear();
        records.extend(batch.iter().map(|p| p.record.clone()));
        // Records are idempotent by request id, so retrying a batch whose commit may or
        // may not have happened charges nothing twice.
        if let Err(e) = write_with_retries(store, rt, &records) {
            // The database refuses something in the batch: write the records one by one
            // so one bad record cannot hold back every other charge.
            tracing::error!(error = %e, batch = records.len(), "a usage batch was refused; writing its records one by one");
            for record in &records {
                if let Err(e) = write_with_retries(store, rt, std::slice::from_ref(record)) {
                    tracing::error!(
                        error = %e,
                        request_id = %record.request_id,
                        account = record.account_id.0,
                        key = record.key_id.0,
                        cost_nanos = record.cost.nanos(),
                        "a usage record was refused by the database and NOT written"
                    );
                }
            }
        }
        commits.fetch_add(1, Ordering::Relaxed);
        for pending in batch.drain(..) {
            let _ = pending.done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_record as record;
    use crate::store::{AccountId, KeyId};

    async fn store_with_key(dir: &std::path::Path) -> (Arc<dyn Store>, AccountId, KeyId) {
        let (store, account, key) = crate::store::test_store_with_key(dir).await;
        (Arc::new(store), account, key)
    }

    /// Sends `count` records at an even `interval` from a thread of their own (open loop:
    /// a record does not wait for the one before), then waits for all of them.
    async fn trickle(
        writer: &UsageWriter,
        account: AccountId,
        key: KeyId,
        count: usize,
        interval: Duration,
    ) {
        let rt = Handle::current();
        let sender = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut waits = Vec::new();
                // Each record is announced one interval before it is sent, as a request is
                // admitted before its record is written.
                let mut announced: Option<(Coming, UsageRecord)> = None;
                for i in 0..=count {
                    let due = start + interval * i as u32;
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                    let next = (i < count).then(|| {
                        let record = record(&format!("{interval:?}-{i}"), account, key, 1);
                        (writer.coming(), record)
                    });
                    if let Some((coming, record)) = std::mem::replace(&mut announced, next) {
                        waits.push(rt.spawn(coming.record(record)));
                    }
                }
                waits
            })
        };
        let waits = tokio::task::spawn_blocking(move || sender.join().expect("sender"))
            .await
            .expect("join");
        for wait in waits {
            assert!(wait.await.expect("task"));
        }
    }

    #[test]
    fn the_rate_is_busy_only_above_busy_rate_and_quiet_after_a_pause() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut rate = Rate::new(start);
        // 1,000 records/s: one record a millisecond.
        for ms in 1..=100 {
            rate.add(1, at(ms));
            assert!(!rate.busy(at(ms)), "busy at 1,000/s ({ms} ms)");
        }
        // 10,000 records/s: busy once a whole window has been counted.
        for ms in 101..=200 {
            rate.add(10, at(ms));
        }
        assert!(rate.busy(at(200)));
        // No batch for two windows: quiet again, whatever the last window saw.
        assert!(!rate.busy(at(200) + RATE_WINDOW * 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_load_a_batch_waits_for_its_neighbours() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, account, key) = store_with_key(dir.path()).await;
        let (writer, _task) = UsageWriter::start(store.clone());
        // 20,000 records/s: each commit carries several records (7 to 8 here). Without
        // the wait, commits took 1.6 records on average. (A busy machine only makes
        // batches larger.)
        trickle(&writer, account, key, 4_000, Duration::from_micros(50)).await;
        let commits = writer.commits();
        assert!(
            commits * 4 <= 4_000,
            "4,000 records at 20,000/s took {commits} commits"
        );
        let account = store
            .account(account)
            .await
            .expect("read")
            .expect("account");
        assert_eq!(account.charged.nanos(), 4_000);
    }

    #[tokio::test]
    async fn concurrent_records_share_commits_and_a_bad_record_blocks_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, account, key) = store_with_key(dir.path()).await;
        let (writer, task) = UsageWriter::start(store.clone());
        let mut waits = Vec::new();
        for i in 0..200 {
            let writer = writer.clone();
            // Record 100 names a key that does not exist: the database refuses it.
            let key_id = if i == 100 { KeyId(999) } else { key };
            waits.push(tokio::spawn(async move {
                writer
                    .record(record(&format!("r{i}"), account, key_id, 5))
                    .await
            }));
        }
        for wait in waits {
            assert!(wait.await.expect("task"));
        }
        let account = store
            .account(account)
            .await
            .expect("read")
            .expect("account");
        assert_eq!(account.charged.nanos(), 199 * 5);
        assert!(store.usage_record("r100").await.expect("read").is_none());
        assert!(store.usage_record("r199").await.expect("read").is_some());
        drop(writer);
        task.await.expect("writer ends when every handle is gone");
    }
}
