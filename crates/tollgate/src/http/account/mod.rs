//! Handlers of `/v1/account/*` (provisioning key) and `GET /v1/key` (inference key).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::extract::{json_object, only_fields, raw_member, read_body, type_name};
use super::AppState;
use crate::accounts::{Activity, NewInferenceKey, Totals};
use crate::billing::window::WindowUsage;
use crate::error::ApiError;
use crate::store::{AccountId, KeyId, KeyKind, KeyPatch, KeyRecord};

mod fields;
mod view;

pub(crate) use fields::{parse_name, CREATE_FIELDS, PATCH_FIELDS};
pub use view::{decimal_number, KeyView};

use fields::{
    exact_credit_limit, parse_allowed_models, parse_credit_limit, parse_expires_at, parse_flag,
    parse_limit_reset, parse_rate_limit,
};

/// Grace period of a rotated secret: by default a day, at most 30 days.
const DEFAULT_GRACE_SECONDS: i64 = 86_400;
const MAX_GRACE_SECONDS: i64 = 30 * 86_400;

/// The key object of `key` now, with its window usages read from the ledger.
async fn view_of(state: &AppState, key: &KeyRecord) -> Result<KeyView, ApiError> {
    let now = state.config.clock.now();
    let usage = state
        .accounts
        .window_usage(key.account_id, Some(key.id), now)
        .await?;
    Ok(KeyView::new(
        key,
        usage.get(&key.id).copied().unwrap_or_default(),
        now,
    ))
}

pub(crate) fn parse_key_id(text: &str) -> Result<KeyId, ApiError> {
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
pub(crate) async fn body_object(
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
    let view = create_key_from(&state, owner.account_id, &map, &bytes).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Creates an inference key of `account` from a `POST /v1/account/keys` body (`bytes` is
/// its text, `map` the parsed object): the key object with its plaintext, shown once.
pub async fn create_key_from(
    state: &AppState,
    account: AccountId,
    map: &Map<String, Value>,
    bytes: &[u8],
) -> Result<KeyView, ApiError> {
    only_fields(map, CREATE_FIELDS)?;
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
            .map(|v| parse_credit_limit(v, raw_member(bytes, "credit_limit")))
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
        limit_reset: map
            .get("limit_reset")
            .map(parse_limit_reset)
            .transpose()?
            .flatten(),
        allowed_models: map
            .get("allowed_models")
            .map(|v| parse_allowed_models(state, v))
            .transpose()?
            .flatten(),
        clamp_max_tokens: map
            .get("clamp_max_tokens")
            .map(|v| parse_flag("clamp_max_tokens", v))
            .transpose()?
            .unwrap_or(false),
    };
    let (key, plaintext) = state.accounts.create_inference_key(account, new).await?;
    Ok(KeyView {
        key: Some(plaintext),
        message: Some("Store this key securely. It will not be shown again."),
        ..KeyView::new(&key, WindowUsage::default(), state.config.clock.now())
    })
}

/// The answer of `GET /v1/account/keys`. Serialized as it is: turned into a [`Value`]
/// first, each `credit_limit` would go through a float.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

/// `GET /v1/account/keys`
pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<KeyList>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    Ok(Json(KeyList {
        keys: key_views(&state, owner.account_id).await?,
    }))
}

/// The key objects of an account's inference keys.
pub async fn key_views(state: &AppState, account: AccountId) -> Result<Vec<KeyView>, ApiError> {
    let keys = state
        .accounts
        .list_keys(account, KeyKind::Inference)
        .await?;
    let now = state.config.clock.now();
    let usage = state.accounts.window_usage(account, None, now).await?;
    Ok(keys
        .iter()
        .map(|k| KeyView::new(k, usage.get(&k.id).copied().unwrap_or_default(), now))
        .collect())
}

/// `GET /v1/account/keys/{id}`
pub async fn get_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_key_id(&id)?;
    Ok(Json(key_view(&state, owner.account_id, id).await?))
}

