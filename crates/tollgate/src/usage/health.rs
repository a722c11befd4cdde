//! Whether the ledger takes usage records in time: the admission flag the gateway reads
//! before every model request (one atomic load), the error a request gets when its
//! record cannot be made safe, and what `/readyz` reports about the writer.
//!
//! The writer is *stuck* while any of these holds:
//! - its last commit failed because the database cannot serve (a full disk, a lost or
//!   timed-out connection, an I/O error): at once, from the writer's own thread;
//! - a batch it is writing (on any of its lanes) was taken longer ago than the bound
//!   (`ledger_wait_ms`): a commit that hangs, or keeps failing for contention;
//! - `MAX_QUEUE` records or more wait for their commit.
//!
//! A watchdog task re-evaluates the flag every `TICK` (and clears it once the writer
//! commits again), so nothing on the request path does more than read it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::writer::LANES;
use crate::store::Outage;

/// Records waiting for their commit at which new model requests are refused. Each
/// waiting record is about 250 bytes, so the queue holds at most a few megabytes: at the
/// bound, admission refuses new requests, while the records of requests already
/// admitted are still taken (never dropped); no more than were in flight at that moment.
pub const MAX_QUEUE: u64 = 20_000;
/// How often the watchdog re-evaluates the flag.
const TICK: Duration = Duration::from_millis(50);

/// Why a usage record could not be made safe, or a request was refused for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The writer is stuck (see the module's documentation): refused at admission.
    #[error("the usage ledger is not taking records")]
    Stuck,
    /// The record was handed to the writer but was not safe within the bound. It stays
    /// queued and is committed once the ledger takes records again.
    #[error("the usage record was not safe within {0:?}")]
    TimedOut(Duration),
    /// The writer has stopped (the server is shutting down).
    #[error("the usage writer has stopped")]
    Gone,
}

/// The writer's state as `/readyz` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WriterStatus {
    /// New model requests are refused while this is set.
    pub stuck: bool,
    /// Records handed to the writer and not yet committed.
    pub backlog: u64,
    /// How long the batch being written has waited, in milliseconds (0 when idle).
    pub oldest_pending_ms: u64,
    /// Commit attempts that failed in a row.
    pub failed_commits: u32,
    /// What the last failed attempt ran into, while attempts fail.
    pub last_error: Option<&'static str>,
}

/// Shared between the writer's thread, its watchdog and every handle.
pub(super) struct Health {
    stuck: AtomicBool,
    /// Per lane, when the batch it writes was taken, in microseconds since `base`, plus
    /// one; 0 while the lane has none.
    batch_since: [AtomicU64; LANES],
    failures: AtomicU32,
    /// The last failure's kind ([`Kind`] as a number).
    last_error: AtomicU8,
    base: Instant,
    /// How long a request waits for its record to be safe.
    pub(super) wait: Duration,
    /// Set once the writer's loop has ended; the watchdog then ends too.
    ended: AtomicBool,
}

/// What a failed commit ran into.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Kind {
    None = 0,
    DiskFull,
    Unreachable,
    Io,
    Other,
}

impl Kind {
    fn of(outage: Option<Outage>) -> Kind {
        match outage {
            Some(Outage::DiskFull) => Kind::DiskFull,
            Some(Outage::Unreachable) => Kind::Unreachable,
            Some(Outage::Io) => Kind::Io,
            None => Kind::Other,
        }
    }

    fn is_outage(code: u8) -> bool {
        [Kind::DiskFull, Kind::Unreachable, Kind::Io]
            .iter()
            .any(|k| *k as u8 == code)
    }

    fn name(code: u8) -> Option<&'static str> {
        match code {
            1 => Some(Outage::DiskFull.as_str()),
            2 => Some(Outage::Unreachable.as_str()),
            3 => Some(Outage::Io.as_str()),
            4 => Some("commit_failed"),
            _ => None,
        }
    }
}

impl Health {
    pub(super) fn new(wait: Duration) -> Health {
        Health {
            stuck: AtomicBool::new(false),
            batch_since: Default::default(),
            failures: AtomicU32::new(0),
            last_error: AtomicU8::new(Kind::None as u8),
            base: Instant::now(),
            wait,
            ended: AtomicBool::new(false),
        }
    }

    /// The admission check: one atomic load.
    #[inline]
    pub(super) fn admit(&self) -> Result<(), LedgerError> {
        if self.stuck.load(Ordering::Relaxed) {
            Err(LedgerError::Stuck)
        } else {
            Ok(())
        }
    }

    pub(super) fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    /// A lane of the writer took a batch to write.
    pub(super) fn batch_taken(&self, lane: usize, now: Instant) {
        let since = now.saturating_duration_since(self.base).as_micros() as u64 + 1;
        self.batch_since[lane].store(since, Ordering::Relaxed);
    }

    /// A lane of the writer is done with its batch.
    pub(super) fn batch_done(&self, lane: usize) {
        self.batch_since[lane].store(0, Ordering::Relaxed);
    }

