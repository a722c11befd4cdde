//! The usage writer: appends usage records to the ledger in batches (group commit).
//! A response is only finished once its charge is safe from a crash of this process:
//! - on SQLite below `BUSY_RATE`, once the record is in the usage journal ([`Journal`]):
//!   one `write` of a file next to the database, while the writer commits the records
//!   behind it;
//! - otherwise once its batch is committed: on PostgreSQL always (a replica's journal
//!   would be lost with its machine), and under load on SQLite too, where many requests
//!   share each commit and waiting for it costs less CPU than a `write` per record.
//!
//! Under load a batch stays open a little while records are still arriving (see
//! `BUSY_RATE`). The writer runs on a thread of its own (the runtime's blocking pool), so
//! a store with a synchronous ledger connection commits a batch on it directly, and one
//! over the network (PostgreSQL) on a connection of the writer's own, driven by a
//! runtime of that thread.
//!
//! Waits are bounded (`[limits] ledger_wait_ms`): a record not safe within the bound
//! fails its request with [`LedgerError`] (it stays queued and is committed once the
//! ledger recovers), and while the writer is stuck new model requests are refused at
//! admission ([`UsageWriter::admit`], see [`health`]).

mod health;
mod journal;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use health::Health;
pub use health::{LedgerError, WriterStatus, MAX_QUEUE};
pub use journal::{Frame, Journal};

use crate::store::{Outage, OwnLedger, Store, StoreError, UsageRecord};

/// How long a request waits for its usage record to be safe, unless configured.
pub const DEFAULT_LEDGER_WAIT: Duration = Duration::from_secs(5);
/// Attempts at writing the records a crash left in the journal before start-up fails.
const REPLAY_ATTEMPTS: u32 = 5;
/// The longest pause between two attempts at a commit that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 1024;
/// Records the writer may be behind before a response waits for its record's commit
/// even with a journal: if the ledger stalls, requests slow down instead of the queue
/// (and the journal) growing without bound.
const MAX_BACKLOG: u64 = 10_000;
/// Above this many records per second, a batch may stay open up to `LINGER`.
/// Every commit writes each page it touched (seven on SQLite for one record: the ledger
/// row, its request-id index, the id sequence, the counters of the account and the key,
/// the day's roll-up and its index) whatever the batch size, so under load, commits of
/// one or two records each wrote 16 KB of WAL per request; a batch that waits for its
/// neighbours writes those pages once for many.
/// Below the rate (1,000 req/s is far below it) a record commits as soon as it arrives,
/// or goes to the journal. Above it, records skip the journal: at capacity, a `write` per
/// record on the requests' threads and a wake-up per response instead of one per batch
/// cost 10-12 µs of CPU per request (17,260 req/s instead of 19,582, docs/benchmarks.md).
const BUSY_RATE: u64 = 5_000;
/// How long a batch stays open under load, at most: it closes sooner when no record is
/// on its way ([`Coming`]) or a step of `LINGER_STEP` brings none.
const LINGER: Duration = Duration::from_micros(500);
const LINGER_STEP: Duration = Duration::from_micros(100);
/// How long a batch of journaled records (which no response waits for) stays open. A
/// commit writes its pages whatever the batch size, so at 1,000 req/s this cuts the
/// commits to two thirds or fewer (a test checks it), for less CPU and a smaller WAL; a read of the
/// ledger waits for it at most this long more (see [`UsageWriter::flushed`]).
const JOURNALED_LINGER: Duration = Duration::from_millis(2);
/// The window over which the rate is counted.
const RATE_WINDOW: Duration = Duration::from_millis(20);

struct Pending {
    record: UsageRecord,
    /// Told once the record is committed; `None` when nobody waits (it is in the journal).
    done: Option<oneshot::Sender<()>>,
    /// The journal file that holds the record, if one does.
    journal_file: Option<usize>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::UnboundedSender<Pending>,
    journal: Option<Arc<Journal>>,
    commits: Arc<AtomicU64>,
    /// Records on their way (see [`Coming`]).
    coming: Arc<AtomicU64>,
    /// Whether records arrive at `BUSY_RATE` or more (they then skip the journal).
    busy: Arc<AtomicBool>,
    /// Records handed to the writer so far.
    sent: Arc<AtomicU64>,
    /// Records the writer has committed (or given up on) so far.
    finished: watch::Receiver<u64>,
    /// Whether the ledger takes records in time (the admission flag).
    health: Arc<Health>,
    /// Commit time and records per commit (`tollgate_usage_*`).
    metrics: crate::observe::metrics::WriterMetrics,
}

