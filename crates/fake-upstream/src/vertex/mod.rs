//! Google Vertex AI, as `{region}-aiplatform.googleapis.com` and Google's OAuth token
//! endpoint answer:
//!
//! - `POST /token` (form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`):
//!   the JWT's RS256 signature is verified with the test service account's public key
//!   ([`TEST_VERTEX_PRIVATE_KEY_PEM`]'s other half), its `iss` must be
//!   [`TEST_VERTEX_CLIENT_EMAIL`], its `aud` this endpoint, its `scope` the
//!   `cloud-platform` scope and `exp` in the future; then a fresh access token is issued
//!   for [`crate::Options::vertex_token_lifetime`] (`expires_in`). Refusals are Google's
//!   `{"error": "invalid_grant", "error_description": …}`.
//! - `POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`
//!   and `:streamRawPredict`: Anthropic's Messages body with `anthropic_version:
//!   "vertex-2023-10-16"` and no `model` (answered as the fake's `/v1/messages`).
//! - `…/publishers/google/models/{model}:generateContent` and `:streamGenerateContent`:
//!   the fake's Gemini API.
//!
//! Every Vertex path wants `Authorization: Bearer` with an unexpired token this fake
//! issued, or [`crate::Options::vertex_access_token`]; else Google's 401
//! `UNAUTHENTICATED`.

mod test_key;
mod token;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

pub use test_key::{TEST_VERTEX_CLIENT_EMAIL, TEST_VERTEX_PRIVATE_KEY_PEM};
pub(crate) use token::{issue, Tokens};

use crate::gemini::{self, Params};
use crate::http::Ctx;
use crate::Shared;

/// The `anthropic_version` Vertex takes.
const VERSION: &str = "vertex-2023-10-16";

fn unauthenticated() -> Response {
    gemini::error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.")
}

/// `POST /v1/projects/{project}/locations/{region}/publishers/{publisher}/models/{target}`.
pub(crate) async fn handle(
    State(s): State<Arc<Shared>>,
    Path((_project, _region, publisher, target)): Path<(String, String, String, String)>,
    Query(params): Query<Params>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    let bearer = ctx
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = bearer
        .is_some_and(|t| s.opts.vertex_access_token.as_deref() == Some(t) || s.tokens.valid(t));
    if !valid {
        return unauthenticated();
    }
    let result = match publisher.as_str() {
        "anthropic" => anthropic(&s, &ctx, &target, &body).await,
        "google" => gemini::run(&s, &target, &params, &ctx, &body, false).await,
        _ => Err(gemini::error(404, "Publisher model not found.")),
    };
    match result {
        Ok(r) | Err(r) => r,
    }
}

async fn anthropic(
    s: &Arc<Shared>,
    ctx: &Ctx,
    target: &str,
    body: &Bytes,
) -> Result<Response, Response> {
    let Some((model, method)) = target.split_once(':') else {
        return Err(gemini::error(404, "Method not found."));
    };
    let streamed = match method {
        "rawPredict" => false,
        "streamRawPredict" => true,
        _ => return Err(gemini::error(404, &format!("Method not found: {method}."))),
    };
    let mut req: Value = serde_json::from_slice(body).map_err(|e| {
        crate::error::anthropic(
            axum::http::StatusCode::BAD_REQUEST,
            &format!("invalid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = &mut req else {
        return Err(gemini::error(
            400,
            "The request body must be a JSON object.",
        ));
    };
    if map.contains_key("model") {
        return Err(crate::error::anthropic(
            axum::http::StatusCode::BAD_REQUEST,
            "model: Extra inputs are not permitted",
        ));
    }
    if map
        .remove("anthropic_version")
        .and_then(|v| v.as_str().map(str::to_string))
        .as_deref()
        != Some(VERSION)
    {
        return Err(crate::error::anthropic(
            axum::http::StatusCode::BAD_REQUEST,
            &format!("anthropic_version: Input should be '{VERSION}'"),
        ));
    }
    let stream_flag = map.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream_flag != streamed {
        return Err(crate::error::anthropic(
            axum::http::StatusCode::BAD_REQUEST,
            "stream: must be true with streamRawPredict and false or absent with rawPredict",
        ));
    }
    map.insert("model".into(), model.into());
    // The Messages handler serves it with its own credentials; the rest of the request's
    // headers stay, so an error that quotes them (`echo_headers`) quotes what Vertex got.
    let mut headers = ctx.headers.clone();
    let key = s
        .opts
        .anthropic_api_key
        .clone()
        .unwrap_or_else(|| "vertex".into());
    if let Ok(value) = HeaderValue::from_str(&key) {
        headers.insert("x-api-key", value);
    }
    headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    let inner = Ctx {
        headers,
        conn: ctx.conn.clone(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&req).unwrap_or_default());
    crate::messages::run(s, &inner, &bytes).await
}
