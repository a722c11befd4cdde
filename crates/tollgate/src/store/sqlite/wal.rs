//! The WAL's checkpoints: copied back into the database file in the background, and
//! the WAL file kept within its bound.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::SqlitePool;

/// How often the WAL is copied back into the database file. Each checkpoint ends with
/// an fsync that stalls other writes to the file system for a few milliseconds, so
/// fewer, larger checkpoints keep the latency tail short: at 1,000 req/s, p99 was
/// 9-14 ms with one every 500 ms and 0.8-1.0 ms with one every 5 s.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// How often the WAL file's size is checked against its bound (one `stat`).
const WAL_CHECK_EVERY: Duration = Duration::from_secs(1);
/// WAL frames (pages) above which a checkpoint also restarts the WAL.
const RESTART_WAL_FRAMES: i64 = 8192;
/// The WAL file's bound. Checked every `WAL_CHECK_EVERY`: a WAL found larger is
/// truncated to nothing (`wal_checkpoint(TRUNCATE)`) at once, so the file holds at most
/// this plus one second of writes; SQLite also cuts it back to this size whenever it starts
/// over (`journal_size_limit`). A WAL that saw no write for a whole round is truncated
/// whatever its size: an idle server keeps no WAL. Before, the file kept the size of its
/// longest run (up to 256 MB) for good, and on a small volume the megabytes it kept were
/// what the database then missed to grow (issue 13). 64 MB is above what 1,000 req/s
/// writes between two rounds (15.4 MB at most, measured: 1,000 records/s through the
/// writer and its journal for 30 s, three runs), so at that rate the file is never cut
/// and regrown; at 6,000 records/s it peaked at 97-110 MB instead of 151-238 MB
/// (docs/metering.md has the numbers).
pub(super) const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Copies committed WAL frames into the database file without blocking writers (a
/// passive checkpoint), so commits never wait for the copy or the fsync of the database
/// file. Under a steady stream of commits a passive checkpoint never catches up with
/// the last frame, so the WAL would only grow: past `RESTART_WAL_FRAMES` a restarting
/// checkpoint, which holds writers back while it copies the few frames left, starts it
/// over; past `WAL_SIZE_LIMIT`, or idle, a truncating one empties the file. Ends once
/// every handle of the store is gone.
pub(super) async fn checkpoint_loop(
    pool: SqlitePool,
    wal: Option<PathBuf>,
    alive: std::sync::Weak<()>,
) {
    // Ticks every `WAL_CHECK_EVERY`, the first one after opening (not while migrations
    // run); a round every `CHECKPOINT_EVERY`, or at once when the WAL is past its bound.
    let first = tokio::time::Instant::now() + WAL_CHECK_EVERY;
    let mut tick = tokio::time::interval_at(first, WAL_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_round = (CHECKPOINT_EVERY.as_millis() / WAL_CHECK_EVERY.as_millis()).max(1);
    let mut ticks = 0;
    let mut last = WalState::default();
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 || pool.is_closed() {
            return;
        }
        ticks += 1;
        if ticks % per_round != 0 && wal_bytes(wal.as_deref()) <= WAL_SIZE_LIMIT as u64 {
            continue;
        }
        match checkpoint(&pool, wal.as_deref(), last).await {
            Ok(state) => last = state,
            Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
        }
    }
}

/// The WAL file's size (0 if there is none).
fn wal_bytes(wal: Option<&Path>) -> u64 {
    wal.and_then(|path| std::fs::metadata(path).ok())
        .map_or(0, |m| m.len())
}

/// What a checkpoint round saw of the WAL: frames in it and frames copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct WalState {
    frames: i64,
    copied: i64,
}

/// What a round does after its passive checkpoint, given what it saw, what the round
/// before saw and the WAL file's size: `TRUNCATE` past the bound or when nothing was
/// written since the round before and everything is copied; `RESTART` past
/// `RESTART_WAL_FRAMES`; else nothing more.
fn wal_plan(seen: WalState, last: WalState, bytes: u64) -> Option<&'static str> {
    let idle = seen == last && seen.frames == seen.copied;
    if bytes > WAL_SIZE_LIMIT as u64 || (idle && bytes > 0) {
        Some("TRUNCATE")
    } else if seen.frames > RESTART_WAL_FRAMES {
        Some("RESTART")
    } else {
        None
    }
}

