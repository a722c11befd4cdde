//! The embedded SQLite store (WAL mode), the default.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::*;
use crate::billing::Credits;

/// SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection kept for usage batches: the ledger's pages stay in its cache
    /// (another connection's write would make SQLite drop a connection's whole cache).
    ledger: SqlitePool,
    /// Dropped with the last handle; the checkpoint task then ends.
    _alive: Arc<()>,
}

const KEY_COLUMNS: &str = "id, account_id, kind, name, hint, created_at, updated_at, expires_at, \
     is_enabled, credit_limit, usage, last_used_at, deleted_at, rate_limit_rpm";

const ACCOUNT_SELECT: &str = "SELECT a.id, a.name, a.created_at, a.charged, \
     COALESCE((SELECT SUM(g.amount) FROM credit_grants g WHERE g.account_id = a.id), 0) AS granted \
     FROM accounts a";

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
            .foreign_keys(true);
        if let Some(parent) = Path::new(options.get_filename()).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Open(format!("{}: {e}", parent.display())))?;
            }
        }
        // Checkpoints run in the background (below), not in whichever commit crosses
        // 1,000 WAL pages: that commit would copy and fsync the database file while
        // every request of its batch waits for it.
        let options = options.pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // A local file does not go stale: skip the ping (a round trip to the
            // connection's worker thread) before every statement.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let ledger = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let alive = Arc::new(());
        tokio::spawn(checkpoint_loop(pool.clone(), Arc::downgrade(&alive)));
        Ok(SqliteStore {
            pool,
            ledger,
            _alive: alive,
        })
    }

    /// The pool, for tests and tools that inspect the file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// How often the WAL is copied back into the database file. Each checkpoint ends with
/// an fsync that stalls other writes to the file system for a few milliseconds, so
/// fewer, larger checkpoints keep the latency tail short: at 1,000 req/s, p99 was
/// 9-14 ms with one every 500 ms and 0.8-1.0 ms with one every 5 s.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// WAL frames (pages) above which a checkpoint also restarts the WAL.
const RESTART_WAL_FRAMES: i64 = 8192;

