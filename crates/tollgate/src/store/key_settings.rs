//! A key's budget settings beyond its limit (migration 0005): the window its limit
//! resets in, the models it may use, and the previous secret of a rotated key; and the
//! per-day charges from which its window usages are summed. Shared by both databases.

use super::{KeyId, StoreError};
use crate::billing::window::LimitReset;

/// A key's charges per day of the daily roll-up, from `$2` (YYYY-MM-DD) on, of the
/// account `$1`, and of the key `$3` only when it is not NULL. Rows per (key, day, model),
/// unsummed: both databases return their integers as they are.
pub(super) const WINDOW_USAGE_QUERY: &str = "SELECT key_id, day, cost FROM usage_daily \
     WHERE account_id = $1 AND day >= $2 AND ($3 IS NULL OR key_id = $3)";
/// [`WINDOW_USAGE_QUERY`] for PostgreSQL, which needs the type of `$3`.
pub(super) const WINDOW_USAGE_QUERY_PG: &str = "SELECT key_id, day, cost FROM usage_daily \
     WHERE account_id = $1 AND day >= $2 AND ($3::BIGINT IS NULL OR key_id = $3)";

/// The settings as stored.
pub(super) struct Stored {
    pub limit_reset: Option<String>,
    pub allowed_models: Option<String>,
}

/// The settings read from their columns.
pub(super) fn parse(
    id: i64,
    stored: Stored,
) -> Result<(Option<LimitReset>, Option<Vec<String>>), StoreError> {
    let limit_reset = match stored.limit_reset {
        None => None,
        Some(text) => Some(
            LimitReset::parse(&text)
                .ok_or_else(|| StoreError::Corrupt(format!("limit_reset '{text}' of key {id}")))?,
        ),
    };
    let allowed_models = match stored.allowed_models {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<Vec<String>>(&text)
                .map_err(|e| StoreError::Corrupt(format!("allowed_models of key {id}: {e}")))?,
        ),
    };
    Ok((limit_reset, allowed_models))
}

/// `allowed_models` as stored: a JSON array.
pub(super) fn allowed_json(models: Option<&[String]>) -> Option<String> {
    models.map(|m| serde_json::Value::from(m.to_vec()).to_string())
}

/// One row of [`WINDOW_USAGE_QUERY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCharge {
    pub key: KeyId,
    pub day: String,
    pub cost: i64,
}

/// `key_by_hash`: the current secret's hash, or the previous one's; `via_previous` says which.
pub(super) fn by_hash_query(columns: &str) -> String {
    format!(
        "SELECT {columns}, key_hash <> $1 AS via_previous FROM api_keys \
         WHERE key_hash = $1 OR previous_key_hash = $1 LIMIT 1"
    )
}

/// `rotate_key`: `$1` the end of the previous secret's grace (NULL: none), `$2` the new
/// hash, `$3` its hint, `$4` now, `$5` the key, `$6` its account. The right-hand sides read
/// the row as it was, so the previous hash is the one being replaced.
pub(super) fn rotate_query(columns: &str, grace: &str) -> String {
    format!(
        "UPDATE api_keys SET \
           previous_key_hash = CASE WHEN {grace} IS NULL THEN NULL ELSE key_hash END, \
           previous_key_expires_at = {grace}, \
           key_hash = $2, hint = $3, updated_at = $4 \
         WHERE id = $5 AND account_id = $6 AND kind = 'inference' AND deleted_at IS NULL \
         RETURNING {columns}"
    )
}
