//! The PostgreSQL store, shared by several replicas: the source of truth when scaled out.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use super::counters::{
    account_charged, joined_last_used, joined_usage, key_last_used, key_slots_join, key_usage,
};
use super::day_of;
use super::*;
use crate::billing::window::LimitReset;
use crate::billing::Credits;

/// PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The connection options without `statement_timeout`, for migrations.
    unbounded: PgConnectOptions,
}

/// Pooled connections per replica (key and account reads, the account endpoints); the
/// usage writer has one of its own ([`PgLedger`]).
const MAX_CONNECTIONS: u32 = 16;
/// How long to wait for a connection before failing, so an unreachable database is an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle for longer is tested (one round trip) before it is used.
const PING_IF_IDLE: Duration = Duration::from_secs(1);
/// How long the usage writer waits for a new connection before it counts the attempt as
/// failed and retries (its backoff): a connection takes milliseconds, tens with TLS far
/// away. One made while the database restarts can hang (`bench/cluster_faults.py` saw
/// one wait out the call's whole deadline, 8 s, while the database was back after 2.5 s).
const WRITER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The server cancels a statement that runs longer (`statement_timeout`), so a stuck
/// statement frees its connection and its locks; migrations run without it. The client
/// side has its own deadline on every call ([`super::deadline`]), for a server that no
/// longer answers at all.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A key's columns, with `$usage` and `$last` its usage and last use.
macro_rules! key_columns {
    ($usage:expr, $last:expr) => {
        concat!(
            "id, account_id, kind, name, hint, created_at, updated_at, expires_at, \
             is_enabled, credit_limit, ",
            $usage,
            " AS usage, ",
            $last,
            " AS last_used_at, deleted_at, rate_limit_rpm, \
             limit_reset, allowed_models, previous_key_expires_at, \
             clamp_max_tokens"
        )
    };
}

/// A key's columns, its usage and last use with its writers' slots ([`super::counters`]),
/// for statements on one row of `api_keys` (no alias).
const KEY_COLUMNS: &str = key_columns!(key_usage!("api_keys"), key_last_used!("api_keys"));
/// [`KEY_COLUMNS`] for the keys of the account `$1`, from `api_keys` and
/// [`key_slots_join`].
const ACCOUNT_KEY_COLUMNS: &str =
    key_columns!(joined_usage!("api_keys"), joined_last_used!("api_keys"));

/// Sums held within BIGINT: a sum (NUMERIC) past it would make the cast, and with it
/// every read of the account, fail.
const ACCOUNT_SELECT: &str = concat!(
    "SELECT a.id, a.name, a.created_at, ",
    account_charged!("a"),
    " AS charged, a.expired, \
     COALESCE((SELECT SUM(g.amount) FROM credit_grants g WHERE g.account_id = a.id), 0)::BIGINT AS granted, \
     (SELECT MIN(g.expires_at) FROM credit_grants g WHERE g.account_id = a.id \
      AND g.amount > g.consumed + g.expired) AS next_expiry \
     FROM accounts a"
);

/// `SUM(column)` (a NUMERIC) held within BIGINT.
macro_rules! bounded_sum {
    ($column:literal) => {
        concat!(
            "LEAST(GREATEST(SUM(",
            $column,
            "), -9223372036854775808), 9223372036854775807)::BIGINT"
        )
    };
}

const USAGE_COLUMNS: &str = "request_id, account_id, key_id, model, endpoint, input_tokens, \
     cached_input_tokens, output_tokens, cost, status, latency_ms, created_at, \
     requested_model, provider, attempts, estimated, loss";

/// `Store::activity` in one statement: one index-only scan of the account's days (the
/// primary key carries the sums, migration 0002), grouped three ways at once by hash, and
/// key names joined to the key groups only, from the account's keys (without that, the
/// planner, expecting thousands of groups, hashed every key of every account: 37 of
/// 76 ms with 100,000 keys). Columns as in the SQLite store: `grouped_by`
/// (0 day, 1 model, 2 key), `label` (the day, model or key name), `key_id`, the four sums.
/// Labels sort in byte order (`COLLATE "C"`), as Rust compares strings. Sums are held
/// within BIGINT, so counters near the limit cannot make the query fail.
const ACTIVITY_QUERY: &str = concat!(
    "WITH grouped AS (\
      SELECT CASE WHEN GROUPING(day) = 0 THEN 0 WHEN GROUPING(model) = 0 THEN 1 ELSE 2 END \
          AS grouped_by, day, model, key_id, ",
    bounded_sum!("requests"),
    " AS requests, ",
    bounded_sum!("cost"),
    " AS cost, ",
    bounded_sum!("input_tokens"),
    " AS input_tokens, ",
    bounded_sum!("output_tokens"),
    " AS output_tokens, ",
    bounded_sum!("estimated_requests"),
    " AS estimated_requests, ",
    bounded_sum!("fallback_requests"),
    " AS fallback_requests \
      FROM usage_daily WHERE account_id = $1 AND day >= $2 \
      GROUP BY GROUPING SETS ((day), (model), (key_id))) \
    SELECT g.grouped_by::BIGINT AS grouped_by, \
      COALESCE(g.day, g.model, k.name, '') AS label, g.key_id, \
      g.requests, g.cost, g.input_tokens, g.output_tokens, g.estimated_requests, \
      g.fallback_requests \
    FROM grouped g LEFT JOIN api_keys k \
      ON k.id = g.key_id AND k.account_id = $1 AND g.grouped_by = 2 \
    ORDER BY g.grouped_by, CASE WHEN g.grouped_by = 0 THEN 0 ELSE g.cost END DESC, g.key_id, \
      COALESCE(g.day, g.model, k.name, '') COLLATE \"C\""
);

