//! The PostgreSQL store, shared by several replicas: the source of truth when scaled out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::day_of;
use super::*;
use crate::billing::Credits;

/// PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The connection options without `statement_timeout`, for migrations.
    unbounded: PgConnectOptions,
}

/// Connections per replica; the usage writer needs one, the rest serve key and account reads.
const MAX_CONNECTIONS: u32 = 16;
/// How long to wait for a connection before failing, so an unreachable database is an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels a statement that runs longer (`statement_timeout`), so a stuck
/// statement frees its connection and its locks; migrations run without it. The client
/// side has its own deadline on every call ([`super::deadline`]), for a server that no
/// longer answers at all.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

const KEY_COLUMNS: &str = "id, account_id, kind, name, hint, created_at, updated_at, expires_at, \
     is_enabled, credit_limit, usage, last_used_at, deleted_at, rate_limit_rpm, \
     clamp_max_tokens";

/// Sums held within BIGINT: a sum (NUMERIC) past it would make the cast, and with it
/// every read of the account, fail.
const ACCOUNT_SELECT: &str = "SELECT a.id, a.name, a.created_at, a.charged, \
     LEAST(GREATEST(COALESCE((SELECT SUM(g.amount) FROM credit_grants g \
       WHERE g.account_id = a.id), 0), -9223372036854775808), 9223372036854775807)::BIGINT \
     AS granted FROM accounts a";

/// `column + delta` held within BIGINT (past it PostgreSQL raises an error, which would
/// refuse the whole usage batch); `delta` is a parameter or another column.
macro_rules! saturating_add {
    ($column:literal, $delta:literal) => {
        concat!(
            "LEAST(GREATEST(",
            $column,
            "::NUMERIC + ",
            $delta,
            ", -9223372036854775808), 9223372036854775807)::BIGINT"
        )
    };
}

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
/// key names joined to the key groups only. Columns as in the SQLite store: `grouped_by`
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
    FROM grouped g LEFT JOIN api_keys k ON k.id = g.key_id AND g.grouped_by = 2 \
    ORDER BY g.grouped_by, CASE WHEN g.grouped_by = 0 THEN 0 ELSE g.cost END DESC, g.key_id, \
      COALESCE(g.day, g.model, k.name, '') COLLATE \"C\""
);

