//! The activity roll-up (`Store::activity`) from the daily table: two queries at once,
//! and a way round SQLite's `SUM` for an account whose sums overflow it.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::super::overflow::{integer, sum_overflowed};
use super::super::*;
use super::SqliteStore;

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
    /// `Store::activity`: the account's days, models and keys since `since_day`.
    pub(super) async fn activity_rollup(
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
}

#[cfg(test)]
mod tests {
    use super::super::{test_record, test_store_with_key};
    use super::*;

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
                limit_reset: None,
                allowed_models: None,
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
}
