//! The writer's threads: take batches of records from the queue and commit them,
//! retrying what fails; with PostgreSQL, up to `LANES` commits in flight (see
//! `SHARED_FROM`), published in the order their batches were taken.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use super::health::Health;
use super::{Journal, Pending, MAX_BATCH};
use crate::store::{OwnLedger, Store, StoreError, UsageRecord};

/// The longest pause between two attempts at a commit that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Above this many records per second, a batch may stay open up to `LINGER`.
/// Every commit writes each page it touched (seven on SQLite for one record: the ledger
/// row, its request-id index, the id sequence, the counters of the account and the key,
/// the day's roll-up and its index) whatever the batch size, so under load, commits of
/// one or two records each wrote 16 KB of WAL per request; a batch that waits for its
/// neighbours writes those pages once for many.
/// Below the rate (1,000 req/s is far below it) a record commits as soon as it arrives
/// (from `GATHER_RATE`, with those on their way), or goes to the journal. Above it,
/// records skip the journal: at capacity, a `write` per record on the requests' threads
/// and a wake-up per response instead of one per batch cost 10-12 µs of CPU per request
/// (17,260 req/s instead of 19,582, docs/benchmarks.md).
pub(super) const BUSY_RATE: u64 = 5_000;
/// How long a batch stays open under load, at most: it closes sooner when no record is
/// on its way ([`Coming`]) or a step of `LINGER_STEP` brings none.
const LINGER: Duration = Duration::from_micros(500);
const LINGER_STEP: Duration = Duration::from_micros(100);
/// From this many records per second (and below `BUSY_RATE`), a batch that responses
/// wait for stays open up to `GATHER` while records are on their way ([`Coming`]), even
/// through steps that bring none. A commit costs PostgreSQL about the same whatever its
/// size (0.6-0.8 ms of its CPU here, docs/cluster.md, "Tenth look"), and each of three
/// replicas sharing a machine sees a third of the traffic: their commits carried 3-4
/// records where one replica's carried 12-14. With it, three replicas behind nginx served
/// 6-23 % more in six paired runs (1 ms: no gain; docs/cluster.md, "Eleventh look").
/// One replica at 1,000 req/s is below the rate and never waits; at 2,500 req/s its
/// added p50 was the same. With slow upstreams records are always on their way, so at
/// these rates a response waits up to `GATHER` more for its commit.
pub(super) const GATHER_RATE: u64 = 1_500;
const GATHER: Duration = Duration::from_millis(2);
/// How long a batch of journaled records (which no response waits for) stays open. A
/// commit writes its pages whatever the batch size, so at 1,000 req/s this cuts the
/// commits to two thirds or fewer (a test checks it), for less CPU and a smaller WAL; a read of the
/// ledger waits for it at most this long more (see [`UsageWriter::flushed`]).
const JOURNALED_LINGER: Duration = Duration::from_millis(2);
/// The window over which the rate is counted.
pub(super) const RATE_WINDOW: Duration = Duration::from_millis(20);

/// Where the writer commits.
pub(super) enum Ledger {
    /// With [`Store::record_usage_blocking`]: on the store's synchronous connection
    /// (SQLite), or on the main runtime.
    Shared(Arc<dyn Store>, Handle),
    /// On the store's [`Store::own_ledger`], on a runtime of the writer's thread.
    Own(Box<dyn OwnLedger>, tokio::runtime::Runtime),
}

