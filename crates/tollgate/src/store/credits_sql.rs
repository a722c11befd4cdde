// The credit ledger's transactions (src/credits.rs), written once for both databases:
// `credits_sqlite.rs` and `credits_pg.rs` include this file with their own `Db`, `begin`
// (a transaction that holds the account against concurrent writers), `LOCK` and `CHARGED`
// (the account's charge as its database counts it). Included, not a module: each
// includer defines those four before `include!`.

use sqlx::Row;

use super::{AccountId, Grant, GrantRefused, NewGrant, StoreError};
use crate::billing::Credits;
use crate::credits::{Changes, CreditLedger, GrantRow};

/// The account's ledger and the sum of all its grants, in `tx` (account locked).
async fn load(
    tx: &mut sqlx::Transaction<'static, Db>,
    account: AccountId,
) -> Result<Option<(CreditLedger, i64)>, StoreError> {
    let Some(row) = sqlx::query(&format!(
        "SELECT {CHARGED} AS charged, allocated FROM accounts WHERE id = $1{LOCK}"
    ))
    .bind(account.0)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let charged: i64 = row.try_get(0)?;
    let allocated: i64 = row.try_get(1)?;
    let sums = sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END), 0) AS BIGINT) \
         FROM credit_grants WHERE account_id = $1",
    )
    .bind(account.0)
    .fetch_one(&mut **tx)
    .await?;
    let granted: i64 = sums.try_get(0)?;
    let debits: i64 = sums.try_get(1)?;
    let rows = sqlx::query(
        "SELECT id, amount, expires_at, consumed, expired FROM credit_grants \
         WHERE account_id = $1 AND amount > consumed + expired",
    )
    .bind(account.0)
    .fetch_all(&mut **tx)
    .await?;
    let mut grants = Vec::with_capacity(rows.len());
    for row in rows {
        grants.push(GrantRow {
            id: row.try_get(0)?,
            amount: row.try_get(1)?,
            expires_at: row.try_get(2)?,
            consumed: row.try_get(3)?,
            expired: row.try_get(4)?,
        });
    }
    let ledger = CreditLedger {
        demand: charged.saturating_add(debits),
        allocated,
        grants,
    };
    Ok(Some((ledger, granted)))
}

/// Writes back what `changes` names.
async fn store(
    tx: &mut sqlx::Transaction<'static, Db>,
    account: AccountId,
    ledger: &CreditLedger,
    changes: &Changes,
) -> Result<(), StoreError> {
    if changes.grants.is_empty() && changes.expired == 0 {
        return Ok(());
    }
    for id in &changes.grants {
        if let Some(g) = ledger.grants.iter().find(|g| g.id == *id) {
            sqlx::query("UPDATE credit_grants SET consumed = $2, expired = $3 WHERE id = $1")
                .bind(g.id)
                .bind(g.consumed)
                .bind(g.expired)
                .execute(&mut **tx)
                .await?;
        }
    }
    sqlx::query("UPDATE accounts SET allocated = $2, expired = expired + $3 WHERE id = $1")
        .bind(account.0)
        .bind(ledger.allocated)
        .bind(changes.expired)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `Store::add_grant`.
pub(super) async fn add_grant(
    pool: &sqlx::Pool<Db>,
    account: AccountId,
    grant: &NewGrant,
    now: i64,
) -> Result<i64, StoreError> {
    let mut tx = begin(pool).await?;
    let Some((mut ledger, granted)) = load(&mut tx, account).await? else {
        return Err(StoreError::Grant(GrantRefused::NoAccount));
    };
    let mut changes = Changes::default();
    // Charges so far belong to the grants the account had.
    ledger.allocate(&mut changes);
    let amount = grant.amount.nanos();
    let after = i128::from(granted) + i128::from(amount);
    if after > i128::from(Credits::MAX_AMOUNT.nanos()) {
        return Err(StoreError::Grant(GrantRefused::OverMaximum {
            granted: Credits::from_nanos(granted),
        }));
    }
    let spendable = ledger.balance_without_due(now);
    if amount < 0 && (after < 0 || i128::from(spendable) + i128::from(amount) < 0) {
        return Err(StoreError::Grant(GrantRefused::Overdraw {
            balance: Credits::from_nanos(spendable.max(0)),
        }));
    }
    let row = sqlx::query(
        "INSERT INTO credit_grants (account_id, amount, note, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(account.0)
    .bind(amount)
    .bind(grant.note.as_deref())
    .bind(now)
    .bind(grant.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    let id: i64 = row.try_get(0)?;
    if amount > 0 {
        ledger.grants.push(GrantRow {
            id,
            amount,
            expires_at: grant.expires_at,
            consumed: 0,
            expired: 0,
        });
    } else {
        ledger.demand = ledger.demand.saturating_add(-amount);
    }
    // Debt is paid by the new grant; a correction is taken from the grants.
    ledger.allocate(&mut changes);
    store(&mut tx, account, &ledger, &changes).await?;
    tx.commit().await?;
    Ok(id)
}

/// `Store::settle_credits`, without reading the account back.
pub(super) async fn settle(
    pool: &sqlx::Pool<Db>,
    account: AccountId,
    now: i64,
    in_flight: Credits,
) -> Result<(), StoreError> {
    let mut tx = begin(pool).await?;
    let Some((mut ledger, _)) = load(&mut tx, account).await? else {
        return Ok(());
    };
    let mut changes = Changes::default();
    ledger.expire(now, in_flight.nanos(), &mut changes);
    store(&mut tx, account, &ledger, &changes).await?;
    tx.commit().await?;
    Ok(())
}

/// `Store::credit_grants`.
pub(super) async fn grants(
    pool: &sqlx::Pool<Db>,
    account: AccountId,
) -> Result<Vec<Grant>, StoreError> {
    let mut tx = begin(pool).await?;
    if let Some((mut ledger, _)) = load(&mut tx, account).await? {
        let mut changes = Changes::default();
        ledger.allocate(&mut changes);
        store(&mut tx, account, &ledger, &changes).await?;
    }
    let rows = sqlx::query(
        "SELECT id, amount, note, created_at, expires_at, consumed, expired \
         FROM credit_grants WHERE account_id = $1 ORDER BY id DESC",
    )
    .bind(account.0)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|row| {
            Ok(Grant {
                id: row.try_get(0)?,
                amount: Credits::from_nanos(row.try_get(1)?),
                note: row.try_get(2)?,
                created_at: row.try_get(3)?,
                expires_at: row.try_get(4)?,
                consumed: Credits::from_nanos(row.try_get(5)?),
                expired: Credits::from_nanos(row.try_get(6)?),
            })
        })
        .collect()
}

