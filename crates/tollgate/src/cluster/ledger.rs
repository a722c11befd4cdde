//! One consistent view of the PostgreSQL ledger for loading and checking a shared
//! budget: a read-only REPEATABLE READ transaction, so the totals and the question
//! "which of these requests are charged?" (asked later, after a Redis read) are
//! answered from the same snapshot.

use std::collections::HashMap;

use sqlx::{Postgres, Row, Transaction};

use super::names::budget_name;
use super::slices::is_slice;
use super::ClusterError;
use crate::billing::window::{LimitReset, Window};
use crate::store::counters::{account_charged, joined_usage, key_slots_join, key_usage};
use crate::store::{AccountId, KeyId};

/// A key's totals in the snapshot.
#[derive(Debug)]
pub(super) struct KeyTotals {
    pub id: KeyId,
    /// Its budget's name (with the current window when its limit resets).
    pub budget: String,
    /// Its usage: in the current window when its limit resets, else ever.
    pub usage: i64,
    pub limit: Option<i64>,
    /// The current window, when its limit resets.
    pub window: Option<Window>,
}

/// An account's totals in the snapshot.
#[derive(Debug)]
pub(super) struct Totals {
    /// Grants net of expired remainders.
    pub granted: i64,
    pub charged: i64,
    pub keys: Vec<KeyTotals>,
}

fn ledger_error(e: sqlx::Error) -> ClusterError {
    ClusterError::Ledger(e.to_string())
}

/// Sets the usage of each key whose limit resets to its window's days of the roll-up (a
/// record's day is its reservation's), in one statement for all of them: one query per
/// key made a check of an account with 1,000 daily keys 1,000 round trips.
async fn window_usage(
    tx: &mut Transaction<'static, Postgres>,
    account: AccountId,
    keys: &mut [KeyTotals],
) -> Result<(), ClusterError> {
    let (mut ids, mut firsts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    for k in keys.iter() {
        if let Some(w) = &k.window {
            ids.push(k.id.0);
            firsts.push(w.first_day());
            ends.push(w.end().to_string());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    // One range of the roll-up's key (the account's days from the earliest window's
    // first), summed per key and day once, then each day counted in its key's window.
    let earliest = firsts.iter().min().cloned().unwrap_or_default();
    let rows = sqlx::query(
        "SELECT w.id, COALESCE(SUM(d.cost) FILTER (WHERE d.day >= w.first_day \
         AND d.day < w.end_day), 0)::BIGINT \
         FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[]) AS w(id, first_day, end_day) \
         LEFT JOIN (SELECT key_id, day, SUM(cost) AS cost FROM usage_daily \
           WHERE account_id = $1 AND day >= $5 AND key_id = ANY($2) GROUP BY key_id, day) d \
         ON d.key_id = w.id \
         GROUP BY w.id",
    )
    .bind(account.0)
    .bind(&ids)
    .bind(&firsts)
    .bind(&ends)
    .bind(earliest)
    .fetch_all(&mut **tx)
    .await
    .map_err(ledger_error)?;
    let mut sums = HashMap::with_capacity(rows.len());
    for row in rows {
        sums.insert(
            row.try_get::<i64, _>(0).map_err(ledger_error)?,
            row.try_get::<i64, _>(1).map_err(ledger_error)?,
        );
    }
    for k in keys.iter_mut().filter(|k| k.window.is_some()) {
        k.usage = sums.get(&k.id.0).copied().unwrap_or(0);
    }
    Ok(())
}

/// An open snapshot of the ledger.
pub(super) struct Snapshot {
    tx: Transaction<'static, Postgres>,
}

impl Snapshot {
    /// Opens a snapshot and reads the account's totals and its keys' (those named, or
    /// every live inference key): the snapshot is taken by this first read. A key whose
    /// limit resets is read in its window holding `at`.
    pub async fn open(
        pool: &sqlx::PgPool,
        account: AccountId,
        keys: Option<&[KeyId]>,
        at: i64,
    ) -> Result<(Snapshot, Option<Totals>), ClusterError> {
        // One round trip, not `BEGIN` and then `SET TRANSACTION`.
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(ledger_error)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            account_charged!("a"),
            ", COALESCE((SELECT SUM(g.amount) FROM credit_grants g \
             WHERE g.account_id = a.id), 0)::BIGINT - a.expired FROM accounts a WHERE a.id = $1",
        ))
        .bind(account.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_error)?;
        let Some(row) = row else {
            return Ok((Snapshot { tx }, None));
        };
        let charged: i64 = row.try_get(0).map_err(ledger_error)?;
        let granted: i64 = row.try_get(1).map_err(ledger_error)?;
        let rows = match keys {
            // Named keys by their primary key (an account may have 100,000 keys), and
            // their slots by theirs; every key of the account in one range of the slots.
            Some(keys) => sqlx::query(concat!(
                "SELECT id, ",
                key_usage!("api_keys"),
                ", credit_limit, limit_reset FROM api_keys WHERE id = ANY($2) \
                 AND account_id = $1 AND kind = 'inference' AND deleted_at IS NULL ORDER BY id",
            ))
            .bind(account.0)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<i64>>()),
            None => sqlx::query(concat!(
                "SELECT id, ",
                joined_usage!("api_keys"),
                ", credit_limit, limit_reset FROM api_keys",
                key_slots_join!("api_keys"),
                "WHERE account_id = $1 \
                 AND kind = 'inference' AND deleted_at IS NULL ORDER BY id",
            ))
            .bind(account.0),
        }
        .fetch_all(&mut *tx)
        .await
        .map_err(ledger_error)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let id = KeyId(row.try_get(0).map_err(ledger_error)?);
            let reset: Option<String> = row.try_get(3).map_err(ledger_error)?;
            let window = reset
                .as_deref()
                .and_then(LimitReset::parse)
                .map(|r| r.window_at(at));
            keys.push(KeyTotals {
                id,
                budget: budget_name(id, window.as_ref()),
                usage: row.try_get(1).map_err(ledger_error)?,
                limit: row.try_get(2).map_err(ledger_error)?,
                window,
            });
        }
        window_usage(&mut tx, account, &mut keys).await?;
        Ok((
            Snapshot { tx },
            Some(Totals {
                granted,
                charged,
                keys,
            }),
        ))
    }

    /// Which of `ids` the snapshot holds, with their cost: a request's, or for a budget
    /// slice (`L:...`) the sum of its records so far. Ends the snapshot. It wrote
    /// nothing, so it ends by being dropped: sqlx sends its `ROLLBACK` with the
    /// connection's next use, not as a round trip the sync waits for.
    pub async fn charged(mut self, ids: &[String]) -> Result<HashMap<String, i64>, ClusterError> {
        let mut found = HashMap::new();
        if !ids.is_empty() {
            let (slices, requests): (Vec<&String>, Vec<&String>) =
                ids.iter().partition(|id| is_slice(id));
            let rows = sqlx::query(
                "SELECT request_id, cost FROM usage_records WHERE request_id = ANY($1) \
                 UNION ALL SELECT lease_id, SUM(cost)::BIGINT FROM usage_records \
                 WHERE lease_id = ANY($2) GROUP BY lease_id",
            )
            .bind(requests)
            .bind(slices)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(ledger_error)?;
            for row in rows {
                found.insert(
                    row.try_get::<String, _>(0).map_err(ledger_error)?,
                    row.try_get::<i64, _>(1).map_err(ledger_error)?,
                );
            }
        }
        Ok(found)
    }
}
