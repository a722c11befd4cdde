//! Sending a prepared request upstream: an answer with a 2xx status, or the attempt's
//! typed failure (a non-2xx answer is read, at most 64 KB, and classified by the adapter).

use axum::http::StatusCode;

use super::plan::Prepared;
use super::relay::json::read_limited;
use crate::providers::{UpstreamBody, UpstreamError, UpstreamResponse, Upstreams};

/// Most of an error body read to classify it.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Sends `prepared` once; a connection failure or a provider failure before any answer
/// is tried once more (the body is buffered, so it can be sent again).
pub(super) async fn send(
    upstreams: &Upstreams,
    prepared: &Prepared,
) -> Result<UpstreamResponse, UpstreamError> {
    let mut last = None;
    for _ in 0..2 {
        match send_once(upstreams, prepared).await {
            Ok(response) => return Ok(response),
            Err(e) if worth_retrying(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| UpstreamError::malformed("", "no attempt")))
}

/// A failure the same provider may not repeat: no connection, a broken one, no first
/// byte, or a gateway error of its own (502-504).
fn worth_retrying(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Status { status, .. } => matches!(status.as_u16(), 502..=504),
        UpstreamError::Malformed { .. } => false,
        _ => true,
    }
}

async fn send_once(
    upstreams: &Upstreams,
    prepared: &Prepared,
) -> Result<UpstreamResponse, UpstreamError> {
    let deployment = prepared.deployment();
    let response = upstreams
        .send(
            deployment,
            prepared.wire.endpoint,
            "application/json",
            UpstreamBody::Bytes(prepared.body.clone()),
        )
        .await?;
    if response.status().is_success() {
        return Ok(response);
    }
    Err(refusal(upstreams, deployment, response).await)
}

/// Reads and classifies a non-2xx answer.
pub(super) async fn refusal(
    upstreams: &Upstreams,
    deployment: &crate::config::Deployment,
    response: UpstreamResponse,
) -> UpstreamError {
    let provider = upstreams.provider(deployment);
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_limited(response, MAX_ERROR_BODY, provider.config.idle_timeout)
        .await
        .unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::error!(provider = %provider.config.name, status = status.as_u16(), "the provider refused Tollgate's credentials");
    }
    provider
        .adapter
        .refusal(&provider.config.name, status, &headers, &body)
}
