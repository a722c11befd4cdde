// The console's queries, written once for both databases: `db.rs` includes this file in a
// module per database, each defining `Db` first. Times in unix seconds.

use sqlx::Row;

use crate::console::db::{DayModelCost, SessionRow};

type P = sqlx::Pool<Db>;

pub async fn create_session(pool: &P, s: &SessionRow, token_hash: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO console_sessions (token_hash, account_id, key_id, operator_key_id, \
         csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(token_hash)
    .bind(s.account_id)
    .bind(s.key_id)
    .bind(s.operator_key_id)
    .bind(&s.csrf_token)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// A live session: not expired, and the key it was opened with still live.
pub async fn session(pool: &P, token_hash: &str, now: i64) -> sqlx::Result<Option<SessionRow>> {
    let row = sqlx::query(
        "SELECT s.account_id, s.key_id, s.operator_key_id, s.csrf_token, s.created_at, \
         s.expires_at FROM console_sessions s \
         WHERE s.token_hash = $1 AND s.expires_at > $2 \
         AND (s.key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys k WHERE k.id = s.key_id \
              AND k.account_id = s.account_id AND k.deleted_at IS NULL AND k.is_enabled = TRUE \
              AND (k.expires_at IS NULL OR k.expires_at > $2))) \
         AND (s.operator_key_id IS NULL OR EXISTS (SELECT 1 FROM operator_keys o \
              WHERE o.id = s.operator_key_id AND o.revoked_at IS NULL))",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(SessionRow {
            account_id: row.try_get(0)?,
            key_id: row.try_get(1)?,
            operator_key_id: row.try_get(2)?,
            csrf_token: row.try_get(3)?,
            created_at: row.try_get(4)?,
            expires_at: row.try_get(5)?,
        })
    })
    .transpose()
}

pub async fn delete_session(pool: &P, token_hash: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn delete_expired(pool: &P, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// An account's spend per day and model from `since_day` on, from the daily roll-up (its
/// primary key starts with (account_id, day, model)).
pub async fn day_model_costs(
    pool: &P,
    account: i64,
    since_day: &str,
) -> sqlx::Result<Vec<DayModelCost>> {
    let rows = sqlx::query(
        "SELECT day, model, CAST(SUM(cost) AS BIGINT) FROM usage_daily \
         WHERE account_id = $1 AND day >= $2 GROUP BY day, model ORDER BY day, model",
    )
    .bind(account)
    .bind(since_day)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DayModelCost {
                day: row.try_get(0)?,
                model: row.try_get(1)?,
                cost: row.try_get(2)?,
            })
        })
        .collect()
}

/// Every account's spend from `since_day` on (accounts without any are absent).
pub async fn account_costs(pool: &P, since_day: &str) -> sqlx::Result<Vec<(i64, i64)>> {
    let rows = sqlx::query(
        "SELECT account_id, CAST(SUM(cost) AS BIGINT) FROM usage_daily \
         WHERE day >= $1 GROUP BY account_id",
    )
    .bind(since_day)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