/// Copies committed WAL frames into the database file without blocking writers (a
/// passive checkpoint), so commits never wait for the copy or the fsync of the database
/// file. Under a steady stream of commits a passive checkpoint never catches up with
/// the last frame, so the WAL would only grow: past `RESTART_WAL_FRAMES` a restarting
/// checkpoint, which holds writers back while it copies the few frames left, starts it
/// over. Ends once every handle of the store is gone.
async fn checkpoint_loop(pool: SqlitePool, alive: std::sync::Weak<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 || pool.is_closed() {
            return;
        }
        // (busy, frames in the WAL, frames copied)
        let passive = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await;
        let result = match passive {
            Ok((_, frames, _)) if frames > RESTART_WAL_FRAMES => {
                sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&pool)
                    .await
                    .map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(KeyRecord {
        id: KeyId(row.try_get("id")?),
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
        usage: Credits::from_nanos(row.try_get("usage")?),
        last_used_at: row.try_get("last_used_at")?,
        deleted_at: row.try_get("deleted_at")?,
        rate_limit_rpm: row.try_get("rate_limit_rpm")?,
    })
}

fn account_from_row(row: &SqliteRow) -> Result<Account, StoreError> {
    Ok(Account {
        id: AccountId(row.try_get("id")?),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        granted: Credits::from_nanos(row.try_get("granted")?),
        charged: Credits::from_nanos(row.try_get("charged")?),
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Rows per multi-row statement: far below SQLite's limit of 32,766 bound values.
const ROWS_PER_STATEMENT: usize = 256;

/// A statement text is cached (prepared once per connection) only for the few small
/// batch sizes that recur; larger ones vary in length and would crowd the cache.
fn cacheable(records: usize) -> bool {
    records <= 4
}

/// What a set of new ledger records adds to the counters derived from the ledger.
#[derive(Default)]
struct Derived<'a> {
    accounts: BTreeMap<i64, i64>,
    /// Per key: cost, latest `created_at`.
    keys: BTreeMap<i64, (i64, i64)>,
    /// Per (account, day, key, model): requests, cost, input tokens, output tokens.
    daily: BTreeMap<(i64, String, i64, &'a str), [i64; 4]>,
}

impl<'a> Derived<'a> {
    fn of(records: impl Iterator<Item = &'a UsageRecord>) -> Self {
        let mut d = Derived::default();
        for r in records {
            let cost = r.cost.nanos();
            *d.accounts.entry(r.account_id.0).or_default() += cost;
            let key = d.keys.entry(r.key_id.0).or_insert((0, i64::MIN));
            key.0 += cost;
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
            day[0] += 1;
            day[1] += cost;
            day[2] += r.input_tokens;
            day[3] += r.output_tokens;
        }
        d
    }

    /// The statements that add these totals, `;`-separated (none when empty).
    fn push_statements<'q>(&'q self, q: &mut QueryBuilder<'q, Sqlite>) {
        if self.accounts.is_empty() {
            return;
        }
        q.push("UPDATE accounts SET charged = charged + v.column2 FROM (");
        q.push_values(&self.accounts, |mut row, (id, cost)| {
            row.push_bind(*id).push_bind(*cost);
        });
        q.push(") AS v WHERE accounts.id = v.column1;");
        q.push(
            "UPDATE api_keys SET usage = usage + v.column2, \
             last_used_at = MAX(COALESCE(last_used_at, 0), v.column3) FROM (",
        );
        q.push_values(&self.keys, |mut row, (id, (cost, last))| {
            row.push_bind(*id).push_bind(*cost).push_bind(*last);
        });
        q.push(") AS v WHERE api_keys.id = v.column1;");
        let rows: Vec<_> = self.daily.iter().collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            q.push(
                "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, \
                 input_tokens, output_tokens) ",
            );
            q.push_values(chunk, |mut row, ((account, day, key, model), sums)| {
                row.push_bind(*account)
                    .push_bind(day.as_str())
                    .push_bind(*key)
                    .push_bind(*model)
                    .push_bind(sums[0])
                    .push_bind(sums[1])
                    .push_bind(sums[2])
                    .push_bind(sums[3]);
            });
            q.push(
                " ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET \
                 requests = requests + excluded.requests, cost = cost + excluded.cost, \
                 input_tokens = input_tokens + excluded.input_tokens, \
                 output_tokens = output_tokens + excluded.output_tokens;",
            );
        }
    }
}

/// Multi-row inserts of a batch into the ledger. With `skip_known`, a request id already
/// in the ledger (or earlier in the batch) is skipped and each insert reports the ids it
/// newly wrote; without, such an id fails the insert (a unique violation).
fn push_inserts<'q>(q: &mut QueryBuilder<'q, Sqlite>, batch: &'q [UsageRecord], skip_known: bool) {
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        q.push(
            "INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, \
             input_tokens, cached_input_tokens, output_tokens, cost, status, latency_ms, created_at) ",
        );
        q.push_values(chunk, |mut row, r| {
            row.push_bind(&r.request_id)
                .push_bind(r.account_id.0)
                .push_bind(r.key_id.0)
                .push_bind(&r.model)
                .push_bind(&r.endpoint)
                .push_bind(r.input_tokens)
                .push_bind(r.cached_input_tokens)
                .push_bind(r.output_tokens)
                .push_bind(r.cost.nanos())
                .push_bind(r.status)
                .push_bind(r.latency_ms)
                .push_bind(r.created_at);
        });
        if skip_known {
            q.push(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
        }
        q.push(";");
    }
}

/// Appends a batch of new request ids in one round trip to the connection's worker
/// thread: `BEGIN`, the inserts, the counter updates and `COMMIT` as one multi-statement
/// query. A request id already in the ledger (a retried batch) fails it with a unique
/// violation; on any failure the caller must roll the connection's transaction back.
async fn append_new_usage(
    conn: &mut SqliteConnection,
    batch: &[UsageRecord],
) -> Result<(), sqlx::Error> {
    let derived = Derived::of(batch.iter());
    let mut q = QueryBuilder::<Sqlite>::new("BEGIN;");
    push_inserts(&mut q, batch, false);
    derived.push_statements(&mut q);
    q.push("COMMIT;");
    q.build()
        .persistent(cacheable(batch.len()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Appends any batch: the inserts first, then the counter updates of the records they
/// newly wrote (two round trips).
async fn append_usage(
    tx: &mut Transaction<'_, Sqlite>,
    batch: &[UsageRecord],
) -> Result<Vec<bool>, StoreError> {
    let mut q = QueryBuilder::<Sqlite>::new("");
    push_inserts(&mut q, batch, true);
    let ids: Vec<String> = q
        .build_query_scalar()
        .persistent(cacheable(batch.len()))
        .fetch_all(&mut **tx)
        .await?;
    let mut inserted: HashSet<String> = ids.into_iter().collect();
    // The first occurrence of an inserted id is the one the insert kept.
    let written: Vec<bool> = batch
        .iter()
        .map(|r| inserted.remove(&r.request_id))
        .collect();
    let derived = Derived::of(
        batch
            .iter()
            .zip(&written)
            .filter(|(_, w)| **w)
            .map(|(r, _)| r),
    );
    let mut q = QueryBuilder::<Sqlite>::new("");
    derived.push_statements(&mut q);
    if !derived.accounts.is_empty() {
        q.build()
            .persistent(cacheable(batch.len()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(written)
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
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
        let done = sqlx::query(
            "INSERT INTO credit_grants (account_id, amount, note, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(account.0)
        .bind(amount.nanos())
        .bind(note)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.last_insert_rowid())
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (account_id, kind, name, key_hash, hint, created_at, updated_at, \
             expires_at, is_enabled, credit_limit, rate_limit_rpm) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 1, $8, $9) RETURNING {KEY_COLUMNS}"
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
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut distinct = HashSet::with_capacity(batch.len());
        if batch.iter().all(|r| distinct.insert(r.request_id.as_str())) {
            let mut conn = self.ledger.acquire().await?;
            match append_new_usage(&mut conn, batch).await {
                Ok(()) => return Ok(vec![true; batch.len()]),
                Err(e) => {
                    // The failed statement left the transaction open (or none was begun).
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    if !unique_violation(&e) {
                        return Err(e.into());
                    }
                    // Some request id is in the ledger already: the exact path below.
                }
            }
        }
        let mut tx = self.ledger.begin().await?;
        let written = append_usage(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn daily_usage(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.day, d.key_id, COALESCE(k.name, '') AS key_name, d.model, d.requests, d.cost, \
             d.input_tokens, d.output_tokens \
             FROM usage_daily d LEFT JOIN api_keys k ON k.id = d.key_id \
             WHERE d.account_id = $1 AND d.day >= $2 ORDER BY d.day, d.key_id, d.model",
        )
        .bind(account.0)
        .bind(since_day)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DailyUsage {
                    day: row.try_get("day")?,
                    key_id: KeyId(row.try_get("key_id")?),
                    key_name: row.try_get("key_name")?,
                    model: row.try_get("model")?,
                    requests: row.try_get("requests")?,
                    cost: Credits::from_nanos(row.try_get("cost")?),
                    input_tokens: row.try_get("input_tokens")?,
                    output_tokens: row.try_get("output_tokens")?,
                })
            })
            .collect()
    }

    async fn usage_record(&self, request_id: &str) -> Result<Option<UsageRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT request_id, account_id, key_id, model, endpoint, input_tokens, cached_input_tokens, \
             output_tokens, cost, status, latency_ms, created_at FROM usage_records WHERE request_id = $1",
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
            })
        })
        .transpose()
    }
}