    /// A commit attempt failed. An outage of the database stops admission at once;
    /// contention (busy, locked, serialization) only once the batch is older than the
    /// bound.
    pub(super) fn failed(&self, outage: Option<Outage>) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_error
            .store(Kind::of(outage) as u8, Ordering::Relaxed);
        if outage.is_some() {
            self.stuck.store(true, Ordering::Relaxed);
        }
    }

    /// A commit attempt succeeded.
    pub(super) fn committed(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.last_error.store(Kind::None as u8, Ordering::Relaxed);
        }
    }

    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// The age of the oldest batch being written, on any lane.
    fn oldest_pending(&self, now: Instant) -> Duration {
        let age = |since: &AtomicU64| match since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => now
                .saturating_duration_since(self.base)
                .saturating_sub(Duration::from_micros(since - 1)),
        };
        self.batch_since.iter().map(age).max().unwrap_or_default()
    }

    /// Re-evaluates the flag, given the records waiting for their commit.
    pub(super) fn evaluate(&self, backlog: u64, now: Instant) -> bool {
        // The last attempt failed for an outage (a success resets the kind).
        let failing = Kind::is_outage(self.last_error.load(Ordering::Relaxed));
        let stuck = failing || self.oldest_pending(now) > self.wait || backlog >= MAX_QUEUE;
        let was = self.stuck.swap(stuck, Ordering::Relaxed);
        if stuck != was {
            let status = self.status(backlog, now);
            if stuck {
                tracing::error!(
                    backlog,
                    oldest_pending_ms = status.oldest_pending_ms,
                    error = status.last_error.unwrap_or("slow_commit"),
                    "the usage ledger is not taking records: model requests are refused with 503 until it does"
                );
            } else {
                tracing::warn!(
                    backlog,
                    "the usage ledger takes records again: model requests are admitted"
                );
            }
        }
        stuck
    }

    pub(super) fn status(&self, backlog: u64, now: Instant) -> WriterStatus {
        WriterStatus {
            stuck: self.is_stuck(),
            backlog,
            oldest_pending_ms: self.oldest_pending(now).as_millis() as u64,
            failed_commits: self.failures.load(Ordering::Relaxed),
            last_error: Kind::name(self.last_error.load(Ordering::Relaxed)),
        }
    }

    /// Re-evaluates the flag every `TICK` until the writer ends. `backlog` counts the
    /// records waiting for their commit.
    pub(super) async fn watch(self: Arc<Self>, backlog: impl Fn() -> u64) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.ended.load(Ordering::Relaxed) {
            tick.tick().await;
            self.evaluate(backlog(), Instant::now());
        }
        self.stuck.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_follows_failures_age_and_backlog() {
        let wait = Duration::from_secs(2);
        let health = Health::new(wait);
        let start = health.base;
        assert_eq!(health.admit(), Ok(()));
        // Contention alone does not stop admission while the batch is young...
        health.batch_taken(0, start);
        health.failed(None);
        assert_eq!(health.admit(), Ok(()));
        assert!(!health.evaluate(0, start + Duration::from_secs(1)));
        // ... but once the batch is older than the bound, it does.
        assert!(health.evaluate(0, start + Duration::from_secs(3)));
        assert_eq!(health.admit(), Err(LedgerError::Stuck));
        health.committed();
        health.batch_done(0);
        assert!(!health.evaluate(0, start + Duration::from_secs(3)));
        // A full disk stops admission at once, before any watchdog round.
        health.batch_taken(0, start);
        health.failed(Some(Outage::DiskFull));
        assert_eq!(health.admit(), Err(LedgerError::Stuck));
        let status = health.status(7, start + Duration::from_millis(500));
        assert_eq!(
            status,
            WriterStatus {
                stuck: true,
                backlog: 7,
                oldest_pending_ms: 500,
                failed_commits: 1,
                last_error: Some("disk_full"),
            }
        );
        // Recovered: the next round admits again.
        health.committed();
        health.batch_done(0);
        assert!(!health.evaluate(0, start + Duration::from_secs(1)));
        // A queue at its bound stops admission even while commits succeed.
        assert!(health.evaluate(MAX_QUEUE, start));
        assert!(!health.evaluate(MAX_QUEUE - 1, start));
    }

    #[test]
    fn a_batch_hanging_on_one_lane_is_seen_while_the_other_lane_commits() {
        let wait = Duration::from_secs(2);
        let health = Health::new(wait);
        let start = health.base;
        health.batch_taken(0, start);
        // The other lane takes and ends batches meanwhile: lane 0's age still counts.
        for ms in [1_000, 2_000, 2_900] {
            health.batch_taken(1, start + Duration::from_millis(ms));
            health.batch_done(1);
        }
        health.batch_taken(1, start + Duration::from_millis(2_950));
        let later = start + Duration::from_secs(3);
        assert_eq!(health.status(0, later).oldest_pending_ms, 3_000);
        assert!(health.evaluate(0, later));
        // Once lane 0 is done, lane 1's young batch is the oldest.
        health.batch_done(0);
        assert_eq!(health.status(0, later).oldest_pending_ms, 50);
        assert!(!health.evaluate(0, later));
    }
}