impl Ledger {
    /// The store's own ledger on a current-thread runtime of the calling thread if it
    /// has one (and the runtime can be made), the shared one on `rt` otherwise.
    pub(super) fn on_this_thread(store: Arc<dyn Store>, rt: Handle) -> Ledger {
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
pub(super) enum Attempts<'a> {
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
pub(super) struct Rate {
    window_start: Instant,
    in_window: u64,
    last: u64,
}

impl Rate {
    pub(super) fn new(now: Instant) -> Rate {
        Rate {
            window_start: now,
            in_window: 0,
            last: 0,
        }
    }

    pub(super) fn add(&mut self, records: usize, now: Instant) {
        self.in_window += records as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.last = self.in_window * 1_000_000 / elapsed.as_micros().max(1) as u64;
            self.in_window = 0;
            self.window_start = now;
        }
    }

    /// Whether the last whole window saw `BUSY_RATE` or more.
    pub(super) fn busy(&self, now: Instant) -> bool {
        self.at_least(BUSY_RATE, now)
    }

    /// Whether the last whole window saw `per_second` records a second or more. A window
    /// that has stayed open for two windows' time (no batch since) counts as quiet, so a
    /// burst that ended does not keep the next batch waiting.
    pub(super) fn at_least(&self, per_second: u64, now: Instant) -> bool {
        now.saturating_duration_since(self.window_start) < RATE_WINDOW * 2
            && self.last >= per_second
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
pub(super) fn write_batch(
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

/// Commits a writer with a ledger connection of its own (PostgreSQL) may have in flight:
/// one per lane, each lane a thread with its own connection.
pub(super) const LANES: usize = 2;
/// A batch of at least this many records leaves the queue to another lane while it
/// commits; a smaller one keeps the queue until its commit ends, so at these sizes
/// commits go one at a time as with one lane. Measured (docs/cluster.md, "Two commits in
/// flight"): for commits of one record, a second in flight saves about as much waiting as
/// it costs the database on two cores; where batches hold about 160 records, two lanes
/// settle about as many per second as one (within the noise, 9 % fewer by the median of
/// one run); where they reach 600, 1.1-1.65 times as many.
const SHARED_FROM: usize = 128;
/// How long a batch taken while a large commit is in flight gathers records, at most,
/// before it commits below `SHARED_FROM` (bounds a record's wait behind a commit that
/// hangs; a large commit of 1,024 records takes 25-45 ms here).
const BEHIND_AT_MOST: Duration = Duration::from_millis(50);

/// Where the writer reports what it has done.
pub(super) struct Ends<'a> {
    pub(super) commits: &'a AtomicU64,
    pub(super) busy: &'a AtomicBool,
    pub(super) finished: &'a watch::Sender<u64>,
    pub(super) committed: &'a AtomicU64,
    pub(super) journal: Option<&'a Journal>,
    pub(super) health: &'a Health,
    pub(super) metrics: &'a crate::observe::metrics::WriterMetrics,
}

/// The queue and what paces it: taken by one lane at a time.
struct Intake {
    rx: mpsc::UnboundedReceiver<Pending>,
    rate: Rate,
    /// The number of the next batch taken.
    next: u64,
}

/// Batches whose commits ended, published to `finished` in the order they were taken:
/// [`super::UsageWriter::flushed`] counts on every record sent before it being
/// committed once `finished` reaches its count, which a later batch ending first must not
/// fake.
#[derive(Default)]
pub(super) struct InOrder {
    /// The next batch to publish.
    next: u64,
    /// Later batches that ended, with their records.
    ended: BTreeMap<u64, u64>,
}

impl InOrder {
    /// Batch `number` of `records` ended: returns the records published now (its own and
    /// those of the later batches that ended before it), 0 while an earlier one is open.
    pub(super) fn ended(&mut self, number: u64, records: u64) -> u64 {
        self.ended.insert(number, records);
        let mut published = 0;
        while let Some(records) = self.ended.remove(&self.next) {
            published += records;
            self.next += 1;
        }
        published
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the writer until every handle is gone and the queue is drained: on this thread,
/// and, for a ledger of its own without a journal (PostgreSQL), on `LANES - 1` more
/// threads, each with its own connection. `closed` tells a lane retrying a failed commit
/// that the server has stopped serving.
pub(super) fn run(
    store: Arc<dyn Store>,
    rt: Handle,
    rx: mpsc::UnboundedReceiver<Pending>,
    closed: mpsc::WeakUnboundedSender<Pending>,
    coming: &AtomicU64,
    ends: Ends<'_>,
) {
    let first = Ledger::on_this_thread(store.clone(), rt.clone());
    let lanes = match (&first, ends.journal) {
        (Ledger::Own(..), None) => LANES,
        _ => 1,
    };
    let intake = Mutex::new(Intake {
        rx,
        rate: Rate::new(Instant::now()),
        next: 0,
    });
    let order = Mutex::new(InOrder::default());
    let stopped = || closed.upgrade().is_none();
    let large_in_flight = AtomicUsize::new(0);
    let lane = Lane {
        intake: &intake,
        order: &order,
        coming,
        ends: &ends,
        stopped: &stopped,
        large_in_flight: &large_in_flight,
    };
    let drained = std::thread::scope(|scope| {
        let mut others = Vec::new();
        for index in 1..lanes {
            let (store, rt) = (store.clone(), rt.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("usage-writer-{index}"))
                .spawn_scoped(scope, move || {
                    lane.run(index, Ledger::on_this_thread(store, rt))
                });
            match spawned {
                Ok(other) => others.push(other),
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for a second usage writer lane; commits go one at a time")
                }
            }
        }
        let mut drained = lane.run(0, first);
        for other in others {
            drained &= other.join().unwrap_or(false);
        }
        drained
    });
    // Every record is in the ledger: the journal has nothing left to keep.
    if let (true, Some(journal)) = (drained, ends.journal) {
        if let Err(e) = journal.clear() {
            tracing::warn!(error = %e, "emptying the usage journal failed");
        }
    }
}

/// What the lanes share.
#[derive(Clone, Copy)]
struct Lane<'a> {
    intake: &'a Mutex<Intake>,
    order: &'a Mutex<InOrder>,
    coming: &'a AtomicU64,
    ends: &'a Ends<'a>,
    stopped: &'a (dyn Fn() -> bool + Sync),
    /// Lanes committing a large batch (without the intake).
    large_in_flight: &'a AtomicUsize,
}

impl Lane<'_> {
    /// Takes batches and commits them until the queue is closed and empty (true), or
    /// until it gives up a commit once the server has stopped serving (false).
    fn run(self, index: usize, mut ledger: Ledger) -> bool {
        let ends = self.ends;
        let mut batch: Vec<Pending> = Vec::new();
        let mut records: Vec<UsageRecord> = Vec::new();
        let mut held = None;
        loop {
            let mut intake = held.take().unwrap_or_else(|| lock(self.intake));
            let Some(number) = self.take(index, &mut intake, &mut batch) else {
                return true;
            };
            let large = batch.len() >= SHARED_FROM;
            if large {
                self.large_in_flight.fetch_add(1, Ordering::SeqCst);
                drop(intake);
            } else {
                held = Some(intake);
            }
            records.clear();
            records.extend(batch.iter().map(|p| p.record.clone()));
            // Retried until it passes: these records are never dropped (admission stops
            // while it fails, so the queue behind it stays bounded). Only once the server
            // has stopped serving does the writer give up, keeping the journal as it is.
            let commit_started = Instant::now();
            let written = write_batch(
                &mut ledger,
                &records,
                ends.health,
                Attempts::Unlimited(self.stopped),
            );
            if large {
                self.large_in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            if let Err(e) = written {
                let queued = held.unwrap_or_else(|| lock(self.intake)).rx.len();
                let journaled = batch.iter().filter(|p| p.journal_file.is_some()).count();
                tracing::error!(
                    error = %e,
                    records = batch.len() + queued,
                    journaled,
                    "stopping with usage records the ledger cannot take: those in the journal are written at the next start; the others' answers were withheld"
                );
                return false;
            }
            ends.health.batch_done(index);
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
            ends.committed
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            {
                let mut order = lock(self.order);
                let published = order.ended(number, records.len() as u64);
                if published > 0 {
                    ends.finished.send_modify(|n| *n += published);
                }
            }
            if let Some(journal) = ends.journal {
                if let Err(e) = journal.settled(journaled) {
                    tracing::warn!(error = %e, "emptying a usage journal file failed");
                }
            }
        }
    }

    /// Takes the next batch into `batch` (empty) and returns its number; `None` once the
    /// queue is closed and empty. Under load the batch stays open a little (`LINGER`).
    fn take(&self, index: usize, intake: &mut Intake, batch: &mut Vec<Pending>) -> Option<u64> {
        let ends = self.ends;
        let first = intake.rx.blocking_recv()?;
        ends.health.batch_taken(index, Instant::now());
        batch.push(first);
        drain(&mut intake.rx, batch);
        if batch.iter().all(|p| p.done.is_none()) {
            // Nobody waits for this commit: let the records of the next moment share it.
            std::thread::sleep(JOURNALED_LINGER);
            drain(&mut intake.rx, batch);
        } else {
            // While records are on their way: under load up to `LINGER`, as long as each
            // step brings one; from `GATHER_RATE` up to `GATHER`, through steps that bring
            // none.
            let now = Instant::now();
            let open = if intake.rate.busy(now) {
                Some((LINGER, true))
            } else if intake.rate.at_least(GATHER_RATE, now) {
                Some((GATHER, false))
            } else {
                None
            };
            if let Some((longest, close_on_an_empty_step)) = open {
                let until = now + longest;
                while batch.len() < MAX_BATCH
                    && self.coming.load(Ordering::Relaxed) > 0
                    && Instant::now() < until
                {
                    std::thread::sleep(LINGER_STEP);
                    let before = batch.len();
                    drain(&mut intake.rx, batch);
                    if close_on_an_empty_step && batch.len() == before {
                        break;
                    }
                }
            }
        }
        // Behind a large commit in flight these records would wait for it with one lane:
        // they gather until they make a large batch too (committed beside it), or it ends.
        let until = Instant::now() + BEHIND_AT_MOST;
        while batch.len() < SHARED_FROM
            && self.large_in_flight.load(Ordering::SeqCst) > 0
            && Instant::now() < until
        {
            std::thread::sleep(LINGER_STEP);
            drain(&mut intake.rx, batch);
        }
        intake.rate.add(batch.len(), Instant::now());
        ends.busy
            .store(intake.rate.busy(Instant::now()), Ordering::Relaxed);
        let number = intake.next;
        intake.next += 1;
        Some(number)
    }
}
