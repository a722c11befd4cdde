// The webhooks' queries, written once for both databases: `db.rs` includes this file in
// a module per database, each defining `Db` and `KEY_USAGE` (a key's usage as that
// database counts it, for `api_keys k`) first. Times in milliseconds unless said.

use sqlx::Row;

use crate::webhooks::{DeliveryRow, Due, HookRow, KeyUse};

type P = sqlx::Pool<Db>;

pub async fn create(
    pool: &P,
    account: i64,
    url: &str,
    secret: &str,
    low_balance: Option<i64>,
    now: i64,
) -> sqlx::Result<i64> {
    let row = sqlx::query(
        "INSERT INTO webhooks (account_id, url, secret, low_balance, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(account)
    .bind(url)
    .bind(secret)
    .bind(low_balance)
    .bind(now)
    .fetch_one(pool)
    .await?;
    row.try_get(0)
}

fn hook(row: &<Db as sqlx::Database>::Row) -> sqlx::Result<HookRow> {
    Ok(HookRow {
        id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        url: row.try_get(2)?,
        secret: row.try_get(3)?,
        low_balance: row.try_get(4)?,
        created_at: row.try_get(5)?,
        deleted: row.try_get::<Option<i64>, _>(6)?.is_some(),
    })
}

const HOOK_COLUMNS: &str = "id, account_id, url, secret, low_balance, created_at, deleted_at";

/// Live webhooks of an account (`None`: of every account), oldest first.
pub async fn hooks(pool: &P, account: Option<i64>) -> sqlx::Result<Vec<HookRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {HOOK_COLUMNS} FROM webhooks WHERE deleted_at IS NULL \
         AND (CAST($1 AS BIGINT) IS NULL OR account_id = $1) ORDER BY id"
    ))
    .bind(account)
    .fetch_all(pool)
    .await?;
    rows.iter().map(hook).collect()
}