/// A record on its way to the writer: taken when a request is admitted, given up when
/// its record is sent (or the request ends without one). Under load the writer keeps a
/// batch open only while records are on their way, so a lone caller never waits.
pub struct Coming {
    writer: UsageWriter,
}

impl Coming {
    /// Sends the record and waits until it is safe (see [`UsageWriter::record`]).
    pub async fn record(self, record: UsageRecord) -> Result<(), LedgerError> {
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
    /// Starts the writer; a request waits at most `ledger_wait` for its record to be
    /// safe. If the store has a usage journal, first writes the records a crash left in
    /// it to the ledger (failing after `REPLAY_ATTEMPTS` attempts, as on a full disk),
    /// then checks that the journal's volume has room. The writer ends once every handle
    /// is dropped and the queue is drained.
    pub async fn start(
        store: Arc<dyn Store>,
        ledger_wait: Duration,
    ) -> Result<(UsageWriter, tokio::task::JoinHandle<()>), StoreError> {
        let journal = match store.usage_journal_ledger() {
            Some(ledger) => {
                let (journal, left) = Journal::open(&ledger).map_err(|e| {
                    StoreError::Open(format!(
                        "usage journal {}: {e}",
                        Journal::paths(&ledger)[0].display()
                    ))
                })?;
                if !left.is_empty() {
                    replay(&store, &ledger, &journal, left).await?;
                }
                let journal_error = |e: std::io::Error| {
                    StoreError::Open(format!(
                        "cannot write the usage journal {} (next to the database {}): {e}; free space on that volume and start again",
                        journal.file_paths()[0].display(),
                        ledger.display()
                    ))
                };
                journal.clear().map_err(journal_error)?;
                journal.probe().map_err(journal_error)?;
                Some(Arc::new(journal))
            }
            None => None,
        };
        Ok(UsageWriter::spawn(store, journal, ledger_wait))
    }

    fn spawn(
        store: Arc<dyn Store>,
        journal: Option<Arc<Journal>>,
        ledger_wait: Duration,
    ) -> (UsageWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (finished_tx, finished) = watch::channel(0);
        let rt = Handle::current();
        let writer = UsageWriter {
            tx,
            journal: journal.clone(),
            commits: Arc::new(AtomicU64::new(0)),
            coming: Arc::new(AtomicU64::new(0)),
            busy: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            finished,
            health: Arc::new(Health::new(ledger_wait)),
            metrics: Default::default(),
        };
        let counters = (
            writer.commits.clone(),
            writer.coming.clone(),
            writer.busy.clone(),
            writer.health.clone(),
            writer.metrics.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let ends = Ends {
                commits: &counters.0,
                busy: &counters.2,
                finished: &finished_tx,
                journal: journal.as_deref(),
                health: &counters.3,
                metrics: &counters.4,
            };
            write_loop(Ledger::on_this_thread(store, rt), rx, &counters.1, ends);
            counters.3.end();
        });
        // The watchdog holds no sender: it does not keep the writer alive.
        let (sent, finished) = (writer.sent.clone(), writer.finished.clone());
        tokio::spawn(writer.health.clone().watch(move || {
            let finished = *finished.borrow();
            sent.load(Ordering::Relaxed).saturating_sub(finished)
        }));
        (writer, task)
    }

    /// The writer's commit histograms.
    pub fn metrics(&self) -> &crate::observe::metrics::WriterMetrics {
        &self.metrics
    }

    /// The admission check, made before any upstream call: refuses while the writer is
    /// stuck (its last commit failed for an outage, its batch is older than the bound,
    /// or `MAX_QUEUE` records wait), so that nothing is generated that cannot be
    /// recorded. One atomic load.
    #[inline]
    pub fn admit(&self) -> Result<(), LedgerError> {
        self.health.admit()
    }