impl PgStore {
    /// Connects to the database of a `postgres://` or `postgresql://` URL.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let unbounded = PgConnectOptions::from_str(url)?.application_name("tollgate");
        // No JIT: every statement here is short, and compiling one (PostgreSQL does past
        // a planner cost, as for the activity of an account with 1,000 keys) cost 20 ms
        // more than it saved (docs/cluster.md, "At scale").
        let options = unbounded.clone().options([
            (
                "statement_timeout",
                format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
            ),
            ("jit", "off".to_string()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx tests every connection on release; testing it again on acquire cost a
            // round trip per statement (a third of a usage commit's). Only a connection
            // idle for a while (the database may have restarted meanwhile) is tested.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Ok(PgStore { pool, unbounded })
    }

    /// The pool, for tests and tools that inspect the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn key_from_row(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let (limit_reset, allowed_models) = key_settings::parse(
        row.try_get("id")?,
        key_settings::Stored {
            limit_reset: row.try_get("limit_reset")?,
            allowed_models: row.try_get("allowed_models")?,
        },
    )?;
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
        limit_reset,
        allowed_models,
        previous_key_expires_at: row.try_get("previous_key_expires_at")?,
        via_previous_secret: false,
        clamp_max_tokens: row.try_get("clamp_max_tokens")?,
    })
}

fn account_from_row(row: &PgRow) -> Result<Account, StoreError> {
    Ok(Account {
        id: AccountId(row.try_get("id")?),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        granted: Credits::from_nanos(row.try_get("granted")?),
        charged: Credits::from_nanos(row.try_get("charged")?),
        expired: Credits::from_nanos(row.try_get("expired")?),
        next_expiry: row.try_get("next_expiry")?,
    })
}

fn usage_from_row(row: &PgRow) -> Result<UsageRecord, StoreError> {
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
            lease: None,
        },
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Writes the records (request ids distinct) in one round trip, with the account
/// charges, key usage and daily roll-up of the new ones (the function of migrations 0010
/// to 0014, one statement and so one transaction); returns the request ids that were new.
///
/// Rows are locked in one global order (request id, account id, key id, roll-up key), so
/// two replicas writing overlapping batches wait on each other and cannot deadlock.
async fn write_records<'e>(
    db: impl sqlx::PgExecutor<'e>,
    records: &[&UsageRecord],
) -> Result<HashSet<String>, StoreError> {
    let n = records.len();
    let mut request_ids = Vec::with_capacity(n);
    let mut account_ids = Vec::with_capacity(n);
    let mut key_ids = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n);
    let mut input_tokens = Vec::with_capacity(n);
    let mut cached_input_tokens = Vec::with_capacity(n);
    let mut output_tokens = Vec::with_capacity(n);
    let mut costs = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut requested = Vec::with_capacity(n);
    let mut providers = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut estimated = Vec::with_capacity(n);
    let mut losses = Vec::with_capacity(n);
    let mut days = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    for r in records {
        request_ids.push(r.request_id.as_str());
        account_ids.push(r.account_id.0);
        key_ids.push(r.key_id.0);
        models.push(r.model.as_str());
        endpoints.push(r.endpoint.as_str());
        input_tokens.push(r.input_tokens);
        cached_input_tokens.push(r.cached_input_tokens);
        output_tokens.push(r.output_tokens);
        costs.push(r.cost.nanos());
        statuses.push(r.status);
        latencies.push(r.latency_ms);
        created.push(r.created_at);
        requested.push(r.detail.requested_model.as_deref());
        providers.push(r.detail.provider.as_deref());
        attempts.push(r.detail.attempts);
        estimated.push(r.detail.estimated);
        losses.push(r.detail.loss.nanos());
        days.push(day_of(r.created_at));
        leases.push(r.detail.lease.as_deref());
    }
    let rows = sqlx::query(
        "SELECT tollgate_record_usage($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], \
           $5::TEXT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], \
           $11::BIGINT[], $12::BIGINT[], $13::TEXT[], $14::TEXT[], $15::BIGINT[], \
           $16::BOOLEAN[], $17::BIGINT[], $18::TEXT[], $19::TEXT[])",
    )
    .bind(&request_ids)
    .bind(&account_ids)
    .bind(&key_ids)
    .bind(&models)
    .bind(&endpoints)
    .bind(&input_tokens)
    .bind(&cached_input_tokens)
    .bind(&output_tokens)
    .bind(&costs)
    .bind(&statuses)
    .bind(&latencies)
    .bind(&created)
    .bind(&requested)
    .bind(&providers)
    .bind(&attempts)
    .bind(&estimated)
    .bind(&losses)
    .bind(&days)
    .bind(&leases)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
        .collect()
}

