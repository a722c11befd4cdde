//! The store's operator side and the request log: operator keys, an account's grants, and
//! an account's usage records a page at a time (migration 0007). One SQL text serves both
//! databases (both take `$N` parameters); a macro implements the trait for each.

use async_trait::async_trait;
use sqlx::Row;

use super::{deadline, AccountId, Deadlined, KeyId, PgStore, SqliteStore, StoreError};
use super::{UsageDetail, UsageRecord};
use crate::billing::Credits;

/// An operator key as stored: its hash stays in the database, never read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorKey {
    pub id: i64,
    pub name: String,
    pub hint: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What is needed to insert an operator key.
#[derive(Debug, Clone)]
pub struct NewOperatorKey {
    pub name: String,
    pub key_hash: String,
    pub hint: String,
    pub created_at: i64,
}

/// One credit grant (or correction, when negative) of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEntry {
    pub id: i64,
    pub account_id: AccountId,
    pub amount: Credits,
    pub note: Option<String>,
    pub created_at: i64,
}

/// Which statuses a request log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this HTTP status.
    Exact(i64),
    /// Below 400.
    Success,
    /// 400 and above.
    Error,
}

/// The filters of a request log; every one narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub key: Option<KeyId>,
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    /// Records created at or after this unix time.
    pub from: Option<i64>,
    /// Records created before this unix time.
    pub until: Option<i64>,
}

/// Where a page of the request log starts: just after (older than) this record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: i64,
}

/// One row of the request log: the record, its ledger id and its key's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: i64,
    /// The key's current name (a deleted key keeps its name); `None` without a key row.
    pub key_name: Option<String>,
    pub record: UsageRecord,
}

impl RequestRow {
    /// The cursor of the page after this row.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.record.created_at,
            id: self.id,
        }
    }
}

/// The operations behind the operator API and the request log.
#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    async fn create_operator_key(&self, key: NewOperatorKey) -> Result<OperatorKey, StoreError>;
    /// Operator keys not revoked, oldest first.
    async fn list_operator_keys(&self) -> Result<Vec<OperatorKey>, StoreError>;
    /// Revokes a live operator key; false when there is none with that id.
    async fn revoke_operator_key(&self, id: i64, now: i64) -> Result<bool, StoreError>;
    /// Any operator key, revoked ones included, by the hash of its secret.
    async fn operator_key_by_hash(&self, hash: &str) -> Result<Option<OperatorKey>, StoreError>;
    /// An account's grants, oldest first.
    async fn list_grants(&self, account: AccountId) -> Result<Vec<GrantEntry>, StoreError>;
    /// Up to `limit` of an account's usage records, newest first, older than `after`.
    async fn request_log(
        &self,
        account: AccountId,
        filter: &RequestFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError>;
}

/// A value bound to a request-log query.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bind {
    Int(i64),
    Text(String),
}

const OPERATOR_KEY_COLUMNS: &str = "id, name, hint, created_at, revoked_at";

const REQUEST_COLUMNS: &str = "r.id, r.request_id, r.account_id, r.key_id, r.model, r.endpoint, \
     r.input_tokens, r.cached_input_tokens, r.output_tokens, r.cost, r.status, r.latency_ms, \
     r.created_at, r.requested_model, r.provider, r.attempts, r.estimated, r.loss, \
     k.name AS key_name";