    /// The writer's state, for `/readyz`.
    pub fn status(&self) -> WriterStatus {
        self.health.status(self.backlog(), Instant::now())
    }

    /// How long a request waits for its record to be safe.
    pub fn wait_bound(&self) -> Duration {
        self.health.wait
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

    /// Hands a record to the writer and waits until it is safe: in the journal if the
    /// store has one and the writer is not busy (if writing it there fails, until it is
    /// committed), committed otherwise; at most the bound (`ledger_wait_ms`).
    ///
    /// `Err(TimedOut)`: not safe within the bound. The record stays queued and is
    /// committed once the ledger takes records again (it is never withdrawn: a commit of
    /// it may be under way), so the request is charged; its answer must not be
    /// delivered as a success. `Err(Gone)`: the writer has stopped and the record, in no
    /// journal, was not written.
    pub async fn record(&self, record: UsageRecord) -> Result<(), LedgerError> {
        let record = match &self.journal {
            Some(journal) if !self.busy.load(Ordering::Relaxed) && self.backlog() < MAX_BACKLOG => {
                match self.journal_and_send(journal, record) {
                    None => return Ok(()),
                    Some(record) => record,
                }
            }
            _ => record,
        };
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            record,
            done: Some(done),
            journal_file: None,
        };
        if !self.send(pending) {
            tracing::error!("usage writer is gone; a usage record was not written");
            return Err(LedgerError::Gone);
        }
        match tokio::time::timeout(self.health.wait, committed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(LedgerError::Gone),
            Err(_) => {
                tracing::warn!(
                    wait_ms = self.health.wait.as_millis() as u64,
                    "a usage record was not committed in time; its answer is withheld (the record stays queued)"
                );
                Err(LedgerError::TimedOut(self.health.wait))
            }
        }
    }

    /// Writes a record to the journal and hands it to the writer; gives it back if the
    /// journal could not take it.
    fn journal_and_send(&self, journal: &Journal, record: UsageRecord) -> Option<UsageRecord> {
        let frame = Frame::of(&record);
        let mut record = Some(record);
        // Sent while the journal is held, so the writer learns of a journal file's
        // records in the order they were written.
        let appended = journal.append(&frame, |file| {
            let pending = record.take().map(|record| Pending {
                record,
                done: None,
                journal_file: Some(file),
            });
            if pending.is_some_and(|pending| !self.send(pending)) {
                tracing::warn!(
                    "usage writer is gone; a usage record waits in the journal for the next start"
                );
            }
        });
        if let Err(e) = appended {
            tracing::error!(error = %e, "writing the usage journal failed; the response waits for its commit");
        }
        record
    }

    /// Records handed to the writer and not yet committed.
    fn backlog(&self) -> u64 {
        let finished = *self.finished.borrow();
        self.sent.load(Ordering::Relaxed).saturating_sub(finished)
    }

    fn send(&self, pending: Pending) -> bool {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.tx.send(pending).is_ok()
    }

    /// Waits until every record handed over before this call is committed (or given up
    /// on), so that a read of the ledger after it sees them. Returns at once if the
    /// writer is gone.
    pub async fn flushed(&self) {
        let target = self.sent.load(Ordering::SeqCst);
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|n| *n >= target).await;
    }

    /// [`UsageWriter::flushed`] within the bound: refuses at once while the writer is
    /// stuck, and after the bound if the records have not been committed by then.
    pub async fn caught_up(&self) -> Result<(), LedgerError> {
        self.health.admit()?;
        tokio::time::timeout(self.health.wait, self.flushed())
            .await
            .map_err(|_| LedgerError::TimedOut(self.health.wait))
    }

    /// The journal, if the store has one (for tests).
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_deref()
    }
}

/// Where the writer commits.
enum Ledger {
    /// With [`Store::record_usage_blocking`]: on the store's synchronous connection
    /// (SQLite), or on the main runtime.
    Shared(Arc<dyn Store>, Handle),
    /// On the store's [`Store::own_ledger`], on a runtime of the writer's thread.
    Own(Box<dyn OwnLedger>, tokio::runtime::Runtime),
}