/// [`Store::record_usage`] on `db`.
async fn record_usage<'e>(
    db: impl sqlx::PgExecutor<'e>,
    batch: &[UsageRecord],
) -> Result<Vec<bool>, StoreError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // Within a batch the first record of a request id wins, as in the SQLite store.
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let mut distinct = Vec::with_capacity(batch.len());
    for (i, record) in batch.iter().enumerate() {
        if !first_of.contains_key(record.request_id.as_str()) {
            first_of.insert(&record.request_id, i);
            distinct.push(record);
        }
    }

    let new_ids = write_records(db, &distinct).await?;

    Ok(batch
        .iter()
        .enumerate()
        .map(|(i, r)| {
            first_of.get(r.request_id.as_str()) == Some(&i) && new_ids.contains(&r.request_id)
        })
        .collect())
}

/// The usage writer's own connection ([`Store::own_ledger`]), with the pool's options
/// (`statement_timeout`, no JIT) and every call under [`deadline`]. Made when first
/// needed and made again after any failure but the database refusing the records (a
/// call cut short may have left it mid-statement); tested first when idle for longer
/// than `PING_IF_IDLE`, as the pool's are, so a database restarted meanwhile costs a
/// new connection rather than a failed commit. Unlike a pooled connection it is not
/// tested again after each commit (sqlx's pool does: one more round trip per commit).
struct PgLedger {
    options: PgConnectOptions,
    /// The connection and when it was last used.
    conn: Option<(PgConnection, Instant)>,
}

impl PgLedger {
    async fn write(&mut self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
        if let Some((conn, used)) = &mut self.conn {
            if used.elapsed() > PING_IF_IDLE && conn.ping().await.is_err() {
                self.conn = None;
            }
        }
        let (conn, used) = match &mut self.conn {
            Some(open) => open,
            None => {
                let connect = PgConnection::connect_with(&self.options);
                let conn = tokio::time::timeout(WRITER_CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| StoreError::Timeout(WRITER_CONNECT_TIMEOUT))??;
                self.conn.insert((conn, Instant::now()))
            }
        };
        let written = record_usage(&mut *conn, batch).await;
        *used = Instant::now();
        written
    }
}

