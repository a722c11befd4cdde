//! Public and operational handlers: `/v1/models`, `/v1/startups`, health.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::account::decimal_number;
use super::AppState;
use crate::config::Model;
use crate::error::ApiError;

/// Prices as exact decimal JSON numbers, in a fixed order.
struct PricingView(Vec<(&'static str, Box<RawValue>)>);

impl Serialize for PricingView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct ModelView<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'a str,
    display_name: &'a str,
    context_window: Option<u64>,
    max_output_tokens: Option<u64>,
    supported_endpoints: Vec<&'static str>,
    pricing: PricingView,
}

fn model_view(model: &Model) -> ModelView<'_> {
    let p = &model.pricing;
    let mut pricing = Vec::new();
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
        if let Some(number) = price.and_then(|p| decimal_number(p.usd_per_unit())) {
            pricing.push((name, number));
        }
    }
    ModelView {
        id: &model.id,
        object: "model",
        created: model.created,
        owned_by: &model.owned_by,
        display_name: &model.display_name,
        context_window: model.context_window,
        max_output_tokens: model.max_output_tokens,
        supported_endpoints: model.endpoints.iter().map(|e| e.name()).collect(),
        pricing: PricingView(pricing),
    }
}

/// `GET /v1/models`: anonymous, or with an inference key (which must then be valid).
pub async fn models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if headers.contains_key("authorization") || headers.contains_key("x-api-key") {
        state.auth.inference(&headers).await?;
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<ModelView<'a>>,
    }
    let data = state.config.models.iter().map(|m| model_view(m)).collect();
    Ok(Json(List {
        object: "list",
        data,
    })
    .into_response())
}

/// `GET /v1/startups`: operator-configured public metadata.
pub async fn startups(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": state.config.startups}))
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the usage writer takes records in time, and the database answers
/// (within the ledger's bound). While the writer is stuck, 503 names it with its
/// backlog, the age of its oldest pending batch and what its commits run into.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let writer = state.writer.status();
    if writer.stuck {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "unavailable", "reason": "usage_writer", "usage_writer": writer}),
            ),
        );
    }
    let ping = tokio::time::timeout(state.writer.wait_bound(), state.store.ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        failed => {
            match failed {
                Ok(Err(e)) => tracing::warn!(error = %e, "readiness check failed"),
                _ => tracing::warn!("readiness check failed: the database did not answer in time"),
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "database"})),
            )
        }
    }
}