impl PgStore {
    /// Connects to the database of a `postgres://` or `postgresql://` URL.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let unbounded = PgConnectOptions::from_str(url)?.application_name("tollgate");
        let options = unbounded.clone().options([(
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
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
        },
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Per-day roll-up of newly written records: (account, day, key, model) →
/// (requests, cost, input tokens, output tokens).
/// Per (account, day, key, model): requests, cost, input tokens, output tokens, estimated
/// requests, fallback requests.
type DailyTotals = BTreeMap<(i64, String, i64, String), [i64; 6]>;

/// Inserts the records (request ids distinct) and returns the request ids that were new.
///
/// Rows are inserted in request-id order: two replicas writing overlapping batches then
/// wait on each other's request ids in the same order and cannot deadlock.
async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
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
    }
    let rows = sqlx::query(&format!(
        "INSERT INTO usage_records ({USAGE_COLUMNS}) \
         SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], \
           $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], \
           $12::BIGINT[], $13::TEXT[], $14::TEXT[], $15::BIGINT[], $16::BOOLEAN[], \
           $17::BIGINT[]) AS v({USAGE_COLUMNS}) \
         ORDER BY request_id \
         ON CONFLICT (request_id) DO NOTHING \
         RETURNING request_id"
    ))
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
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
        .collect()
}

/// Locks rows of `table` by id in ascending order, so concurrent batches that touch the
/// same accounts or keys take their row locks in one global order and cannot deadlock.
async fn lock_rows(
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
    ids: &[i64],
) -> Result<(), StoreError> {
    if ids.len() > 1 {
        sqlx::query(&format!(
            "SELECT id FROM {table} WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
        ))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Applies the derived counters of newly written records: account charges, key usage and
/// last use, and the daily roll-up. Every update adds to the stored value, so concurrent
/// writers lose nothing.
async fn apply_totals(
    tx: &mut Transaction<'_, Postgres>,
    written: &[&UsageRecord],
) -> Result<(), StoreError> {
    let mut by_account: BTreeMap<i64, i64> = BTreeMap::new();
    let mut by_key: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut daily: DailyTotals = BTreeMap::new();
    for r in written {
        let cost = r.cost.nanos();
        let charged = by_account.entry(r.account_id.0).or_default();
        *charged = charged.saturating_add(cost);
        let key = by_key.entry(r.key_id.0).or_insert((0, r.created_at));
        key.0 = key.0.saturating_add(cost);
        key.1 = key.1.max(r.created_at);
        let day = daily
            .entry((
                r.account_id.0,
                day_of(r.created_at),
                r.key_id.0,
                r.model.clone(),
            ))
            .or_default();
        for (sum, add) in day.iter_mut().zip(daily_counts(r)) {
            *sum = sum.saturating_add(add);
        }
    }

    let (ids, amounts): (Vec<i64>, Vec<i64>) = by_account.into_iter().unzip();
    lock_rows(tx, "accounts", &ids).await?;
    // Every counter is held within BIGINT (`saturating_add!`): past it PostgreSQL would
    // refuse the batch, and the writer would give up these records.
    sqlx::query(concat!(
        "UPDATE accounts AS a SET charged = ",
        saturating_add!("a.charged", "v.cost"),
        " FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS v(id, cost) WHERE a.id = v.id"
    ))
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut **tx)
    .await?;

    let mut ids = Vec::with_capacity(by_key.len());
    let mut amounts = Vec::with_capacity(by_key.len());
    let mut last_used = Vec::with_capacity(by_key.len());
    for (id, (cost, last)) in by_key {
        ids.push(id);
        amounts.push(cost);
        last_used.push(last);
    }
    lock_rows(tx, "api_keys", &ids).await?;
    sqlx::query(concat!(
        "UPDATE api_keys AS k SET usage = ",
        saturating_add!("k.usage", "v.cost"),
        ", last_used_at = GREATEST(k.last_used_at, v.last_used_at) \
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS v(id, cost, last_used_at) \
         WHERE k.id = v.id"
    ))
    .bind(&ids)
    .bind(&amounts)
    .bind(&last_used)
    .execute(&mut **tx)
    .await?;

    let n = daily.len();
    let mut account_ids = Vec::with_capacity(n);
    let mut days = Vec::with_capacity(n);
    let mut key_ids = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    let mut costs = Vec::with_capacity(n);
    let mut input_tokens = Vec::with_capacity(n);
    let mut output_tokens = Vec::with_capacity(n);
    let mut estimated = Vec::with_capacity(n);
    let mut fallbacks = Vec::with_capacity(n);
    for ((account, day, key, model), sums) in daily {
        account_ids.push(account);
        days.push(day);
        key_ids.push(key);
        models.push(model);
        requests.push(sums[0]);
        costs.push(sums[1]);
        input_tokens.push(sums[2]);
        output_tokens.push(sums[3]);
        estimated.push(sums[4]);
        fallbacks.push(sums[5]);
    }
    // Sorted by the primary key for the same reason as the ledger insert.
    sqlx::query(concat!(
        "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, input_tokens, \
           output_tokens, estimated_requests, fallback_requests) \
         SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], \
           $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[]) \
           AS v(account_id, day, key_id, model, requests, cost, input_tokens, output_tokens, \
             estimated_requests, fallback_requests) \
         ORDER BY account_id, day, key_id, model \
         ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET requests = ",
        saturating_add!("usage_daily.requests", "excluded.requests"),
        ", cost = ",
        saturating_add!("usage_daily.cost", "excluded.cost"),
        ", input_tokens = ",
        saturating_add!("usage_daily.input_tokens", "excluded.input_tokens"),
        ", output_tokens = ",
        saturating_add!("usage_daily.output_tokens", "excluded.output_tokens"),
        ", estimated_requests = ",
        saturating_add!(
            "usage_daily.estimated_requests",
            "excluded.estimated_requests"
        ),
        ", fallback_requests = ",
        saturating_add!(
            "usage_daily.fallback_requests",
            "excluded.fallback_requests"
        ),
    ))
    .bind(&account_ids)
    .bind(&days)
    .bind(&key_ids)
    .bind(&models)
    .bind(&requests)
    .bind(&costs)
    .bind(&input_tokens)
    .bind(&output_tokens)
    .bind(&estimated)
    .bind(&fallbacks)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
        let migrated = sqlx::migrate!("./migrations/postgres").run(&pool).await;
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
        // The account's row is locked first, so two grants (or a grant and a usage batch)
        // at once are checked one after the other.
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(account.0)
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            return Err(StoreError::Grant(GrantRefused::NoAccount));
        }
        let row = sqlx::query(
            "INSERT INTO credit_grants (account_id, amount, note, created_at) \
             SELECT a.id, $2, $3, $4 FROM accounts a, \
               (SELECT COALESCE(SUM(amount), 0) AS granted FROM credit_grants \
                WHERE account_id = $1) AS g \
             WHERE a.id = $1 AND g.granted + $2 BETWEEN 0 AND $5 \
               AND ($2 >= 0 OR g.granted + $2 - a.charged >= 0) \
             RETURNING id",
        )
        .bind(account.0)
        .bind(amount.nanos())
        .bind(note)
        .bind(now)
        .bind(Credits::MAX_AMOUNT.nanos())
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => {
                let id = row.try_get("id")?;
                tx.commit().await?;
                Ok(id)
            }
            None => {
                tx.rollback().await?;
                Err(StoreError::Grant(why_refused(
                    self.account(account).await?.as_ref(),
                    amount,
                )))
            }
        }
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (account_id, kind, name, key_hash, hint, created_at, updated_at, \
             expires_at, is_enabled, credit_limit, rate_limit_rpm, clamp_max_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, TRUE, $8, $9, $10) RETURNING {KEY_COLUMNS}"
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
        // Within a batch the first record of a request id wins, as in the SQLite store.
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        let mut distinct = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            if !first_of.contains_key(record.request_id.as_str()) {
                first_of.insert(&record.request_id, i);
                distinct.push(record);
            }
        }

        let mut tx = self.pool.begin().await?;
        let new_ids = insert_records(&mut tx, &distinct).await?;
        let written: Vec<&UsageRecord> = distinct
            .into_iter()
            .filter(|r| new_ids.contains(&r.request_id))
            .collect();
        if !written.is_empty() {
            apply_totals(&mut tx, &written).await?;
        }
        tx.commit().await?;

        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                first_of.get(r.request_id.as_str()) == Some(&i) && new_ids.contains(&r.request_id)
            })
            .collect())
    }

    async fn activity(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<ActivityRollup, StoreError> {
        let rows = sqlx::query(ACTIVITY_QUERY)
            .bind(account.0)
            .bind(since_day)
            .fetch_all(&self.pool)
            .await?;
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
