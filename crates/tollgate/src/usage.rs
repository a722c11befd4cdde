//! The usage writer: appends usage records to the ledger in batches (group commit).
//! A response is only finished once its charge is safe from a crash of this process:
//! - on SQLite below [`writer::BUSY_RATE`], once the record is in the usage journal
//!   ([`Journal`]): one `write` of a file next to the database, while the writer commits
//!   the records behind it;
//! - otherwise once its batch is committed: on PostgreSQL always (a replica's journal
//!   would be lost with its machine), and under load on SQLite too, where many requests
//!   share each commit and waiting for it costs less CPU than a `write` per record.
//!
//! Under load a batch stays open a little while records are still arriving (see
//! [`writer::BUSY_RATE`]; from [`writer::GATHER_RATE`], up to 2 ms for the records on
//! their way). The writer runs on a thread of its own (the runtime's blocking
//! pool), so a store with a synchronous ledger connection commits a batch on it directly,
//! and one over the network (PostgreSQL) on a connection of the writer's own, driven by a
//! runtime of that thread; there a second thread with a second connection commits the
//! next batch while a large one is in flight ([`writer`]).
//!
//! Waits are bounded (`[limits] ledger_wait_ms`): a record not safe within the bound
//! fails its request with [`LedgerError`] (it stays queued and is committed once the
//! ledger recovers), and while the writer is stuck new model requests are refused at
//! admission ([`UsageWriter::admit`], see [`health`]).

mod health;
mod journal;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use health::Health;
pub use health::{LedgerError, WriterStatus, MAX_QUEUE};
pub use journal::{Frame, Journal};

use crate::store::{Outage, Store, StoreError, UsageRecord};
use writer::{write_batch, Attempts, Ends, Ledger};

/// How long a request waits for its usage record to be safe, unless configured.
pub const DEFAULT_LEDGER_WAIT: Duration = Duration::from_secs(5);
/// Attempts at writing the records a crash left in the journal before start-up fails.
const REPLAY_ATTEMPTS: u32 = 5;

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 1024;
/// Records the writer may be behind before a response waits for its record's commit
/// even with a journal: if the ledger stalls, requests slow down instead of the queue
/// (and the journal) growing without bound.
const MAX_BACKLOG: u64 = 10_000;

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
    /// Records the writer has committed (or given up on) so far, each counted only once
    /// every batch taken before its own is committed too: a count of `n` means the first
    /// `n` records taken are in the ledger ([`UsageWriter::flushed`]).
    finished: watch::Receiver<u64>,
    /// Records the writer has committed (or given up on) so far, as their commits end
    /// (the backlog).
    committed: Arc<AtomicU64>,
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
        let closed = tx.downgrade();
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
            committed: Arc::new(AtomicU64::new(0)),
            health: Arc::new(Health::new(ledger_wait)),
            metrics: Default::default(),
        };
        let counters = (
            writer.commits.clone(),
            writer.coming.clone(),
            writer.busy.clone(),
            writer.health.clone(),
            writer.metrics.clone(),
            writer.committed.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let ends = Ends {
                commits: &counters.0,
                busy: &counters.2,
                finished: &finished_tx,
                committed: &counters.5,
                journal: journal.as_deref(),
                health: &counters.3,
                metrics: &counters.4,
            };
            writer::run(store, rt, rx, closed, &counters.1, ends);
            counters.3.end();
        });
        // The watchdog holds no sender: it does not keep the writer alive.
        let (sent, committed) = (writer.sent.clone(), writer.committed.clone());
        tokio::spawn(writer.health.clone().watch(move || {
            let committed = committed.load(Ordering::Relaxed);
            sent.load(Ordering::Relaxed).saturating_sub(committed)
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
        let committed = self.committed.load(Ordering::Relaxed);
        self.sent.load(Ordering::Relaxed).saturating_sub(committed)
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

#[cfg(test)]
mod tests;