/// The key object of an inference key of `account` (404 for any other).
pub async fn key_view(
    state: &AppState,
    account: AccountId,
    id: KeyId,
) -> Result<KeyView, ApiError> {
    let key = state
        .accounts
        .get_key(account, id)
        .await?
        .ok_or_else(|| key_not_found(id))?;
    view_of(state, &key).await
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
    Ok(Json(
        update_key_from(&state, owner.account_id, id, &map, &bytes).await?,
    ))
}

/// Applies a `PATCH /v1/account/keys/{id}` body to a key of `account` (404 for any other).
pub async fn update_key_from(
    state: &AppState,
    account: AccountId,
    id: KeyId,
    map: &Map<String, Value>,
    bytes: &[u8],
) -> Result<KeyView, ApiError> {
    only_fields(map, PATCH_FIELDS)?;
    let is_enabled = map
        .get("is_enabled")
        .map(|v| parse_flag("is_enabled", v))
        .transpose()?;
    let patch = KeyPatch {
        name: map.get("name").map(parse_name).transpose()?,
        is_enabled,
        credit_limit: map
            .get("credit_limit")
            .map(|v| parse_credit_limit(v, raw_member(bytes, "credit_limit")))
            .transpose()?,
        expires_at: map.get("expires_at").map(parse_expires_at).transpose()?,
        rate_limit_rpm: map
            .get("rate_limit_rpm")
            .map(parse_rate_limit)
            .transpose()?,
        limit_reset: map.get("limit_reset").map(parse_limit_reset).transpose()?,
        allowed_models: map
            .get("allowed_models")
            .map(|v| parse_allowed_models(state, v))
            .transpose()?,
        clamp_max_tokens: map
            .get("clamp_max_tokens")
            .map(|v| parse_flag("clamp_max_tokens", v))
            .transpose()?,
    };
    let key = state
        .accounts
        .update_key(account, id, &patch)
        .await?
        .ok_or_else(|| key_not_found(id))?;
    state.on_key_changed(&key).await;
    view_of(state, &key).await
}

/// `POST /v1/account/keys/{id}/rotate`, body `{"grace_seconds": N}` or empty: a new
/// secret for the same key (shown once); the old one works for the grace period.
pub async fn rotate_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<KeyView>, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_key_id(&id)?;
    let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
    let grace = if bytes.iter().all(u8::is_ascii_whitespace) {
        DEFAULT_GRACE_SECONDS
    } else {
        let map = json_object(&bytes)?;
        only_fields(&map, &["grace_seconds"])?;
        match map.get("grace_seconds") {
            None | Some(Value::Null) => DEFAULT_GRACE_SECONDS,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(s) if (0..=MAX_GRACE_SECONDS).contains(&s) => s,
                _ => {
                    return Err(ApiError::invalid_field(
                        "grace_seconds",
                        format!("'grace_seconds' must be a whole number of seconds from 0 to {MAX_GRACE_SECONDS} (30 days) (got {n})."),
                    ))
                }
            },
            Some(other) => {
                return Err(ApiError::invalid_field(
                    "grace_seconds",
                    format!("'grace_seconds' must be a number, not {}.", type_name(other)),
                ))
            }
        }
    };
    let (key, plaintext) = state
        .accounts
        .rotate_key(owner.account_id, id, grace)
        .await?
        .ok_or_else(|| key_not_found(id))?;
    state.on_key_changed(&key).await;
    let view = view_of(&state, &key).await?;
    Ok(Json(KeyView {
        key: Some(plaintext),
        message: Some("Store this key securely. It will not be shown again."),
        ..view
    }))
}

/// `DELETE /v1/account/keys/{id}` → 204.
pub async fn delete_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    let id = parse_key_id(&id)?;
    delete_key_of(&state, owner.account_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an inference key of `account` (404 for any other); it stops working at once.
pub async fn delete_key_of(
    state: &AppState,
    account: AccountId,
    id: KeyId,
) -> Result<(), ApiError> {
    if !state.accounts.delete_key(account, id).await? {
        return Err(key_not_found(id));
    }
    state.on_key_deleted(account, id).await;
    Ok(())
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
    Ok(Json(view_of(&state, &fresh).await?))
}
