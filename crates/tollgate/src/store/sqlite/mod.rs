//! The embedded SQLite store (WAL mode), the default: accounts, keys and queries here,
//! the ledger's writer in `ledger`, the WAL's checkpoints in `wal`.

mod activity;
mod ledger;
mod wal;

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

use super::overflow::integer;
use super::*;
use crate::billing::window::LimitReset;
use crate::billing::Credits;
use ledger::{append_locked, Ledger};
use wal::{checkpoint_loop, WAL_SIZE_LIMIT};

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
     limit_reset, allowed_models, previous_key_expires_at, \
     clamp_max_tokens";

const ACCOUNT_SELECT: &str = "SELECT a.id, a.name, a.created_at, a.charged, a.expired, \
     COALESCE((SELECT SUM(g.amount) FROM credit_grants g WHERE g.account_id = a.id), 0) AS granted, \
     (SELECT MIN(g.expires_at) FROM credit_grants g WHERE g.account_id = a.id \
      AND g.amount > g.consumed + g.expired) AS next_expiry \
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

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let id: i64 = row.try_get("id")?;
    let (limit_reset, allowed_models) = key_settings::parse(
        id,
        key_settings::Stored {
            limit_reset: row.try_get("limit_reset")?,
            allowed_models: row.try_get("allowed_models")?,
        },
    )?;
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
        limit_reset,
        allowed_models,
        previous_key_expires_at: row.try_get("previous_key_expires_at")?,
        via_previous_secret: false,
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
        expired: Credits::from_nanos(row.try_get("expired")?),
        next_expiry: row.try_get("next_expiry")?,
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let migrated = super::migrator(sqlx::migrate!("./migrations/sqlite"))
            .run(&self.pool)
            .await;
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
        super::credits_sqlite::add_grant(&self.pool, account, grant, now).await
    }

    async fn settle_credits(
        &self,
        account: AccountId,
        now: i64,
        in_flight: Credits,
    ) -> Result<Option<Account>, StoreError> {
        super::credits_sqlite::settle(&self.pool, account, now, in_flight).await?;
        self.account(account).await
    }

    async fn credit_grants(&self, account: AccountId) -> Result<Vec<Grant>, StoreError> {
        super::credits_sqlite::grants(&self.pool, account).await
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (account_id, kind, name, key_hash, hint, created_at, updated_at, \
             expires_at, is_enabled, credit_limit, rate_limit_rpm, limit_reset, allowed_models, clamp_max_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 1, $8, $9, $10, $11, $12) RETURNING {KEY_COLUMNS}"
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

    async fn day_charges(
        &self,
        account: AccountId,
        key: Option<KeyId>,
        since_day: &str,
    ) -> Result<Vec<DayCharge>, StoreError> {
        let rows = sqlx::query(key_settings::WINDOW_USAGE_QUERY)
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
                    cost: integer(row, "cost", "usage_daily", key)?,
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
        sqlx::query(&key_settings::rotate_query(KEY_COLUMNS, "$1"))
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
        self.activity_rollup(account, since_day).await
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
                    lease: None,
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
            limit_reset: None,
            allowed_models: None,
            clamp_max_tokens: false,
        })
        .await
        .expect("key");
    (store, account.id, key.id)
}
