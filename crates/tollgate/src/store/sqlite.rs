//! The embedded SQLite store (WAL mode), the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::overflow::{integer, sum_overflowed};
use super::*;
use crate::billing::Credits;

/// SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The connection that writes usage batches (see [`Ledger`]).
    ledger: Arc<Mutex<Ledger>>,
    /// The database file (`None` in memory).
    file: Option<std::path::PathBuf>,
    /// Dropped with the last handle; the checkpoint task then ends.
    _alive: Arc<()>,
}

const KEY_COLUMNS: &str = "id, account_id, kind, name, hint, created_at, updated_at, expires_at, \
     is_enabled, credit_limit, usage, last_used_at, deleted_at, rate_limit_rpm, \
     clamp_max_tokens";

const ACCOUNT_SELECT: &str = "SELECT a.id, a.name, a.created_at, a.charged, \
     COALESCE((SELECT SUM(g.amount) FROM credit_grants g WHERE g.account_id = a.id), 0) AS granted \
     FROM accounts a";

/// The per-day and per-model roll-ups of `Store::activity`. One range of the table, which is
/// clustered by (account_id, day, model, key_id) (migration 0002), is read in order and
/// grouped per (day, model) with no sort and no lookup; days and models are then summed
/// from those few groups. Columns: `grouped_by` (0 day, 1 model), `label` (the day or the
/// model), the four sums, and `sort_cost` (the cost; 0 for days, which sort by date).
const DAYS_AND_MODELS_QUERY: &str = "\
    WITH day_model AS MATERIALIZED (\
      SELECT day, model, SUM(requests) AS requests, SUM(cost) AS cost, \
        SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, \
        SUM(estimated_requests) AS estimated_requests, \
        SUM(fallback_requests) AS fallback_requests \
      FROM usage_daily WHERE account_id = $1 AND day >= $2 GROUP BY day, model) \
    SELECT 0 AS grouped_by, day AS label, SUM(requests) AS requests, SUM(cost) AS cost, \
      SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, \
      SUM(estimated_requests) AS estimated_requests, \
      SUM(fallback_requests) AS fallback_requests, 0 AS sort_cost \
    FROM day_model GROUP BY day \
    UNION ALL \
    SELECT 1, model, SUM(requests), SUM(cost), SUM(input_tokens), SUM(output_tokens), \
      SUM(estimated_requests), SUM(fallback_requests), SUM(cost) \
    FROM day_model GROUP BY model \
    ORDER BY grouped_by, sort_cost DESC, label";

/// The per-key roll-up of `Store::activity`, with the keys' names. The covering index
/// `usage_daily_by_key` (migration 0002) is read in key order, with no sort and no table
/// lookup; it holds the account's earlier days too, which the scan skips as it goes.
/// Left to itself, SQLite 3.46 prefers the primary key's narrower range of days and sorts
/// every row by key (60,000 rows: 43 instead of 26 ms), hence `INDEXED BY`.
const KEYS_QUERY: &str = "\
    SELECT b.key_id, COALESCE(k.name, '') AS name, b.requests, b.cost, b.input_tokens, \
      b.output_tokens \
    FROM (\
      SELECT key_id, SUM(requests) AS requests, SUM(cost) AS cost, \
        SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens \
      FROM usage_daily INDEXED BY usage_daily_by_key \
      WHERE account_id = $1 AND day >= $2 GROUP BY key_id) AS b \
    LEFT JOIN api_keys k ON k.id = b.key_id \
    ORDER BY b.cost DESC, b.key_id";

/// `Store::activity` the slow way, for an account whose roll-up holds counts so near the
/// 64-bit limit that SQLite's `SUM` overflows (an error): its rows, summed in Rust.
const DAILY_ROWS_QUERY: &str = "\
    SELECT u.day, u.model, u.key_id, COALESCE(k.name, '') AS name, u.requests, u.cost, \
      u.input_tokens, u.output_tokens, u.estimated_requests, u.fallback_requests \
    FROM usage_daily u LEFT JOIN api_keys k ON k.id = u.key_id \
    WHERE u.account_id = $1 AND u.day >= $2";

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

/// The sums of a row of an activity query of `account`.
fn totals_from_row(row: &SqliteRow, account: i64) -> Result<UsageTotals, StoreError> {
    let sum = |column| integer(row, column, "usage_daily", account);
    // The per-key query reads a covering index without these two: 0 there.
    let optional = |column: &'static str| {
        if row
            .columns()
            .iter()
            .any(|c| sqlx::Column::name(c) == column)
        {
            sum(column)
        } else {
            Ok(0)
        }
    };
    Ok(UsageTotals {
        requests: sum("requests")?,
        cost: Credits::from_nanos(sum("cost")?),
        input_tokens: sum("input_tokens")?,
        output_tokens: sum("output_tokens")?,
        estimated_requests: optional("estimated_requests")?,
        fallback_requests: optional("fallback_requests")?,
    })
}

