//! Handlers of `/v1/account/*` (provisioning key) and `GET /v1/key` (inference key).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::extract::{json_object, only_fields, raw_member, read_body, type_name};
use super::AppState;
use crate::accounts::{Activity, NewInferenceKey, Totals};
use crate::billing::money::MoneyError;
use crate::billing::Credits;
use crate::error::ApiError;
use crate::store::{KeyId, KeyKind, KeyPatch, KeyRecord};

const CREATE_FIELDS: &[&str] = &[
    "name",
    "credit_limit",
    "expires_at",
    "rate_limit_rpm",
    "clamp_max_tokens",
];
const PATCH_FIELDS: &[&str] = &[
    "name",
    "is_enabled",
    "credit_limit",
    "expires_at",
    "rate_limit_rpm",
    "clamp_max_tokens",
];

/// The key object of API.md; never any key material beyond the hint, except `key`
/// (the plaintext) in the answer to its creation.
#[derive(Serialize)]
pub struct KeyView {
    id: i64,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    created_at: String,
    expires_at: Option<String>,
    is_enabled: bool,
    /// A JSON number written from the exact decimal.
    credit_limit: Option<Box<RawValue>>,
    usage: String,
    limit_remaining: Option<String>,
    last_used_at: Option<String>,
    updated_at: String,
    hint: String,
    rate_limit_rpm: Option<i64>,
    clamp_max_tokens: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
}

/// An exact decimal written as a JSON number.
pub fn decimal_number(text: String) -> Option<Box<RawValue>> {
    RawValue::from_string(text).ok()
}

impl KeyView {
    pub fn new(key: &KeyRecord) -> Self {
        let remaining = key.credit_limit.map(|limit| {
            limit
                .saturating_sub(key.usage)
                .max(Credits::ZERO)
                .to_string()
        });
        KeyView {
            id: key.id.0,
            name: key.name.clone(),
            key: None,
            created_at: crate::rfc3339(key.created_at),
            expires_at: key.expires_at.map(crate::rfc3339),
            is_enabled: key.is_enabled,
            credit_limit: key
                .credit_limit
                .and_then(|c| decimal_number(c.to_decimal_string(1))),
            usage: key.usage.to_string(),
            limit_remaining: remaining,
            last_used_at: key.last_used_at.map(crate::rfc3339),
            updated_at: crate::rfc3339(key.updated_at),
            hint: key.hint.clone(),
            rate_limit_rpm: key.rate_limit_rpm,
            clamp_max_tokens: key.clamp_max_tokens,
            message: None,
        }
    }
}

fn parse_flag(name: &str, value: &Value) -> Result<bool, ApiError> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(ApiError::invalid_field(
            name,
            format!("'{name}' must be true or false, not {}.", type_name(other)),
        )),
    }
}

fn parse_name(value: &Value) -> Result<String, ApiError> {
    let Value::String(name) = value else {
        return Err(ApiError::invalid_field(
            "name",
            format!("'name' must be a string, not {}.", type_name(value)),
        ));
    };
    let length = name.chars().count();
    if name.trim().is_empty() || length > 255 {
        return Err(ApiError::invalid_field(
            "name",
            format!("'name' must be 1 to 255 characters long (got {length})."),
        ));
    }
    Ok(name.clone())
}

/// Reads `credit_limit` from the number as the client wrote it (`raw`), never through a
/// float: 12345678.123456789 is kept to the last digit, and anything finer than the money
/// unit, negative or above [`Credits::MAX_AMOUNT`] is refused.
fn parse_credit_limit(value: &Value, raw: Option<&RawValue>) -> Result<Option<Credits>, ApiError> {
    match value {
        Value::Null => return Ok(None),
        Value::Number(_) => {}
        other => {
            return Err(ApiError::invalid_field(
                "credit_limit",
                format!(
                    "'credit_limit' must be a number of credits (USD) or null, not {}.",
                    type_name(other)
                ),
            ))
        }
    }
    let Some(raw) = raw else {
        return Err(ApiError::internal("credit_limit parsed without its text"));
    };
    exact_credit_limit(raw.get()).map(Some)
}

/// The number text of `credit_limit`, read exactly.
fn exact_credit_limit(text: &str) -> Result<Credits, ApiError> {
    let text = text.trim();
    let shown = shorten(text);
    let refused = |why: String| ApiError::invalid_field("credit_limit", why);
    let limit = Credits::parse_amount(text).map_err(|e| match e {
        MoneyError::TooPrecise => refused(format!(
            "'credit_limit' has more than 9 decimal places; the smallest amount is 0.000000001 credits (got {shown})."
        )),
        MoneyError::TooLarge => refused(format!(
            "'credit_limit' is too large: the most is {} credits (got {shown}).",
            Credits::MAX_AMOUNT.to_decimal_string(0)
        )),
        MoneyError::NotDecimal => refused(format!(
            "'credit_limit' is not a decimal number of credits (got {shown})."
        )),
    })?;
    if limit.is_negative() {
        return Err(refused(format!(
            "'credit_limit' must be 0 or more (got {shown})."
        )));
    }
    Ok(limit)
}

