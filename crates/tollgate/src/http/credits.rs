//! `GET /v1/account/balance` and `GET /v1/account/credits`: what an account can spend now
//! and the grants behind it (src/credits.rs). Money is a decimal string, as everywhere
//! in the account API.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::error::ApiError;
use crate::store::{Account, AccountId, Grant};

/// A grant (or a correction) as the API and `tollgate credits list --json` show it.
pub fn grant_json(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "amount": g.amount.to_string(),
        "remaining": g.remaining().to_string(),
        "expired": g.expired.to_string(),
        "note": g.note,
        "created_at": crate::rfc3339(g.created_at),
        "expires_at": g.expires_at.map(crate::rfc3339),
        "status": status(g, crate::now()),
    })
}

/// `active`, `used` (nothing left), `expiring` (past its expiry, part kept for requests in
/// flight), `expired`, or `correction` (an adjustment that took credits away).
fn status(g: &Grant, now: i64) -> &'static str {
    let due = g.expires_at.is_some_and(|e| e <= now);
    let left = g.remaining() > crate::billing::Credits::ZERO;
    if g.amount.is_negative() {
        "correction"
    } else if due && left {
        "expiring"
    } else if due && g.expired > crate::billing::Credits::ZERO {
        "expired"
    } else if left {
        "active"
    } else {
        "used"
    }
}

/// The account with its due expiries processed. If that cannot be done now (Redis down in
/// a cluster), the account as the database has it, and a warning in the log.
pub(crate) async fn settled(state: &AppState, account: AccountId) -> Result<Account, ApiError> {
    let settled = match state.meter.settle_credits(account).await {
        Ok(settled) => settled,
        Err(e) => {
            tracing::warn!(account = account.0, error = %e, "processing due credit expiries failed");
            state.accounts.account(account).await?
        }
    };
    settled.ok_or_else(|| ApiError::internal("provisioning key of a missing account"))
}

/// `GET /v1/account/balance`: what can be spent now, a decimal string.
pub async fn balance(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let account = settled(&state, owner.account_id).await?;
    Ok(Json(json!({"balance": account.balance().to_string()})))
}

/// `GET /v1/account/credits`: the balance and every grant, newest first.
pub async fn credits(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let account = settled(&state, owner.account_id).await?;
    let grants = state.accounts.credit_grants(owner.account_id).await?;
    Ok(Json(json!({
        "balance": account.balance().to_string(),
        "expired": account.expired.to_string(),
        "next_expiry": account.next_expiry.map(crate::rfc3339),
        "credits": grants.iter().map(grant_json).collect::<Vec<_>>(),
    })))
}
