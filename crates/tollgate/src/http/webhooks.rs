//! `/v1/account/webhooks`: an account holder's webhooks (the secret is never shown after
//! creation) and their delivery logs.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::extract::{json_object, only_fields, raw_member, read_body, type_name};
use super::AppState;
use crate::billing::Credits;
use crate::error::ApiError;
use crate::webhooks::{DeliveryRow, HookRow, WebhookError};

const CREATE_FIELDS: &[&str] = &["url", "secret", "low_balance"];
/// Deliveries a log shows.
const LOG_LIMIT: i64 = 100;

fn view(hook: &HookRow) -> Value {
    json!({
        "id": hook.id,
        "url": hook.url,
        "low_balance": hook.low_balance.map(|l| Credits::from_nanos(l).to_string()),
        "created_at": crate::rfc3339(hook.created_at),
        "events": ["key.usage_threshold", "account.low_balance", "credits.expiring"],
    })
}

fn delivery_view(d: &DeliveryRow) -> Value {
    let ms = |t: i64| crate::rfc3339(t.div_euclid(1000));
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status,
        "last_error": d.last_error,
        "created_at": ms(d.created_at),
        "delivered_at": d.delivered_at.map(ms),
        "next_attempt_at": (d.status == "pending").then(|| ms(d.next_attempt_at)),
        "payload": serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::Null),
    })
}

fn store_error(e: WebhookError) -> ApiError {
    match e {
        WebhookError::Target(t) => ApiError::invalid_field("url", t.to_string()),
        WebhookError::TooMany => ApiError::bad_request("too_many_webhooks", e.to_string()),
        WebhookError::Database(e) => ApiError::internal(e),
        WebhookError::Store(e) => ApiError::internal(e),
    }
}

fn string_field(map: &Map<String, Value>, name: &str, max: usize) -> Result<String, ApiError> {
    match map.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid_field(
            name,
            format!("'{name}' must be 1 to {max} bytes long."),
        )),
        Some(other) => Err(ApiError::invalid_field(
            name,
            format!("'{name}' must be a string, not {}.", type_name(other)),
        )),
        None => Err(ApiError::invalid_field(
            name,
            format!("'{name}' is required."),
        )),
    }
}

/// `low_balance` as a decimal string ("5.00") or a number, read from its text.
fn low_balance(map: &Map<String, Value>, bytes: &[u8]) -> Result<Option<Credits>, ApiError> {
    let text = match map.get("low_balance") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(_)) => raw_member(bytes, "low_balance")
            .map(|r| r.get().to_string())
            .unwrap_or_default(),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "low_balance",
                format!(
                    "'low_balance' must be a decimal string of credits such as \"5.00\", not {}.",
                    type_name(other)
                ),
            ))
        }
    };
    match Credits::parse_amount(&text) {
        Ok(amount) if !amount.is_negative() => Ok(Some(amount)),
        Ok(_) => Err(ApiError::invalid_field(
            "low_balance",
            "'low_balance' must not be negative.",
        )),
        Err(e) => Err(ApiError::invalid_field(
            "low_balance",
            format!("'low_balance': {e}"),
        )),
    }
}

/// `POST /v1/account/webhooks` → 201 with the webhook (never its secret).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
    let map = json_object(&bytes)?;
    only_fields(&map, CREATE_FIELDS)?;
    let url = string_field(&map, "url", 2048)?;
    let secret = string_field(&map, "secret", 256)?;
    if secret.len() < 16 {
        return Err(ApiError::invalid_field(
            "secret",
            "'secret' must be at least 16 bytes: it signs every delivery (HMAC-SHA256).",
        ));
    }
    let low = low_balance(&map, &bytes)?;
    let hook = state
        .webhooks
        .create(owner.account_id, &url, &secret, low)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(view(&hook))).into_response())
}

/// `GET /v1/account/webhooks`
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let hooks = state
        .webhooks
        .list(owner.account_id)
        .await
        .map_err(store_error)?;
    Ok(Json(
        json!({"webhooks": hooks.iter().map(view).collect::<Vec<_>>()}),
    ))
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!(
                "webhook id must be an integer, got {}",
                crate::error::quoted(text)
            ),
        )
    })
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found(
        "webhook_not_found",
        format!("No webhook with id {id} on this account."),
    )
}

/// `DELETE /v1/account/webhooks/{id}` → 204
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_id(&id)?;
    if state
        .webhooks
        .delete(owner.account_id, id)
        .await
        .map_err(store_error)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}

/// `GET /v1/account/webhooks/{id}/deliveries`: the last 100 deliveries, newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_id(&id)?;
    let log = state
        .webhooks
        .deliveries(owner.account_id, id, LOG_LIMIT)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(
        json!({"deliveries": log.iter().map(delivery_view).collect::<Vec<_>>()}),
    ))
}
