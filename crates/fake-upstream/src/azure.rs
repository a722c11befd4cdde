//! Azure OpenAI: OpenAI's formats behind Azure's URLs and authentication.
//!
//! - `POST /openai/deployments/{deployment}/{chat/completions|completions|embeddings|
//!   images/generations}?api-version=V` and `POST /openai/responses?api-version=V`: the
//!   `api-version` query parameter is required (missing: Azure's 404 `Resource not
//!   found`; not one of [`API_VERSIONS`]: a 400 `API version not supported`). The
//!   deployment names the model: the body's `model` is replaced by it, as Azure ignores it.
//! - `POST /openai/v1/{chat/completions|completions|responses|embeddings|images/generations}`:
//!   the v1 form, no `api-version`, the model from the body.
//!
//! Authentication: `api-key: KEY`, or `Authorization: Bearer KEY` (an Entra ID token), `KEY`
//! being [`crate::Options::azure_api_key`]; without it or with another key, Azure's 401
//! (`Access denied due to invalid subscription key…`). When no Azure key is configured,
//! any key is accepted, but one must be sent.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::http::Ctx;
use crate::{chat, completions, embeddings, images, responses, Shared};

/// The dated API versions the fake accepts (Azure's GA and preview versions in use).
pub const API_VERSIONS: [&str; 6] = [
    "2024-06-01",
    "2024-10-21",
    "2025-01-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
    "preview",
];

type Params = std::collections::HashMap<String, String>;

/// Azure's error body: `{"error": {"code", "message"}}`.
fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Checks the `api-key` header or bearer token; on success the context the OpenAI
/// handlers expect (the fake's OpenAI key, when it has one, as the bearer).
fn authorized(s: &Shared, mut ctx: Ctx) -> Result<Ctx, Response> {
    let sent = ctx
        .headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            ctx.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let ok = match (&sent, &s.opts.azure_api_key) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(got), Some(want)) => got == want,
    };
    if !ok {
        return Err(azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        ));
    }
    ctx.headers.remove("api-key");
    ctx.headers.remove("authorization");
    if let Some(key) = &s.opts.openai_api_key {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
            ctx.headers.insert("authorization", value);
        }
    }
    Ok(ctx)
}

fn check_version(params: &Params) -> Result<(), Response> {
    match params.get("api-version") {
        None => Err(azure_error(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        )),
        Some(v) if API_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(_) => Err(azure_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "API version not supported",
        )),
    }
}

async fn dispatch(s: Arc<Shared>, ctx: Ctx, operation: &str, body: Bytes) -> Response {
    let state = State(s);
    match operation {
        "chat/completions" => chat::handle(state, ctx, body).await,
        "completions" => completions::handle(state, ctx, body).await,
        "embeddings" => embeddings::handle(state, ctx, body).await,
        "images/generations" => images::handle(state, ctx, body).await,
        "responses" => responses::handle(state, ctx, body).await,
        _ => azure_error(StatusCode::NOT_FOUND, "404", "Resource not found"),
    }
}

/// `POST /openai/deployments/{deployment}/{*operation}?api-version=…`.
pub(crate) async fn deployment(
    State(s): State<Arc<Shared>>,
    Path((deployment, operation)): Path<(String, String)>,
    Query(params): Query<Params>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    if let Err(r) = check_version(&params) {
        return r;
    }
    let ctx = match authorized(&s, ctx) {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    if operation == "responses" {
        return azure_error(StatusCode::NOT_FOUND, "404", "Resource not found");
    }
    // The deployment is the model, whatever the body says.
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut map)) => {
            map.insert("model".into(), Value::String(deployment));
            Bytes::from(serde_json::to_vec(&map).unwrap_or_default())
        }
        _ => body,
    };
    dispatch(s, ctx, &operation, body).await
}

/// `POST /openai/responses?api-version=…`.
pub(crate) async fn responses(
    State(s): State<Arc<Shared>>,
    Query(params): Query<Params>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    if let Err(r) = check_version(&params) {
        return r;
    }
    match authorized(&s, ctx) {
        Ok(ctx) => dispatch(s, ctx, "responses", body).await,
        Err(r) => r,
    }
}

/// `POST /openai/v1/{*operation}`.
pub(crate) async fn v1(
    State(s): State<Arc<Shared>>,
    Path(operation): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    match authorized(&s, ctx) {
        Ok(ctx) => dispatch(s, ctx, &operation, body).await,
        Err(r) => r,
    }
}