#[async_trait]
impl OwnLedger for PgLedger {
    async fn record_usage(&mut self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
        let written = deadline(self.write(batch)).await;
        if let Err(e) = &written {
            let refused = matches!(e, StoreError::Database(sqlx::Error::Database(_)));
            if !refused || e.is_transient() {
                self.conn = None;
            }
        }
        written
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx holds a Postgres advisory lock (keyed by the database name) while it
        // migrates, so replicas starting at once apply each migration exactly once.
        // Waiting for that lock, or building an index, may take longer than a statement
        // of the request path is allowed to.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(self.unbounded.clone())
            .await?;
        let migrated = super::migrator(sqlx::migrate!("./migrations/postgres"))
            .run(&pool)
            .await;
        pool.close().await;
        Ok(migrated?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_account(&self, name: &str, now: i64) -> Result<Account, StoreError> {
        let result =
            sqlx::query("INSERT INTO accounts (name, created_at) VALUES ($1, $2) RETURNING id")
                .bind(name)
                .bind(now)
                .fetch_one(&self.pool)
                .await;
        match result {
            Ok(row) => Ok(Account {
                id: AccountId(row.try_get("id")?),
                name: name.to_string(),
                created_at: now,
                granted: Credits::ZERO,
                charged: Credits::ZERO,
                expired: Credits::ZERO,
                next_expiry: None,
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

    async fn add_grant(
        &self,
        account: AccountId,
        grant: &NewGrant,
        now: i64,
    ) -> Result<i64, StoreError> {
        super::credits_pg::add_grant(&self.pool, account, grant, now).await
    }

    async fn settle_credits(
        &self,
        account: AccountId,
        now: i64,
        in_flight: Credits,
    ) -> Result<Option<Account>, StoreError> {
        super::credits_pg::settle(&self.pool, account, now, in_flight).await?;
        self.account(account).await
    }

    async fn credit_grants(&self, account: AccountId) -> Result<Vec<Grant>, StoreError> {
        super::credits_pg::grants(&self.pool, account).await
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (account_id, kind, name, key_hash, hint, created_at, updated_at, \
             expires_at, is_enabled, credit_limit, rate_limit_rpm, limit_reset, allowed_models, clamp_max_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, TRUE, $8, $9, $10, $11, $12) RETURNING {KEY_COLUMNS}"
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
        .bind(key.limit_reset.map(LimitReset::as_str))
        .bind(key_settings::allowed_json(key.allowed_models.as_deref()))
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
            "SELECT {ACCOUNT_KEY_COLUMNS} FROM api_keys{} WHERE account_id = $1 AND kind = $2 \
             AND deleted_at IS NULL ORDER BY id",
            key_slots_join!("api_keys")
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
               limit_reset = CASE WHEN $12 THEN $13 ELSE limit_reset END, \
               allowed_models = CASE WHEN $14 THEN $15 ELSE allowed_models END, \
               clamp_max_tokens = COALESCE($16, clamp_max_tokens), \
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
        .bind(patch.limit_reset.is_some())
        .bind(patch.limit_reset.flatten().map(LimitReset::as_str))
        .bind(patch.allowed_models.is_some())
        .bind(key_settings::allowed_json(
            patch.allowed_models.as_ref().and_then(|m| m.as_deref()),
        ))
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
            "UPDATE api_keys SET deleted_at = $1, is_enabled = FALSE, updated_at = $1 \
             WHERE id = $2 AND kind = $3 AND ($4::BIGINT IS NULL OR account_id = $4) \
             AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id.0)
        .bind(kind.as_str())
        .bind(account.map(|a| a.0))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn day_charges(
        &self,
        account: AccountId,
        key: Option<KeyId>,
        since_day: &str,
    ) -> Result<Vec<DayCharge>, StoreError> {
        let rows = sqlx::query(key_settings::WINDOW_USAGE_QUERY_PG)
            .bind(account.0)
            .bind(since_day)
            .bind(key.map(|k| k.0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let key: i64 = row.try_get("key_id")?;
                Ok(DayCharge {
                    key: KeyId(key),
                    day: row.try_get("day")?,
                    cost: row.try_get("cost")?,
                })
            })
            .collect()
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(row) = sqlx::query(&key_settings::by_hash_query(KEY_COLUMNS))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(KeyRecord {
            via_previous_secret: row.try_get("via_previous")?,
            ..key_from_row(&row)?
        }))
    }

    async fn rotate_key(
        &self,
        account: AccountId,
        id: KeyId,
        hash: &str,
        hint: &str,
        previous_until: Option<i64>,
        now: i64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query(&key_settings::rotate_query(KEY_COLUMNS, "$1::BIGINT"))
            .bind(previous_until)
            .bind(hash)
            .bind(hint)
            .bind(now)
            .bind(id.0)
            .bind(account.0)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
        record_usage(&self.pool, batch).await
    }

    fn own_ledger(&self) -> Option<Box<dyn OwnLedger>> {
        Some(Box::new(PgLedger {
            options: (*self.pool.connect_options()).clone(),
            conn: None,
        }))
    }

    async fn activity(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<ActivityRollup, StoreError> {
        // Grouping an account's roll-up three ways sorts it: with the default work_mem
        // (4 MB) an account with 1,000 keys (60,000 roll-up rows) sorted on disk, 72 ms
        // instead of 38 (docs/cluster.md, "At scale").
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL work_mem = '32MB'")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(ACTIVITY_QUERY)
            .bind(account.0)
            .bind(since_day)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut rollup = ActivityRollup::default();
        for row in &rows {
            rollup.push(
                row.try_get("grouped_by")?,
                row.try_get("label")?,
                row.try_get("key_id")?,
                UsageTotals {
                    requests: row.try_get("requests")?,
                    cost: Credits::from_nanos(row.try_get("cost")?),
                    input_tokens: row.try_get("input_tokens")?,
                    output_tokens: row.try_get("output_tokens")?,
                    estimated_requests: row.try_get("estimated_requests")?,
                    fallback_requests: row.try_get("fallback_requests")?,
                },
            )?;
        }
        Ok(rollup)
    }

    async fn usage_record(&self, request_id: &str) -> Result<Option<UsageRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage_records WHERE request_id = $1"
        ))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(usage_from_row)
        .transpose()
    }
}
