//! The embedded SQLite store (WAL mode), the default.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::*;
use crate::billing::Credits;

/// SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }

    /// The pool, for tests and tools that inspect the file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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

async fn insert_usage(
    tx: &mut Transaction<'_, Sqlite>,
    r: &UsageRecord,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, input_tokens, \
         cached_input_tokens, output_tokens, cost, status, latency_ms, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&r.request_id)
    .bind(r.account_id.0)
    .bind(r.key_id.0)
    .bind(&r.model)
    .bind(&r.endpoint)
    .bind(r.input_tokens)
    .bind(r.cached_input_tokens)
    .bind(r.output_tokens)
    .bind(r.cost.nanos())
    .bind(r.status)
    .bind(r.latency_ms)
    .bind(r.created_at)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(false);
    }
    sqlx::query("UPDATE accounts SET charged = charged + $1 WHERE id = $2")
        .bind(r.cost.nanos())
        .bind(r.account_id.0)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE api_keys SET usage = usage + $1, \
         last_used_at = MAX(COALESCE(last_used_at, 0), $2) WHERE id = $3",
    )
    .bind(r.cost.nanos())
    .bind(r.created_at)
    .bind(r.key_id.0)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, input_tokens, output_tokens) \
         VALUES ($1, $2, $3, $4, 1, $5, $6, $7) \
         ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET \
         requests = requests + 1, cost = cost + excluded.cost, \
         input_tokens = input_tokens + excluded.input_tokens, \
         output_tokens = output_tokens + excluded.output_tokens",
    )
    .bind(r.account_id.0)
    .bind(day_of(r.created_at))
    .bind(r.key_id.0)
    .bind(&r.model)
    .bind(r.cost.nanos())
    .bind(r.input_tokens)
    .bind(r.output_tokens)
    .execute(&mut **tx)
    .await?;
    Ok(true)
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
        let mut tx = self.pool.begin().await?;
        let mut written = Vec::with_capacity(batch.len());
        for record in batch {
            written.push(insert_usage(&mut tx, record).await?);
        }
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