impl Ledger {
    /// The store's own ledger on a current-thread runtime of the calling thread if it
    /// has one (and the runtime can be made), the shared one on `rt` otherwise.
    fn on_this_thread(store: Arc<dyn Store>, rt: Handle) -> Ledger {
        let Some(ledger) = store.own_ledger() else {
            return Ledger::Shared(store, rt);
        };
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(own) => Ledger::Own(ledger, own),
            Err(e) => {
                tracing::warn!(error = %e, "no runtime of its own for the usage writer; it commits on the main one");
                Ledger::Shared(store, rt)
            }
        }
    }

    fn commit(&mut self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
        match self {
            Ledger::Shared(store, rt) => store.record_usage_blocking(rt, batch),
            Ledger::Own(ledger, rt) => rt.block_on(ledger.record_usage(batch)),
        }
    }
}

/// How many times a transient failure is retried.
#[derive(Clone, Copy)]
enum Attempts<'a> {
    /// Until it passes (records of the running server are never dropped), unless the
    /// function says the server has stopped serving: every request has then been
    /// answered, so a record still waiting was withheld or is in the journal.
    Unlimited(&'a dyn Fn() -> bool),
    /// At most this many attempts in all (the journal's records at start-up).
    AtMost(u32),
}

/// A write that failed: permanently (the database refuses the records), or transiently
/// after the attempts allowed.
enum WriteError {
    Refused(StoreError),
    GaveUp(StoreError),
}