/// Builds `Store::activity`'s answer from the rows of its two queries.
fn activity_from_rows(
    days_and_models: &[SqliteRow],
    keys: &[SqliteRow],
    account: i64,
) -> Result<ActivityRollup, StoreError> {
    let mut rollup = ActivityRollup::default();
    for row in days_and_models {
        rollup.push(
            row.try_get("grouped_by")?,
            row.try_get("label")?,
            None,
            totals_from_row(row, account)?,
        )?;
    }
    for row in keys {
        rollup.push(
            2,
            row.try_get("name")?,
            Some(row.try_get("key_id")?),
            totals_from_row(row, account)?,
        )?;
    }
    Ok(rollup)
}

impl SqliteStore {
    /// Opens (creating if missing) the database file of a `sqlite://PATH` URL.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash (kill -9); only an OS crash
            // can lose the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .page_size(PAGE_SIZE);
        if let Some(parent) = Path::new(options.get_filename()).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Open(format!("{}: {e}", parent.display())))?;
            }
        }
        // Checkpoints run in the background (below), not in whichever commit crosses
        // 1,000 WAL pages: that commit would copy and fsync the database file while
        // every request of its batch waits for it.
        let options = options
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string());
        let file = Path::new(options.get_filename());
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // A local file does not go stale: skip the ping (a round trip to the
            // connection's worker thread) before every statement.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(file, e.into()))?;
        // Opened after the pool, which has created the file and put it in WAL mode.
        let ledger = Ledger::open(file).map_err(|e| open_error(file, e))?;
        let ledger = Arc::new(Mutex::new(ledger));
        let file = file.is_file().then(|| file.to_path_buf());
        let alive = Arc::new(());
        let wal = file.as_ref().map(|file| {
            let mut wal = file.as_os_str().to_owned();
            wal.push("-wal");
            PathBuf::from(wal)
        });
        tokio::spawn(checkpoint_loop(pool.clone(), wal, Arc::downgrade(&alive)));
        Ok(SqliteStore {
            pool,
            ledger,
            file,
            _alive: alive,
        })
    }

    /// `Store::activity` from the account's daily rows, summed here with every sum held
    /// at the 64-bit limits: for an account whose sums overflow SQLite's `SUM`.
    async fn activity_summed_here(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<ActivityRollup, StoreError> {
        let rows = sqlx::query(DAILY_ROWS_QUERY)
            .bind(account.0)
            .bind(since_day)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok(DailyRow {
                    day: row.try_get("day")?,
                    model: row.try_get("model")?,
                    key_id: row.try_get("key_id")?,
                    key_name: row.try_get("name")?,
                    totals: totals_from_row(row, account.0)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(ActivityRollup::of_rows(rows))
    }

    /// The pool, for tests and tools that inspect the file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Names a full volume as such when opening (or migrating) the database at `file`
/// failed: on a full disk SQLite cannot size its shared-memory file and reports a "disk
/// I/O error" (code 4874), which does not tell an operator what to do. Only on this
/// error path is the volume checked, by writing a small file next to the database.
fn open_error(file: &Path, e: StoreError) -> StoreError {
    let mut probe = file.as_os_str().to_owned();
    probe.push("-space-check");
    let probe = PathBuf::from(probe);
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        use std::io::Write;
        f.write_all(&[0; 64 * 1024])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&probe);
    match written {
        Err(full) if full.kind() == std::io::ErrorKind::StorageFull => StoreError::Open(format!(
            "{}: no space left on device ({e}); free space on that volume and start again",
            file.display()
        )),
        _ => e,
    }
}

/// The page size of a new database file (an existing file keeps its own). A usage record
/// is about 150 bytes, but a one-record commit writes every page it touched whole: seven
/// pages (the record, its request-id index, the id sequence, the account, the key, the
/// day's roll-up and its index). With 4 KB pages that was 28 KB of WAL per request, and
/// the checkpoint's fsync of that much held up the commits behind it: at 1,000 req/s, p99
/// 0.67-1.52 ms and p99.9 10-30 ms with 4 KB pages, 0.60-0.64 ms and 4.2-5.3 ms with 1 KB.
const PAGE_SIZE: u32 = 1024;

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
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Copies committed WAL frames into the database file without blocking writers (a
/// passive checkpoint), so commits never wait for the copy or the fsync of the database
/// file. Under a steady stream of commits a passive checkpoint never catches up with
/// the last frame, so the WAL would only grow: past `RESTART_WAL_FRAMES` a restarting
/// checkpoint, which holds writers back while it copies the few frames left, starts it
/// over; past `WAL_SIZE_LIMIT`, or idle, a truncating one empties the file. Ends once
/// every handle of the store is gone.
async fn checkpoint_loop(pool: SqlitePool, wal: Option<PathBuf>, alive: std::sync::Weak<()>) {
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

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let id: i64 = row.try_get("id")?;
    Ok(KeyRecord {
        id: KeyId(id),
        account_id: AccountId(row.try_get("account_id")?),
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("key kind {kind}")))?,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        is_enabled: row.try_get("is_enabled")?,
        credit_limit: row
            .try_get::<Option<i64>, _>("credit_limit")?
            .map(Credits::from_nanos),
        usage: Credits::from_nanos(integer(row, "usage", "api_keys", id)?),
        last_used_at: row.try_get("last_used_at")?,
        deleted_at: row.try_get("deleted_at")?,
        rate_limit_rpm: row.try_get("rate_limit_rpm")?,
        clamp_max_tokens: row.try_get("clamp_max_tokens")?,
    })
}

fn account_from_row(row: &SqliteRow) -> Result<Account, StoreError> {
    let id: i64 = row.try_get("id")?;
    Ok(Account {
        id: AccountId(id),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        granted: Credits::from_nanos(row.try_get("granted")?),
        charged: Credits::from_nanos(integer(row, "charged", "accounts", id)?),
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Appends a batch through the ledger connection, waiting for it if another thread
/// holds it.
fn append_locked(ledger: &Mutex<Ledger>, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
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
struct Ledger {
    conn: rusqlite::Connection,
}

impl Ledger {
    fn open(path: &Path) -> Result<Ledger, StoreError> {
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

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let migrated = sqlx::migrate!("./migrations/sqlite").run(&self.pool).await;
        match (migrated, &self.file) {
            (Err(e), Some(file)) => Err(open_error(file, e.into())),
            (migrated, _) => Ok(migrated?),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_account(&self, name: &str, now: i64) -> Result<Account, StoreError> {
        let result = sqlx::query("INSERT INTO accounts (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await;
        match result {
            Ok(done) => Ok(Account {
                id: AccountId(done.last_insert_rowid()),
                name: name.to_string(),
                created_at: now,
                granted: Credits::ZERO,
                charged: Credits::ZERO,
            }),
            Err(e) if unique_violation(&e) => {
                Err(StoreError::Conflict(format!("account '{name}'")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        sqlx::query(&format!("{ACCOUNT_SELECT} ORDER BY a.id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(account_from_row)
            .collect()
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        sqlx::query(&format!("{ACCOUNT_SELECT} WHERE a.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(account_from_row)
            .transpose()
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>, StoreError> {
        sqlx::query(&format!("{ACCOUNT_SELECT} WHERE a.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(account_from_row)
            .transpose()
    }

    async fn grant_credits(
        &self,
        account: AccountId,
        amount: Credits,
        note: Option<&str>,
        now: i64,
    ) -> Result<i64, StoreError> {
        // One statement, so the checks and the insert see the same grants and charges.
        let done = sqlx::query(
            "INSERT INTO credit_grants (account_id, amount, note, created_at) \
             SELECT a.id, $2, $3, $4 FROM accounts a, \
               (SELECT COALESCE(SUM(amount), 0) AS granted FROM credit_grants \
                WHERE account_id = $1) AS g \
             WHERE a.id = $1 AND g.granted + $2 BETWEEN 0 AND $5 \
               AND ($2 >= 0 OR g.granted + $2 - a.charged >= 0)",
        )
        .bind(account.0)
        .bind(amount.nanos())
        .bind(note)
        .bind(now)
        .bind(Credits::MAX_AMOUNT.nanos())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(done.last_insert_rowid());
        }
        Err(StoreError::Grant(why_refused(
            self.account(account).await?.as_ref(),
            amount,
        )))
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (account_id, kind, name, key_hash, hint, created_at, updated_at, \
             expires_at, is_enabled, credit_limit, rate_limit_rpm, clamp_max_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 1, $8, $9, $10) RETURNING {KEY_COLUMNS}"
        ))
        .bind(key.account_id.0)
        .bind(key.kind.as_str())
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(&key.hint)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.credit_limit.map(Credits::nanos))
        .bind(key.rate_limit_rpm)
        .bind(key.clamp_max_tokens)
        .fetch_one(&self.pool)
        .await;
        match row {
            Ok(row) => key_from_row(&row),
            Err(e) if unique_violation(&e) => Err(StoreError::Conflict("key".into())),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_keys(
        &self,
        account: AccountId,
        kind: KeyKind,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = $1 AND kind = $2 \
             AND deleted_at IS NULL ORDER BY id"
        ))
        .bind(account.0)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    async fn get_key(
        &self,
        account: AccountId,
        kind: KeyKind,
        id: KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND account_id = $2 AND kind = $3 \
             AND deleted_at IS NULL"
        ))
        .bind(id.0)
        .bind(account.0)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn update_key(
        &self,
        account: AccountId,
        id: KeyId,
        patch: &KeyPatch,
        now: i64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // Each nullable field takes a "set it" flag and a value, so absent and null differ.
        sqlx::query(&format!(
            "UPDATE api_keys SET \
               name = COALESCE($1, name), \
               is_enabled = COALESCE($2, is_enabled), \
               credit_limit = CASE WHEN $3 THEN $4 ELSE credit_limit END, \
               expires_at = CASE WHEN $5 THEN $6 ELSE expires_at END, \
               rate_limit_rpm = CASE WHEN $7 THEN $8 ELSE rate_limit_rpm END, \
               clamp_max_tokens = COALESCE($12, clamp_max_tokens), \
               updated_at = $9 \
             WHERE id = $10 AND account_id = $11 AND kind = 'inference' AND deleted_at IS NULL \
             RETURNING {KEY_COLUMNS}"
        ))
        .bind(patch.name.as_deref())
        .bind(patch.is_enabled)
        .bind(patch.credit_limit.is_some())
        .bind(patch.credit_limit.flatten().map(Credits::nanos))
        .bind(patch.expires_at.is_some())
        .bind(patch.expires_at.flatten())
        .bind(patch.rate_limit_rpm.is_some())
        .bind(patch.rate_limit_rpm.flatten())
        .bind(now)
        .bind(id.0)
        .bind(account.0)
        .bind(patch.clamp_max_tokens)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn delete_key(
        &self,
        account: Option<AccountId>,
        kind: KeyKind,
        id: KeyId,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET deleted_at = $1, is_enabled = 0, updated_at = $1 \
             WHERE id = $2 AND kind = $3 AND ($4 IS NULL OR account_id = $4) AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id.0)
        .bind(kind.as_str())
        .bind(account.map(|a| a.0))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
        let ledger = self.ledger.clone();
        let batch = batch.to_vec();
        tokio::task::spawn_blocking(move || append_locked(&ledger, &batch))
            .await
            .map_err(|e| StoreError::Open(format!("usage writer thread: {e}")))?
    }

    fn record_usage_blocking(
        &self,
        _rt: &tokio::runtime::Handle,
        batch: &[UsageRecord],
    ) -> Result<Vec<bool>, StoreError> {
        append_locked(&self.ledger, batch)
    }

    fn usage_journal_ledger(&self) -> Option<std::path::PathBuf> {
        self.file.clone()
    }

    async fn activity(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<ActivityRollup, StoreError> {
        let query = |sql| sqlx::query(sql).bind(account.0).bind(since_day);
        // The two scans take about as long each, so they run at once, on two connections.
        // Each reads its own snapshot: they differ only if a usage batch of the account
        // committed in between, and then the keys do not add up to the days.
        let fast = async {
            let (days_and_models, keys) = tokio::try_join!(
                query(DAYS_AND_MODELS_QUERY).fetch_all(&self.pool),
                query(KEYS_QUERY).fetch_all(&self.pool),
            )?;
            let rollup = activity_from_rows(&days_and_models, &keys, account.0)?;
            if rollup.keys_add_up_to_days() {
                return Ok(rollup);
            }
            // Both again, one after the other in one transaction: one snapshot.
            let mut tx = self.pool.begin().await?;
            let days_and_models = query(DAYS_AND_MODELS_QUERY).fetch_all(&mut *tx).await?;
            let keys = query(KEYS_QUERY).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            activity_from_rows(&days_and_models, &keys, account.0)
        };
        match fast.await {
            Err(StoreError::Database(e)) if sum_overflowed(&e) => {
                report_corrupt("usage_daily", account.0, "*", "sums past the 64-bit limit");
                self.activity_summed_here(account, since_day).await
            }
            other => other,
        }
    }

    async fn usage_record(&self, request_id: &str) -> Result<Option<UsageRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT request_id, account_id, key_id, model, endpoint, input_tokens, cached_input_tokens, \
             output_tokens, cost, status, latency_ms, created_at, requested_model, provider, attempts, \
             estimated, loss FROM usage_records WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(UsageRecord {
                request_id: row.try_get("request_id")?,
                account_id: AccountId(row.try_get("account_id")?),
                key_id: KeyId(row.try_get("key_id")?),
                model: row.try_get("model")?,
                endpoint: row.try_get("endpoint")?,
                input_tokens: row.try_get("input_tokens")?,
                cached_input_tokens: row.try_get("cached_input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cost: Credits::from_nanos(row.try_get("cost")?),
                status: row.try_get("status")?,
                latency_ms: row.try_get("latency_ms")?,
                created_at: row.try_get("created_at")?,
                detail: UsageDetail {
                    requested_model: row.try_get("requested_model")?,
                    provider: row.try_get("provider")?,
                    attempts: row.try_get("attempts")?,
                    estimated: row.try_get("estimated")?,
                    loss: Credits::from_nanos(row.try_get("loss")?),
                },
            })
        })
        .transpose()
    }
}

/// For unit tests: a usage record of one token in and out, costing `cost` nanocredits.
#[cfg(test)]
pub(crate) fn test_record(
    id: &str,
    account: AccountId,
    key: crate::store::KeyId,
    cost: i64,
) -> UsageRecord {
    UsageRecord {
        request_id: id.to_string(),
        account_id: account,
        key_id: key,
        model: "m".into(),
        endpoint: "chat.completions".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost: Credits::from_nanos(cost),
        status: 200,
        latency_ms: 1,
        created_at: 1_700_000_000,
        detail: UsageDetail::default(),
    }
}

/// For unit tests: a migrated store in `dir` with one account and one inference key.
#[cfg(test)]
pub(crate) async fn test_store_with_key(
    dir: &std::path::Path,
) -> (SqliteStore, AccountId, crate::store::KeyId) {
    use crate::store::{KeyKind, NewKey};
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let store = SqliteStore::open(&url).await.expect("open");
    store.migrate().await.expect("migrate");
    let account = store.create_account("a", 0).await.expect("account");
    let key = store
        .create_key(NewKey {
            account_id: account.id,
            kind: KeyKind::Inference,
            name: "k".into(),
            key_hash: "h".into(),
            hint: "h".into(),
            created_at: 0,
            expires_at: None,
            credit_limit: None,
            rate_limit_rpm: None,
            clamp_max_tokens: false,
        })
        .await
        .expect("key");
    (store, account.id, key.id)
}

#[cfg(test)]
mod tests {
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
        // Seven pages of 1 KB and their frame headers: about 7.3 KB per commit (29 KB
        // with 4 KB pages).
        let per_commit = std::fs::metadata(&wal).expect("wal").len() / COMMITS;
        assert!(
            per_commit <= 8 * 1024,
            "{per_commit} bytes of WAL per commit"
        );
    }

    /// The way round an overflowing `SUM` answers what the queries answer, orders and
    /// ties included.
    #[tokio::test]
    async fn activity_summed_here_equals_the_queries() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, account, first) = test_store_with_key(dir.path()).await;
        let mut keys = vec![first];
        for name in ["b", "a"] {
            let key = crate::store::NewKey {
                account_id: account,
                kind: KeyKind::Inference,
                name: name.into(),
                key_hash: format!("hash-{name}"),
                hint: name.into(),
                created_at: 0,
                expires_at: None,
                credit_limit: None,
                rate_limit_rpm: None,
                clamp_max_tokens: false,
            };
            keys.push(store.create_key(key).await.expect("key").id);
        }
        let mut records = Vec::new();
        // Equal costs across keys and models, so ties decide the order.
        for (i, (key, model, cost, day)) in [
            (0, "m", 10, 0),
            (1, "Z", 10, 0),
            (2, "a", 10, 1),
            (1, "m", 5, 1),
            (2, "Z", 0, 2),
            (0, "b", 10, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let mut record = test_record(&format!("r{i}"), account, keys[key], cost);
            record.model = model.into();
            record.created_at += day * 86_400;
            records.push(record);
        }
        store.record_usage(&records).await.expect("record");
        let since = day_of(1_700_000_000);
        let queried = store.activity(account, &since).await.expect("queries");
        let summed = store
            .activity_summed_here(account, &since)
            .await
            .expect("summed here");
        assert_eq!(queried.days.len(), 3);
        assert_eq!(queried.keys.len(), 3);
        assert_eq!(summed, queried);
    }

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
