//! The ledger's writer: usage batches appended, with the counters derived from them, in
//! one transaction on a connection of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::super::{daily_counts, day_of, StoreError, UsageRecord};
use super::wal::WAL_SIZE_LIMIT;

/// SQL for `column + delta` held within SQLite's 64-bit integers: past them SQLite turns
/// the sum into a REAL, which no reader expects. The `CAST` also mends a counter an older
/// version let become a REAL. `delta` is a parameter or another column.
macro_rules! saturating_add {
    ($column:literal, $delta:literal) => {
        concat!(
            "CASE WHEN ",
            $delta,
            " > 0 AND CAST(",
            $column,
            " AS INTEGER) > 9223372036854775807 - ",
            $delta,
            " THEN 9223372036854775807 WHEN ",
            $delta,
            " < 0 AND CAST(",
            $column,
            " AS INTEGER) < (-9223372036854775807 - 1) - ",
            $delta,
            " THEN -9223372036854775807 - 1 ELSE CAST(",
            $column,
            " AS INTEGER) + ",
            $delta,
            " END"
        )
    };
}

/// Appends a batch through the ledger connection, waiting for it if another thread
/// holds it.
pub(super) fn append_locked(
    ledger: &Mutex<Ledger>,
    batch: &[UsageRecord],
) -> Result<Vec<bool>, StoreError> {
    // A panic cannot leave a transaction open: dropping it rolls it back.
    let mut ledger = ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(ledger.append(batch)?)
}

/// What a set of new ledger records adds to the counters derived from the ledger.
#[derive(Default)]
struct Derived<'a> {
    accounts: BTreeMap<i64, i64>,
    /// Per key: cost, latest `created_at`.
    keys: BTreeMap<i64, (i64, i64)>,
    /// Per (account, day, key, model): see [`daily_counts`].
    daily: BTreeMap<(i64, String, i64, &'a str), [i64; 6]>,
}

impl<'a> Derived<'a> {
    fn of(records: impl Iterator<Item = &'a UsageRecord>) -> Self {
        let mut d = Derived::default();
        // Sums held at the 64-bit limits, as the counters they are added to are.
        for r in records {
            let cost = r.cost.nanos();
            let account = d.accounts.entry(r.account_id.0).or_default();
            *account = account.saturating_add(cost);
            let key = d.keys.entry(r.key_id.0).or_insert((0, i64::MIN));
            key.0 = key.0.saturating_add(cost);
            key.1 = key.1.max(r.created_at);
            let day = d
                .daily
                .entry((
                    r.account_id.0,
                    day_of(r.created_at),
                    r.key_id.0,
                    r.model.as_str(),
                ))
                .or_default();
            for (sum, add) in day.iter_mut().zip(daily_counts(r)) {
                *sum = sum.saturating_add(add);
            }
        }
        d
    }
}

/// The connection that appends usage batches, driven directly (rusqlite) by the thread
/// that writes them. sqlx runs each SQLite connection on a worker thread of its own, so
/// a batch written through it crosses threads twice more; here the usage writer's
/// thread runs the transaction itself, with every statement prepared once.
/// It is the only connection that writes the ledger, so the ledger's pages stay in its
/// cache (another connection's write would make SQLite drop a connection's whole cache).
pub(super) struct Ledger {
    conn: rusqlite::Connection,
}

impl Ledger {
    pub(super) fn open(path: &Path) -> Result<Ledger, StoreError> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // The same settings as the pool's connections (see `SqliteStore::open`); the
        // pool has already put the file in WAL mode.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
        )?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        Ok(Ledger { conn })
    }

    /// Appends a batch in one transaction, skipping request ids already in the ledger.
    fn append(&mut self, batch: &[UsageRecord]) -> Result<Vec<bool>, rusqlite::Error> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut written = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, \
                 input_tokens, cached_input_tokens, output_tokens, cost, status, latency_ms, \
                 created_at, requested_model, provider, attempts, estimated, loss) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
                 ON CONFLICT (request_id) DO NOTHING",
            )?;
            for r in batch {
                let rows = insert.execute(rusqlite::params![
                    r.request_id,
                    r.account_id.0,
                    r.key_id.0,
                    r.model,
                    r.endpoint,
                    r.input_tokens,
                    r.cached_input_tokens,
                    r.output_tokens,
                    r.cost.nanos(),
                    r.status,
                    r.latency_ms,
                    r.created_at,
                    r.detail.requested_model,
                    r.detail.provider,
                    r.detail.attempts,
                    r.detail.estimated,
                    r.detail.loss.nanos(),
                ])?;
                written.push(rows == 1);
            }
        }
        let derived = Derived::of(
            batch
                .iter()
                .zip(&written)
                .filter(|(_, w)| **w)
                .map(|(r, _)| r),
        );
        {
            let mut account = tx.prepare_cached(concat!(
                "UPDATE accounts SET charged = ",
                saturating_add!("charged", "?2"),
                " WHERE id = ?1"
            ))?;
            for (id, cost) in &derived.accounts {
                account.execute((id, cost))?;
            }
            let mut key = tx.prepare_cached(concat!(
                "UPDATE api_keys SET usage = ",
                saturating_add!("usage", "?2"),
                ", last_used_at = MAX(COALESCE(last_used_at, 0), ?3) WHERE id = ?1"
            ))?;
            for (id, (cost, last)) in &derived.keys {
                key.execute((id, cost, last))?;
            }
            let mut daily = tx.prepare_cached(concat!(
                "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, \
                 input_tokens, output_tokens, estimated_requests, fallback_requests) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET requests = ",
                saturating_add!("requests", "excluded.requests"),
                ", cost = ",
                saturating_add!("cost", "excluded.cost"),
                ", input_tokens = ",
                saturating_add!("input_tokens", "excluded.input_tokens"),
                ", output_tokens = ",
                saturating_add!("output_tokens", "excluded.output_tokens"),
                ", estimated_requests = ",
                saturating_add!("estimated_requests", "excluded.estimated_requests"),
                ", fallback_requests = ",
                saturating_add!("fallback_requests", "excluded.fallback_requests"),
            ))?;
            for ((account, day, key, model), sums) in &derived.daily {
                daily.execute(rusqlite::params![
                    account, day, key, model, sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]
                ])?;
            }
        }
        tx.commit()?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_record, test_store_with_key};
    use super::*;

    #[tokio::test]
    async fn a_one_record_commit_writes_a_few_small_pages() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, account, key) = test_store_with_key(dir.path()).await;
        let wal = dir.path().join("t.db-wal");
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&store.pool)
            .await
            .expect("truncate the WAL");
        assert_eq!(std::fs::metadata(&wal).expect("wal").len(), 0);
        const COMMITS: u64 = 200;
        for i in 0..COMMITS {
            let record = test_record(&format!("r{i}"), account, key, 1);
            append_locked(&store.ledger, &[record]).expect("append");
        }
        // Seven pages of 1 KB and their frame headers, plus one page for each of the
        // request log's three indexes (migration 0007): about 10.7 KB per commit.
        let per_commit = std::fs::metadata(&wal).expect("wal").len() / COMMITS;
        assert!(
            per_commit <= 11 * 1024,
            "{per_commit} bytes of WAL per commit"
        );
    }
}