/// The request-log query and its values. The index read is the one of the narrowest
/// filter (errors, else key, else model, else the account's); each is in (created_at, id)
/// order, so the page is read in order from the cursor and nothing is sorted. SQLite is
/// told which (`sqlite`: it has no statistics to choose by); PostgreSQL chooses.
fn request_log_query(
    account: AccountId,
    filter: &RequestFilter,
    after: Option<Cursor>,
    limit: u32,
    sqlite: bool,
) -> (String, Vec<Bind>) {
    let mut binds = vec![Bind::Int(account.0)];
    let mut conditions = vec!["r.account_id = $1".to_string()];
    fn bind(binds: &mut Vec<Bind>, value: Bind, condition: &str, conditions: &mut Vec<String>) {
        binds.push(value);
        conditions.push(condition.replace('?', &format!("${}", binds.len())));
    }
    if let Some(key) = filter.key {
        bind(
            &mut binds,
            Bind::Int(key.0),
            "r.key_id = ?",
            &mut conditions,
        );
    }
    if let Some(model) = &filter.model {
        bind(
            &mut binds,
            Bind::Text(model.clone()),
            "r.model = ?",
            &mut conditions,
        );
    }
    // Errors are rare: a filter to them reads the partial index of error records
    // (migration 0011), whose condition the query states (`status >= 400`) so that both
    // databases may use it.
    let errors_only = match filter.status {
        Some(StatusFilter::Exact(status)) => {
            bind(
                &mut binds,
                Bind::Int(status),
                "r.status = ?",
                &mut conditions,
            );
            status >= 400
        }
        Some(StatusFilter::Success) => {
            conditions.push("r.status < 400".into());
            false
        }
        Some(StatusFilter::Error) => true,
        None => false,
    };
    if errors_only {
        conditions.push("r.status >= 400".into());
    }
    if let Some(from) = filter.from {
        bind(
            &mut binds,
            Bind::Int(from),
            "r.created_at >= ?",
            &mut conditions,
        );
    }
    if let Some(until) = filter.until {
        bind(
            &mut binds,
            Bind::Int(until),
            "r.created_at < ?",
            &mut conditions,
        );
    }
    if let Some(cursor) = after {
        // The redundant `<=` bounds the index range; the rest breaks ties by id.
        bind(
            &mut binds,
            Bind::Int(cursor.created_at),
            "r.created_at <= ?",
            &mut conditions,
        );
        let at = format!("${}", binds.len());
        bind(
            &mut binds,
            Bind::Int(cursor.id),
            &format!("(r.created_at < {at} OR r.id < ?)"),
            &mut conditions,
        );
    }
    let index = match (sqlite, filter.key.is_some(), filter.model.is_some()) {
        (false, _, _) => "",
        _ if errors_only => " INDEXED BY usage_records_account_errors",
        (true, true, _) => " INDEXED BY usage_records_key_time",
        (true, false, true) => " INDEXED BY usage_records_account_model_time",
        (true, false, false) => " INDEXED BY usage_records_account_time",
    };
    binds.push(Bind::Int(i64::from(limit)));
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM usage_records r{index} \
         LEFT JOIN api_keys k ON k.id = r.key_id \
         WHERE {} ORDER BY r.created_at DESC, r.id DESC LIMIT ${}",
        conditions.join(" AND "),
        binds.len()
    );
    (sql, binds)
}

macro_rules! operator_key_from_row {
    ($row:expr) => {
        OperatorKey {
            id: $row.try_get("id")?,
            name: $row.try_get("name")?,
            hint: $row.try_get("hint")?,
            created_at: $row.try_get("created_at")?,
            revoked_at: $row.try_get("revoked_at")?,
        }
    };
}

macro_rules! admin_store {
    ($store:ty, $sqlite:expr) => {
        #[async_trait]
        impl AdminStore for $store {
            async fn create_operator_key(
                &self,
                key: NewOperatorKey,
            ) -> Result<OperatorKey, StoreError> {
                let row = sqlx::query(&format!(
                    "INSERT INTO operator_keys (name, key_hash, hint, created_at) \
                     VALUES ($1, $2, $3, $4) RETURNING {OPERATOR_KEY_COLUMNS}"
                ))
                .bind(&key.name)
                .bind(&key.key_hash)
                .bind(&key.hint)
                .bind(key.created_at)
                .fetch_one(self.pool())
                .await?;
                Ok(operator_key_from_row!(row))
            }

            async fn list_operator_keys(&self) -> Result<Vec<OperatorKey>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {OPERATOR_KEY_COLUMNS} FROM operator_keys \
                     WHERE revoked_at IS NULL ORDER BY id"
                ))
                .fetch_all(self.pool())
                .await?;
                let mut keys = Vec::with_capacity(rows.len());
                for row in rows {
                    keys.push(operator_key_from_row!(row));
                }
                Ok(keys)
            }

            async fn revoke_operator_key(&self, id: i64, now: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE operator_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(self.pool())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn operator_key_by_hash(
                &self,
                hash: &str,
            ) -> Result<Option<OperatorKey>, StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT {OPERATOR_KEY_COLUMNS} FROM operator_keys WHERE key_hash = $1"
                ))
                .bind(hash)
                .fetch_optional(self.pool())
                .await?;
                Ok(match row {
                    Some(row) => Some(operator_key_from_row!(row)),
                    None => None,
                })
            }

            async fn list_grants(&self, account: AccountId) -> Result<Vec<GrantEntry>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, account_id, amount, note, created_at FROM credit_grants \
                     WHERE account_id = $1 ORDER BY id",
                )
                .bind(account.0)
                .fetch_all(self.pool())
                .await?;
                let mut grants = Vec::with_capacity(rows.len());
                for row in rows {
                    grants.push(GrantEntry {
                        id: row.try_get("id")?,
                        account_id: AccountId(row.try_get("account_id")?),
                        amount: Credits::from_nanos(row.try_get("amount")?),
                        note: row.try_get("note")?,
                        created_at: row.try_get("created_at")?,
                    });
                }
                Ok(grants)
            }

            async fn request_log(
                &self,
                account: AccountId,
                filter: &RequestFilter,
                after: Option<Cursor>,
                limit: u32,
            ) -> Result<Vec<RequestRow>, StoreError> {
                let (sql, binds) = request_log_query(account, filter, after, limit, $sqlite);
                let mut query = sqlx::query(&sql);
                for value in binds {
                    query = match value {
                        Bind::Int(v) => query.bind(v),
                        Bind::Text(v) => query.bind(v),
                    };
                }
                let rows = query.fetch_all(self.pool()).await?;
                let mut page = Vec::with_capacity(rows.len());
                for row in rows {
                    page.push(RequestRow {
                        id: row.try_get("id")?,
                        key_name: row.try_get("key_name")?,
                        record: UsageRecord {
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
                        },
                    });
                }
                Ok(page)
            }
        }
    };
}

