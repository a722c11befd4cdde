//! Public and operational handlers: `/v1/models` and `/v1/models/{id}` (in Anthropic's
//! shapes when the request carries `anthropic-version`), `/v1/startups`, health.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::account::decimal_number;
use super::AppState;
use std::sync::Arc;

use crate::config::Model;
use crate::error::{ApiError, Shape};
use crate::gateway::unknown_model;
use crate::store::KeyRecord;

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

/// Anthropic's model object.
#[derive(Serialize)]
struct AnthropicModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    display_name: &'a str,
    created_at: String,
}

fn anthropic_model(model: &Model) -> AnthropicModel<'_> {
    AnthropicModel {
        kind: "model",
        id: &model.id,
        display_name: &model.display_name,
        created_at: crate::rfc3339(model.created),
    }
}

/// Whether the request speaks Anthropic's API (its SDK sends `anthropic-version`).
fn anthropic(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

/// The key check of the model listings: anonymous, or a valid inference key, whose
/// allow-list (if any) then limits what is listed.
async fn optional_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<KeyRecord>>, ApiError> {
    if headers.contains_key("authorization") || headers.contains_key("x-api-key") {
        return Ok(Some(state.auth.inference(headers).await?));
    }
    Ok(None)
}

/// Whether the caller (anonymous, or a key) sees `model` in the catalog.
fn visible(key: &Option<Arc<KeyRecord>>, model: &Model) -> bool {
    key.as_ref().is_none_or(|k| k.may_use(&model.id))
}

/// `GET /v1/models/{id}`: one model of the catalog (ids may hold `/`); a 404 names it.
pub async fn model(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let shape = if anthropic(&headers) {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    };
    let key = match optional_key(&state, &headers).await {
        Ok(key) => key,
        Err(e) => return e.into_response_for(shape),
    };
    // A model the key may not use is not in its catalog: the same 404 as an unknown one.
    match state.config.model(&id).filter(|m| visible(&key, m)) {
        None => unknown_model(&id).into_response_for(shape),
        Some(model) if shape == Shape::Anthropic => Json(anthropic_model(model)).into_response(),
        Some(model) => Json(model_view(model)).into_response(),
    }
}

/// `GET /v1/models`: anonymous, or with an inference key (which must then be valid).
pub async fn models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = optional_key(&state, &headers).await?;
    let models: Vec<&Arc<Model>> = state
        .config
        .models
        .iter()
        .filter(|m| visible(&key, m))
        .collect();
    if anthropic(&headers) {
        #[derive(Serialize)]
        struct AnthropicList<'a> {
            data: Vec<AnthropicModel<'a>>,
            has_more: bool,
            first_id: Option<&'a str>,
            last_id: Option<&'a str>,
        }
        return Ok(Json(AnthropicList {
            data: models.iter().map(|m| anthropic_model(m)).collect(),
            has_more: false,
            first_id: models.first().map(|m| m.id.as_str()),
            last_id: models.last().map(|m| m.id.as_str()),
        })
        .into_response());
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<ModelView<'a>>,
    }
    let data = models.iter().map(|m| model_view(m)).collect();
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

/// What `tollgate models list` prints: a table (id, providers, endpoints, USD per million
/// input / cached input / output tokens), or with `json` the `GET /v1/models` objects, each
/// with the names of the providers that serve it.
pub fn models_listing(config: &crate::config::Config, json: bool) -> String {
    let providers = |model: &Model| -> Vec<&str> {
        model
            .deployments
            .iter()
            .map(|d| config.providers[d.provider].name.as_str())
            .collect()
    };
    if json {
        // Written as text: the prices stay the exact decimals `GET /v1/models` sends.
        let list: Vec<String> = config
            .models
            .iter()
            .map(|m| {
                let mut view = serde_json::to_string(&model_view(m)).unwrap_or_default();
                view.pop();
                view.push_str(&format!(",\"providers\":{}}}", json!(providers(m))));
                view
            })
            .collect();
        return format!("{{\"object\":\"list\",\"data\":[{}]}}", list.join(","));
    }
    // Per million tokens: femto-USD per token are nano-USD per million.
    let per_million = |p: Option<crate::billing::UnitPrice>| {
        p.map_or("-".to_string(), |p| {
            crate::billing::Credits::from_nanos(p.femtos()).to_decimal_string(2)
        })
    };
    let mut out = format!(
        "{:<28} {:<16} {:>10} {:>10} {:>10}  endpoints\n",
        "model", "provider", "input", "cached", "output"
    );
    for m in &config.models {
        out.push_str(&format!(
            "{:<28} {:<16} {:>10} {:>10} {:>10}  {}\n",
            m.id,
            providers(m).join(","),
            per_million(m.pricing.input),
            per_million(m.pricing.cached_input),
            per_million(m.pricing.output),
            m.endpoints
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    out.push_str("(USD per million tokens)");
    out
}