/// A webhook by id, deleted or not.
pub async fn hook_by_id(pool: &P, id: i64) -> sqlx::Result<Option<HookRow>> {
    let row = sqlx::query(&format!("SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(hook).transpose()
}

pub async fn delete(pool: &P, account: i64, id: i64, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE webhooks SET deleted_at = $3 WHERE id = $1 AND account_id = $2 \
         AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(account)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An event, noted once by its de-duplication id together with one delivery per
/// receiver (`(webhook, operator hook)`), in one transaction; false if noted before.
#[allow(clippy::too_many_arguments)]
pub async fn emit(
    pool: &P,
    account: i64,
    dedup: &str,
    now: i64,
    receivers: &[(Option<i64>, Option<i64>)],
    event_id: &str,
    event_type: &str,
    payload: &str,
    now_ms: i64,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let noted = sqlx::query(
        "INSERT INTO webhook_events (account_id, dedup, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(account)
    .bind(dedup)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if noted.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    for (webhook, operator_hook) in receivers {
        sqlx::query(
            "INSERT INTO webhook_deliveries (account_id, webhook_id, operator_hook, event_id, \
             event_type, payload, status, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)",
        )
        .bind(account)
        .bind(webhook)
        .bind(operator_hook)
        .bind(event_id)
        .bind(event_type)
        .bind(payload)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub async fn forget_event(pool: &P, account: i64, dedup: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM webhook_events WHERE account_id = $1 AND dedup = $2")
        .bind(account)
        .bind(dedup)
        .execute(pool)
        .await?;
    Ok(())
}

/// Claims up to `limit` due deliveries until `until` (another replica skips them).
pub async fn claim(pool: &P, now_ms: i64, until: i64, limit: i64) -> sqlx::Result<Vec<Due>> {
    let rows = sqlx::query(
        "SELECT id, webhook_id, operator_hook, payload, attempts FROM webhook_deliveries \
         WHERE status = 'pending' AND next_attempt_at <= $1 \
         AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(now_ms)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::new();
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET claimed_until = $2 WHERE id = $1 \
             AND status = 'pending' AND (claimed_until IS NULL OR claimed_until < $3)",
        )
        .bind(id)
        .bind(until)
        .bind(now_ms)
        .execute(pool)
        .await?;
        if done.rows_affected() == 1 {
            claimed.push(Due {
                id,
                webhook_id: row.try_get(1)?,
                operator_hook: row.try_get(2)?,
                payload: row.try_get(3)?,
                attempts: row.try_get(4)?,
            });
        }
    }
    Ok(claimed)
}

#[allow(clippy::too_many_arguments)]
pub async fn finish(
    pool: &P,
    id: i64,
    status: &str,
    attempts: i64,
    next_attempt_at: i64,
    last_status: Option<i64>,
    last_error: Option<&str>,
    delivered_at: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, \
         claimed_until = NULL, last_status = $5, last_error = $6, delivered_at = $7 WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(last_status)
    .bind(last_error)
    .bind(delivered_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// A webhook's deliveries, newest first.
pub async fn deliveries(pool: &P, webhook: i64, limit: i64) -> sqlx::Result<Vec<DeliveryRow>> {
    let rows = sqlx::query(
        "SELECT id, event_id, event_type, payload, status, attempts, last_status, last_error, \
         created_at, delivered_at, next_attempt_at FROM webhook_deliveries \
         WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(webhook)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeliveryRow {
                id: row.try_get(0)?,
                event_id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                payload: row.try_get(3)?,
                status: row.try_get(4)?,
                attempts: row.try_get(5)?,
                last_status: row.try_get(6)?,
                last_error: row.try_get(7)?,
                created_at: row.try_get(8)?,
                delivered_at: row.try_get(9)?,
                next_attempt_at: row.try_get(10)?,
            })
        })
        .collect()
}

pub async fn max_usage_id(pool: &P) -> sqlx::Result<i64> {
    let row = sqlx::query("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM usage_records")
        .fetch_one(pool)
        .await?;
    row.try_get(0)
}

/// Keys with a limit charged by usage records with an id above `since`. The records'
/// keys are read by their ids alone and de-duplicated here: with `DISTINCT` (or the
/// same as a subquery) SQLite scanned the whole key index instead of the id range, 30 ms
/// a second over a million records, a cost every request paid a share of.
pub async fn keys_used_since(pool: &P, since: i64) -> sqlx::Result<Vec<KeyUse>> {
    let used: std::collections::BTreeSet<i64> =
        sqlx::query_scalar::<_, i64>("SELECT key_id FROM usage_records WHERE id > $1")
            .bind(since)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let used: Vec<i64> = used.into_iter().collect();
    let mut keys = Vec::new();
    for chunk in used.chunks(500) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT k.id, k.account_id, k.name, {KEY_USAGE}, k.credit_limit, k.limit_reset \
             FROM api_keys k WHERE k.credit_limit IS NOT NULL AND k.credit_limit > 0 \
             AND k.deleted_at IS NULL AND k.id IN ({list})"
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(pool).await? {
            keys.push(KeyUse {
                id: row.try_get(0)?,
                account_id: row.try_get(1)?,
                name: row.try_get(2)?,
                usage: row.try_get(3)?,
                limit: row.try_get(4)?,
                limit_reset: row.try_get(5)?,
            });
        }
    }
    Ok(keys)
}

/// Grants with a remainder that expire in (now, until] (seconds): (id, account,
/// remaining, expires_at).
pub async fn expiring(pool: &P, now: i64, until: i64) -> sqlx::Result<Vec<(i64, i64, i64, i64)>> {
    let rows = sqlx::query(
        "SELECT id, account_id, amount - consumed - expired, expires_at FROM credit_grants \
         WHERE expires_at > $1 AND expires_at <= $2 AND amount > consumed + expired",
    )
    .bind(now)
    .bind(until)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?)))
        .collect()
}

/// Deletes finished deliveries created before `before_ms` (the log keeps 30 days).
pub async fn prune(pool: &P, before_ms: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < $1",
    )
    .bind(before_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