/// A client's text as quoted in an error message: at most 40 characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

fn parse_expires_at(value: &Value) -> Result<Option<i64>, ApiError> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(text) => text,
        other => {
            return Err(ApiError::invalid_field(
                "expires_at",
                format!(
                    "'expires_at' must be an RFC 3339 time string or null, not {}.",
                    type_name(other)
                ),
            ))
        }
    };
    let at = crate::parse_rfc3339(text).ok_or_else(|| {
        ApiError::invalid_field(
            "expires_at",
            format!("'expires_at' is not an RFC 3339 time such as 2030-01-31T12:00:00Z: '{text}'."),
        )
    })?;
    if at <= crate::now() {
        return Err(ApiError::invalid_field(
            "expires_at",
            format!("'expires_at' must be in the future (got {text})."),
        ));
    }
    Ok(Some(at))
}

fn parse_rate_limit(value: &Value) -> Result<Option<i64>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(rpm) if rpm >= 1 => Ok(Some(rpm)),
            _ => Err(ApiError::invalid_field(
                "rate_limit_rpm",
                format!("'rate_limit_rpm' must be a whole number of requests per minute, 1 or more (got {n})."),
            )),
        },
        other => Err(ApiError::invalid_field(
            "rate_limit_rpm",
            format!("'rate_limit_rpm' must be a number or null, not {}.", type_name(other)),
        )),
    }
}

fn parse_key_id(text: &str) -> Result<KeyId, ApiError> {
    text.parse::<i64>().map(KeyId).map_err(|_| {
        ApiError::invalid_field(
            "id",
            format!("Key id must be an integer, such as /v1/account/keys/18 (got '{text}')."),
        )
    })
}

fn key_not_found(id: KeyId) -> ApiError {
    ApiError::not_found(
        "key_not_found",
        format!("No key with id {} in this account.", id.0),
    )
}

/// A JSON object body, parsed, and its bytes (money is read from their text).
async fn body_object(
    state: &AppState,
    body: Body,
) -> Result<(Map<String, Value>, bytes::Bytes), ApiError> {
    let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
    match json_object(&bytes) {
        Ok(map) => Ok((map, bytes)),
        Err(e) => {
            // A number past a float's range (1e400) fails the whole parse; when it is the
            // credit limit, the answer names it.
            if let Some(raw) = raw_member(&bytes, "credit_limit") {
                if serde_json::from_str::<Value>(raw.get()).is_err() {
                    exact_credit_limit(raw.get())?;
                }
            }
            Err(e)
        }
    }
}

/// `POST /v1/account/keys`
pub async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let (map, bytes) = body_object(&state, body).await?;
    only_fields(&map, CREATE_FIELDS)?;
    let name = match map.get("name") {
        Some(v) => parse_name(v)?,
        None => {
            return Err(ApiError::invalid_field(
                "name",
                "'name' is required: a label such as \"CI worker\".",
            ))
        }
    };
    let new = NewInferenceKey {
        name,
        credit_limit: map
            .get("credit_limit")
            .map(|v| parse_credit_limit(v, raw_member(&bytes, "credit_limit")))
            .transpose()?
            .flatten(),
        expires_at: map
            .get("expires_at")
            .map(parse_expires_at)
            .transpose()?
            .flatten(),
        rate_limit_rpm: map
            .get("rate_limit_rpm")
            .map(parse_rate_limit)
            .transpose()?
            .flatten(),
        clamp_max_tokens: map
            .get("clamp_max_tokens")
            .map(|v| parse_flag("clamp_max_tokens", v))
            .transpose()?
            .unwrap_or(false),
    };
    let (key, plaintext) = state
        .accounts
        .create_inference_key(owner.account_id, new)
        .await?;
    let view = KeyView {
        key: Some(plaintext),
        message: Some("Store this key securely. It will not be shown again."),
        ..KeyView::new(&key)
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The answer of `GET /v1/account/keys`. Serialized as it is: turned into a [`Value`]
/// first, each `credit_limit` would go through a float.
#[derive(Serialize)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

/// `GET /v1/account/keys`
pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<KeyList>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let keys = state
        .accounts
        .list_keys(owner.account_id, KeyKind::Inference)
        .await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(KeyView::new).collect(),
    }))
}

/// `GET /v1/account/keys/{id}`
pub async fn get_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_key_id(&id)?;
    let key = state
        .accounts
        .get_key(owner.account_id, id)
        .await?
        .ok_or_else(|| key_not_found(id))?;
    Ok(Json(KeyView::new(&key)))
}