/// One round of `checkpoint_loop`, given what the round before saw.
async fn checkpoint(
    pool: &SqlitePool,
    wal: Option<&Path>,
    last: WalState,
) -> Result<WalState, sqlx::Error> {
    // (busy, frames in the WAL, frames copied)
    let (_, frames, copied) =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
    let seen = WalState { frames, copied };
    let Some(mode) = wal_plan(seen, last, wal_bytes(wal)) else {
        return Ok(seen);
    };
    let (busy, frames, copied) =
        sqlx::query_as::<_, (i64, i64, i64)>(&format!("PRAGMA wal_checkpoint({mode})"))
            .fetch_one(pool)
            .await?;
    if busy != 0 {
        tracing::debug!(
            mode,
            "SQLite checkpoint could not finish (readers or a writer held it)"
        );
    }
    Ok(WalState { frames, copied })
}

#[cfg(test)]
mod tests {
    use super::super::ledger::append_locked;
    use super::super::{test_record, test_store_with_key};
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_round_truncates_past_the_bound_or_when_idle_and_restarts_a_long_wal() {
        let state = |frames, copied| WalState { frames, copied };
        let limit = WAL_SIZE_LIMIT as u64;
        // Written to since the round before: kept, unless past the bound or long.
        assert_eq!(wal_plan(state(50, 50), state(10, 10), 1 << 20), None);
        assert_eq!(
            wal_plan(state(50, 40), state(10, 10), limit + 1),
            Some("TRUNCATE")
        );
        assert_eq!(
            wal_plan(state(9000, 100), state(10, 10), 10 << 20),
            Some("RESTART")
        );
        // Nothing written since, everything copied: emptied, whatever its size.
        assert_eq!(
            wal_plan(state(50, 50), state(50, 50), 60_000),
            Some("TRUNCATE")
        );
        assert_eq!(wal_plan(state(0, 0), state(0, 0), 0), None);
        // Nothing written since, but a reader kept frames from being copied: kept.
        assert_eq!(wal_plan(state(50, 30), state(50, 30), 60_000), None);
    }

    #[tokio::test]
    async fn a_wal_past_its_bound_is_truncated_and_so_is_an_idle_one() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, account, key) = test_store_with_key(dir.path()).await;
        let path = dir.path().join("t.db");
        let record = |i: usize| test_record(&format!("r{i}"), account, key, 1);
        let wal = path.with_extension("db-wal");
        let wal_size = || std::fs::metadata(&wal).expect("wal").len();
        // Rounds (the store's own loop runs too: either may do the cut, and one that
        // runs while the other holds the file finds it busy) until the WAL is empty.
        let rounds_until_empty = |what: &'static str| {
            let (store, wal) = (&store, &wal);
            async move {
                let mut last = WalState::default();
                for _ in 0..100 {
                    last = checkpoint(&store.pool, Some(wal), last)
                        .await
                        .expect("checkpoint");
                    if std::fs::metadata(wal).expect("wal").len() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("{what}: the WAL was never truncated");
            }
        };
        // One record per commit, as at a low request rate: the WAL grows past the bound.
        let mut written = 0;
        while wal_size() <= WAL_SIZE_LIMIT as u64 {
            append_locked(&store.ledger, &[record(written)]).expect("append");
            written += 1;
        }
        rounds_until_empty("past the bound").await;
        // A few commits, then rounds with no write in between: the WAL is emptied.
        for _ in 0..20 {
            append_locked(&store.ledger, &[record(written)]).expect("append");
            written += 1;
        }
        assert!(wal_size() > 0);
        rounds_until_empty("idle").await;
        // And the ledger has every record.
        append_locked(&store.ledger, &[record(written)]).expect("append");
        let account = store
            .account(account)
            .await
            .expect("read")
            .expect("account");
        assert_eq!(account.charged.nanos(), written as i64 + 1);
    }
}
