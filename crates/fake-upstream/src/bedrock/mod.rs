//! AWS Bedrock Runtime, as `bedrock-runtime.{region}.amazonaws.com` answers it:
//! `POST /model/{modelId}/converse`, `/converse-stream`, `/invoke` and
//! `/invoke-with-response-stream`.
//!
//! - **SigV4**: every request's signature is computed again (see `sigv4.rs`) with the
//!   fake's key ([`crate::Options::aws_access_key_id`] / `aws_secret_access_key`, by
//!   default [`crate::TEST_AWS_ACCESS_KEY_ID`] / [`crate::TEST_AWS_SECRET_ACCESS_KEY`],
//!   service `bedrock`, any region); a missing one is AWS's 403
//!   `MissingAuthenticationTokenException`, a wrong one the 403 `InvalidSignatureException`
//!   ("The request signature we calculated does not match…"), an unknown key or session
//!   token the 403 `UnrecognizedClientException`.
//! - **Errors** are `{"message": …}` with `x-amzn-ErrorType: <Type>:http://internal.amazon.com/coral/com.amazon.bedrock/`:
//!   a bad body is the 400 `ValidationException`, `status=429` the `ThrottlingException`,
//!   `status=5xx` the `InternalServerException` (503: `ServiceUnavailableException`).
//! - **Converse** (see `converse.rs`) answers in Bedrock's shape with `usage`
//!   (`inputTokens` = `T - cached - cache_write`, `cacheReadInputTokens`,
//!   `cacheWriteInputTokens`, `outputTokens`, `totalTokens`) and `metrics.latencyMs`;
//!   streamed, event-stream messages `messageStart`, `contentBlockStart` (tool use),
//!   `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata` (usage and metrics),
//!   each payload with Bedrock's `p` padding.
//! - **InvokeModel** takes Anthropic's Messages body with `anthropic_version:
//!   "bedrock-2023-05-31"` and no `model` or `stream` (an extraneous key is a
//!   `ValidationException`) and answers as Anthropic does; streamed, each Anthropic event is
//!   an event-stream `chunk` of `{"bytes": base64 of the event JSON, "p": …}`, and
//!   `message_stop` carries `amazon-bedrock-invocationMetrics`.
//! - **Directives**: those of the other formats, and `bad_crc` (the stream's second message
//!   has a wrong CRC).

mod converse;
pub(crate) mod frames;
mod invoke;
pub(crate) mod sigv4;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::http::Ctx;
use crate::Shared;

/// AWS's error response.
pub(crate) fn error(status: u16, kind: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, axum::Json(json!({"message": message}))).into_response();
    let kind = format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/");
    if let Ok(value) = HeaderValue::from_str(&kind) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

/// A 400 `ValidationException`.
pub(crate) fn invalid(message: &str) -> Response {
    error(400, "ValidationException", message)
}

/// The error of a `status=N` directive, in AWS's shape.
pub(crate) fn injected(status: u16, retry_after: Option<u64>) -> Response {
    let (kind, message) = match status {
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request.",
        ),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "The requested resource was not found.",
        ),
        s if s >= 500 => (
            "InternalServerException",
            "The server encountered an error processing your request.",
        ),
        _ => (
            "ValidationException",
            "Fake upstream error injected by a [[fake:status]] directive.",
        ),
    };
    let mut response = error(status, kind, message);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The Unix time now, in seconds.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `POST /model/{modelId}/{operation}`.
pub(crate) async fn handle(
    State(s): State<Arc<Shared>>,
    Path((model, operation)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    let keys = sigv4::Keys {
        access_key_id: s
            .opts
            .aws_access_key_id
            .as_deref()
            .unwrap_or(crate::TEST_AWS_ACCESS_KEY_ID),
        secret_access_key: s
            .opts
            .aws_secret_access_key
            .as_deref()
            .unwrap_or(crate::TEST_AWS_SECRET_ACCESS_KEY),
        session_token: s.opts.aws_session_token.as_deref(),
        service: "bedrock",
    };
    if let Err(refusal) = sigv4::verify(&keys, &method, &uri, &ctx.headers, &body, now()) {
        let status = if refusal.kind == "IncompleteSignatureException" {
            400
        } else {
            403
        };
        return error(status, refusal.kind, &refusal.message);
    }
    let result = match operation.as_str() {
        "converse" => converse::run(&s, &ctx, &model, &body, false).await,
        "converse-stream" => converse::run(&s, &ctx, &model, &body, true).await,
        "invoke" => invoke::run(&s, &ctx, &model, &body, false).await,
        "invoke-with-response-stream" => invoke::run(&s, &ctx, &model, &body, true).await,
        _ => Err(error(
            404,
            "UnknownOperationException",
            "The requested operation is not recognized by the service.",
        )),
    };
    match result {
        Ok(r) | Err(r) => r,
    }
}

/// An event-stream response.
pub(crate) fn event_stream(body: axum::body::Body) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/vnd.amazon.eventstream",
        )],
        body,
    )
        .into_response()
}