/// Writes records, retrying transient failures with backoff (10 ms doubling up to
/// `MAX_BACKOFF`), and tells `health` how each attempt went.
fn write_with_retries(
    ledger: &mut Ledger,
    records: &[UsageRecord],
    health: &Health,
    attempts: Attempts,
) -> Result<(), WriteError> {
    let mut backoff = Duration::from_millis(10);
    let mut made = 0;
    loop {
        made += 1;
        match ledger.commit(records) {
            Ok(_) => {
                health.committed();
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                health.failed(e.outage());
                let give_up = match attempts {
                    Attempts::AtMost(n) => made >= n,
                    Attempts::Unlimited(stopped) => stopped(),
                };
                if give_up {
                    return Err(WriteError::GaveUp(e));
                }
                tracing::warn!(error = %e, batch = records.len(), retry_in_ms = backoff.as_millis() as u64, "writing usage failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                health.failed(None);
                return Err(WriteError::Refused(e));
            }
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

/// Writes a batch, retrying transient failures; if the database refuses something in
/// it, writes its records one by one so one bad record cannot hold back every other
/// charge. Records are idempotent by request id, so retrying a batch whose commit may or
/// may not have happened charges nothing twice. Fails only when `attempts` run out.
fn write_batch(
    ledger: &mut Ledger,
    records: &[UsageRecord],
    health: &Health,
    attempts: Attempts,
) -> Result<(), StoreError> {
    let e = match write_with_retries(ledger, records, health, attempts) {
        Ok(()) => return Ok(()),
        Err(WriteError::GaveUp(e)) => return Err(e),
        Err(WriteError::Refused(e)) => e,
    };
    tracing::error!(error = %e, batch = records.len(), "a usage batch was refused; writing its records one by one");
    for record in records {
        match write_with_retries(ledger, std::slice::from_ref(record), health, attempts) {
            Ok(()) => {}
            Err(WriteError::GaveUp(e)) => return Err(e),
            Err(WriteError::Refused(e)) => tracing::error!(
                error = %e,
                request_id = %record.request_id,
                account = record.account_id.0,
                key = record.key_id.0,
                cost_nanos = record.cost.nanos(),
                "a usage record was refused by the database and NOT written"
            ),
        }
    }
    Ok(())
}

/// Writes the records a crash left in the journal to the ledger, before the server
/// serves: a bounded number of attempts, then a clear error (on a full disk, one that
/// names the files and says so) instead of retrying for ever before listening.
async fn replay(
    store: &Arc<dyn Store>,
    ledger: &std::path::Path,
    journal: &Journal,
    left: Vec<UsageRecord>,
) -> Result<(), StoreError> {
    let mut writer_ledger = Ledger::Shared(store.clone(), Handle::current());
    let records = left.len();
    let written = tokio::task::spawn_blocking(move || {
        let health = Health::new(DEFAULT_LEDGER_WAIT);
        for chunk in left.chunks(MAX_BATCH) {
            let attempts = Attempts::AtMost(REPLAY_ATTEMPTS);
            write_batch(&mut writer_ledger, chunk, &health, attempts)?;
        }
        Ok::<_, StoreError>(())
    })
    .await
    .map_err(|e| StoreError::Open(format!("usage journal: {e}")))?;
    if let Err(e) = written {
        let cause = match e.outage() {
            Some(Outage::DiskFull) => format!("no space left on device ({e})"),
            _ => e.to_string(),
        };
        return Err(StoreError::Open(format!(
            "cannot write the {records} usage records left in {} to the ledger {} ({REPLAY_ATTEMPTS} attempts): {cause}; they stay in the journal for the next start",
            journal.file_paths()[0].display(),
            ledger.display(),
        )));
    }
    tracing::info!(
        records,
        "wrote the usage records left in the journal by the last run to the ledger"
    );
    Ok(())
}

/// Where the writer reports what it has done.
struct Ends<'a> {
    commits: &'a AtomicU64,
    busy: &'a AtomicBool,
    finished: &'a watch::Sender<u64>,
    journal: Option<&'a Journal>,
    health: &'a Health,
    metrics: &'a crate::observe::metrics::WriterMetrics,
}

fn write_loop(
    mut ledger: Ledger,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    coming: &AtomicU64,
    ends: Ends<'_>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut records: Vec<UsageRecord> = Vec::new();
    let mut rate = Rate::new(Instant::now());
    while let Some(first) = rx.blocking_recv() {
        ends.health.batch_taken(Instant::now());
        batch.push(first);
        drain(&mut rx, &mut batch);
        if batch.iter().all(|p| p.done.is_none()) {
            // Nobody waits for this commit: let the records of the next moment share it.
            std::thread::sleep(JOURNALED_LINGER);
            drain(&mut rx, &mut batch);
        } else if rate.busy(Instant::now()) {
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
        ends.busy
            .store(rate.busy(Instant::now()), Ordering::Relaxed);
        records.clear();
        records.extend(batch.iter().map(|p| p.record.clone()));
        // Retried until it passes: these records are never dropped (admission stops
        // while it fails, so the queue behind it stays bounded). Only once the server
        // has stopped serving does the writer give up, keeping the journal as it is.
        let stopped = || rx.is_closed();
        let commit_started = Instant::now();
        let written = write_batch(
            &mut ledger,
            &records,
            ends.health,
            Attempts::Unlimited(&stopped),
        );
        if let Err(e) = written {
            let journaled = batch.iter().filter(|p| p.journal_file.is_some()).count();
            tracing::error!(
                error = %e,
                records = batch.len() + rx.len(),
                journaled,
                "stopping with usage records the ledger cannot take: those in the journal are written at the next start; the others' answers were withheld"
            );
            return;
        }
        ends.health.batch_done();
        ends.commits.fetch_add(1, Ordering::Relaxed);
        ends.metrics
            .commit_seconds
            .observe(commit_started.elapsed().as_secs_f64());
        ends.metrics.records_per_commit.observe(batch.len() as f64);
        let mut journaled = [0; 2];
        for pending in batch.drain(..) {
            if let Some(file) = pending.journal_file {
                journaled[file] += 1;
            }
            if let Some(done) = pending.done {
                let _ = done.send(());
            }
        }
        ends.finished.send_modify(|n| *n += records.len() as u64);
        if let Some(journal) = ends.journal {
            if let Err(e) = journal.settled(journaled) {
                tracing::warn!(error = %e, "emptying a usage journal file failed");
            }
        }
    }
    // Every record is in the ledger: the journal has nothing left to keep.
    if let Some(journal) = ends.journal {
        if let Err(e) = journal.clear() {
            tracing::warn!(error = %e, "emptying the usage journal failed");
        }
    }
}

#[cfg(test)]
mod tests;