/// `PATCH /v1/account/keys/{id}`: absent fields stay, `null` clears a nullable one.
pub async fn update_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<KeyView>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_key_id(&id)?;
    let (map, bytes) = body_object(&state, body).await?;
    only_fields(&map, PATCH_FIELDS)?;
    let is_enabled = map
        .get("is_enabled")
        .map(|v| parse_flag("is_enabled", v))
        .transpose()?;
    let patch = KeyPatch {
        name: map.get("name").map(parse_name).transpose()?,
        is_enabled,
        credit_limit: map
            .get("credit_limit")
            .map(|v| parse_credit_limit(v, raw_member(&bytes, "credit_limit")))
            .transpose()?,
        expires_at: map.get("expires_at").map(parse_expires_at).transpose()?,
        rate_limit_rpm: map
            .get("rate_limit_rpm")
            .map(parse_rate_limit)
            .transpose()?,
        clamp_max_tokens: map
            .get("clamp_max_tokens")
            .map(|v| parse_flag("clamp_max_tokens", v))
            .transpose()?,
    };
    let key = state
        .accounts
        .update_key(owner.account_id, id, &patch)
        .await?
        .ok_or_else(|| key_not_found(id))?;
    state.on_key_changed(&key).await;
    Ok(Json(KeyView::new(&key)))
}

/// `DELETE /v1/account/keys/{id}` → 204.
pub async fn delete_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_key_id(&id)?;
    if !state.accounts.delete_key(owner.account_id, id).await? {
        return Err(key_not_found(id));
    }
    state.on_key_deleted(owner.account_id, id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/account/balance`
pub async fn balance(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let account = state
        .accounts
        .account(owner.account_id)
        .await?
        .ok_or_else(|| ApiError::internal("provisioning key of a missing account"))?;
    Ok(Json(json!({"balance": account.balance().to_string()})))
}

fn totals_json(t: &Totals) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("total_cost".into(), t.cost.to_string().into());
    map.insert("total_input_tokens".into(), t.input_tokens.into());
    map.insert("total_output_tokens".into(), t.output_tokens.into());
    map
}

/// The extra counts of a day, a model or the total: requests charged for usage the
/// gateway counted, and requests served by a fallback (another model than asked for).
fn details_json(t: &Totals) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("estimated_requests".into(), t.estimated_requests.into());
    map.insert("fallback_requests".into(), t.fallback_requests.into());
    map
}

fn activity_json(a: &Activity) -> Value {
    let with = |first: (&str, Value), count_name: &str, t: &Totals| {
        let mut map = Map::new();
        map.insert(first.0.into(), first.1);
        map.insert(count_name.into(), t.requests.into());
        map.extend(totals_json(t));
        Value::Object(map)
    };
    let with_details = |first: (&str, Value), count_name: &str, t: &Totals| {
        let mut v = with(first, count_name, t);
        if let Value::Object(map) = &mut v {
            map.extend(details_json(t));
        }
        v
    };
    let mut total = Map::new();
    total.insert("total_requests".into(), a.total.requests.into());
    total.extend(totals_json(&a.total));
    total.extend(details_json(&a.total));
    json!({
        "period_days": a.period_days,
        "total_stats": total,
        "daily_stats": a.daily.iter()
            .map(|(day, t)| with_details(("date", day.clone().into()), "total_requests", t))
            .collect::<Vec<_>>(),
        "top_models": a.models.iter()
            .map(|(model, t)| with_details(("model_name", model.clone().into()), "request_count", t))
            .collect::<Vec<_>>(),
        "api_key_usage": a.keys.iter()
            .map(|(id, name, t)| {
                let mut v = with(("api_key_id", id.0.into()), "request_count", t);
                if let Value::Object(map) = &mut v {
                    map.insert("api_key_name".into(), name.clone().into());
                }
                v
            })
            .collect::<Vec<_>>(),
    })
}

/// `GET /v1/account/activity?days=N` (1–30, default 30).
pub async fn activity(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let days = match query.get("days") {
        None => 30,
        Some(text) => match text.parse::<u32>() {
            Ok(d) if (1..=30).contains(&d) => d,
            _ => {
                return Err(ApiError::invalid_field(
                    "days",
                    format!("'days' must be a whole number from 1 to 30 (got '{text}')."),
                ))
            }
        },
    };
    let activity = state.accounts.activity(owner.account_id, days).await?;
    Ok(Json(activity_json(&activity)))
}

/// `GET /v1/key`: the calling inference key's own object.
pub async fn own_key(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.auth.inference(&headers).await?;
    let fresh = state
        .accounts
        .get_key(key.account_id, key.id)
        .await?
        .ok_or_else(|| ApiError::from(crate::auth::AuthError::Deleted))?;
    Ok(Json(KeyView::new(&fresh)))
}