admin_store!(SqliteStore, true);
admin_store!(PgStore, false);

#[async_trait]
impl<S: AdminStore> AdminStore for Deadlined<S> {
    async fn create_operator_key(&self, key: NewOperatorKey) -> Result<OperatorKey, StoreError> {
        deadline(self.0.create_operator_key(key)).await
    }

    async fn list_operator_keys(&self) -> Result<Vec<OperatorKey>, StoreError> {
        deadline(self.0.list_operator_keys()).await
    }

    async fn revoke_operator_key(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        deadline(self.0.revoke_operator_key(id, now)).await
    }

    async fn operator_key_by_hash(&self, hash: &str) -> Result<Option<OperatorKey>, StoreError> {
        deadline(self.0.operator_key_by_hash(hash)).await
    }

    async fn list_grants(&self, account: AccountId) -> Result<Vec<GrantEntry>, StoreError> {
        deadline(self.0.list_grants(account)).await
    }

    async fn request_log(
        &self,
        account: AccountId,
        filter: &RequestFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        deadline(self.0.request_log(account, filter, after, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_numbers_its_values_in_order_and_names_the_index() {
        let filter = RequestFilter {
            key: Some(KeyId(7)),
            model: Some("m".into()),
            status: Some(StatusFilter::Error),
            from: Some(10),
            until: Some(20),
        };
        let cursor = Cursor {
            created_at: 15,
            id: 99,
        };
        let (sql, binds) = request_log_query(AccountId(3), &filter, Some(cursor), 50, true);
        // Errors are the rarest rows: their partial index, whatever else is filtered.
        assert!(
            sql.contains("INDEXED BY usage_records_account_errors"),
            "{sql}"
        );
        assert!(sql.contains("r.account_id = $1 AND r.key_id = $2 AND r.model = $3 AND r.status >= 400 AND r.created_at >= $4 AND r.created_at < $5 AND r.created_at <= $6 AND (r.created_at < $6 OR r.id < $7)"), "{sql}");
        assert!(sql.ends_with("LIMIT $8"), "{sql}");
        assert_eq!(
            binds,
            vec![
                Bind::Int(3),
                Bind::Int(7),
                Bind::Text("m".into()),
                Bind::Int(10),
                Bind::Int(20),
                Bind::Int(15),
                Bind::Int(99),
                Bind::Int(50)
            ]
        );
        let by = |status| RequestFilter {
            key: Some(KeyId(7)),
            status: Some(status),
            ..RequestFilter::default()
        };
        let (sql, _) =
            request_log_query(AccountId(3), &by(StatusFilter::Exact(429)), None, 5, true);
        assert!(
            sql.contains("INDEXED BY usage_records_account_errors"),
            "{sql}"
        );
        assert!(sql.contains("r.status = $3 AND r.status >= 400"), "{sql}");
        for status in [StatusFilter::Exact(200), StatusFilter::Success] {
            let (sql, _) = request_log_query(AccountId(3), &by(status), None, 5, true);
            assert!(sql.contains("INDEXED BY usage_records_key_time"), "{sql}");
        }
        let (sql, binds) =
            request_log_query(AccountId(3), &RequestFilter::default(), None, 5, false);
        assert!(!sql.contains("INDEXED BY"), "{sql}");
        assert!(sql.contains("WHERE r.account_id = $1 ORDER BY"), "{sql}");
        assert_eq!(binds, vec![Bind::Int(3), Bind::Int(5)]);
    }
}
