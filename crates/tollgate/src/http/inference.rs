//! Handlers of the model endpoints (inference key): thin shells over the gateway.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;

use super::extract::read_body;
use super::{AppState, RequestId};
use crate::config::Endpoint;
use crate::error::ApiError;
use crate::gateway::{error_for, Inbound};
use crate::observe::Observed;
use crate::providers::ClientHeaders;

async fn call(
    state: &AppState,
    request_id: RequestId,
    obs: Observed,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let key = state.auth.inference(headers).await?;
    state.limiter.check(&key, &request_id.0).await?;
    let inbound = Inbound {
        endpoint,
        headers: ClientHeaders::from_request(headers),
        key,
        request_id: request_id.0,
        started,
        obs: obs.0,
    };
    match endpoint {
        endpoint if endpoint.is_upload() => {
            state.gateway.multipart_call(inbound, headers, body).await
        }
        _ => {
            let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
            state.gateway.json_call(inbound, bytes).await
        }
    }
}

/// `POST /v1/messages/count_tokens`: free, but the key and its rate limit apply.
pub async fn count_tokens(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(obs): Extension<Observed>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let counted = async {
        let key = state.auth.inference(&headers).await?;
        state.limiter.check(&key, &request_id.0).await?;
        let inbound = Inbound {
            endpoint: Endpoint::Messages,
            headers: ClientHeaders::from_request(&headers),
            key,
            request_id: request_id.0.clone(),
            started: Instant::now(),
            obs: obs.0.clone(),
        };
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        state.gateway.count_tokens(inbound, bytes).await
    };
    match counted.await {
        Ok(response) => response,
        Err(error) => error_for(Endpoint::Messages, error),
    }
}

/// A handler for one endpoint.
pub async fn model_call(
    endpoint: Endpoint,
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(obs): Extension<Observed>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match call(&state, request_id, obs, endpoint, &headers, body).await {
        Ok(response) => response,
        Err(error) => error_for(endpoint, error),
    }
}
