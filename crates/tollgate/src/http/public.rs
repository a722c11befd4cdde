//! Public and operational handlers: `/v1/models`, `/v1/startups`, health.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::AppState;
use crate::billing::UnitPrice;
use crate::config::Model;

fn price_number(price: UnitPrice) -> Value {
    serde_json::from_str::<serde_json::Number>(&price.usd_per_unit())
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn model_json(model: &Model) -> Value {
    let p = &model.pricing;
    let mut pricing = Map::new();
    for (name, price) in [
        ("per_input_token", p.input),
        ("per_cached_input_token", p.cached_input),
        ("per_cache_write_token", p.cache_write),
        ("per_output_token", p.output),
        ("per_image", p.per_image),
        ("per_request", p.per_request),
        ("per_audio_second", p.per_audio_second),
        ("per_character", p.per_character),
    ] {
        if let Some(price) = price {
            pricing.insert(name.into(), price_number(price));
        }
    }
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "display_name": model.display_name,
        "context_window": model.context_window,
        "max_output_tokens": model.max_output_tokens,
        "supported_endpoints": model.endpoints.iter().map(|e| e.name()).collect::<Vec<_>>(),
        "pricing": pricing,
    })
}

/// `GET /v1/models`: anonymous, or with an inference key (which must then be valid).
pub async fn models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    if headers.contains_key("authorization") || headers.contains_key("x-api-key") {
        state.auth.inference(&headers).await?;
    }
    let data: Vec<Value> = state.config.models.iter().map(model_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/startups`: operator-configured public metadata.
pub async fn startups(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": state.config.startups}))
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers too.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "database"})),
            )
        }
    }
}
