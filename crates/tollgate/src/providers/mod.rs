//! Upstream providers: the adapter trait with one adapter per provider kind (its URLs, its
//! authentication, the wire format it speaks per endpoint, its stream framing and how its
//! failures are classified), the client headers each kind receives, the pooled HTTP client
//! that sends one attempt, and the typed error of an attempt. The gateway never matches on provider kinds; it asks the adapter.

mod anthropic;
mod azure;
mod client;
mod error;
mod headers;
mod openai;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;
use tollgate_formats::{Format, SseDecoder};

pub use client::{
    chunks, ProviderClient, UpstreamBody, UpstreamChunks, UpstreamResponse, Upstreams,
};
pub use error::{StatusClass, UpstreamError};
pub use headers::ClientHeaders;

use crate::config::{Endpoint, Provider, ProviderKind};

/// How a provider serves one client endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// The provider's endpoint the request is sent to.
    pub endpoint: Endpoint,
    /// The text-generation format spoken there; `None` for embeddings, images, audio
    /// and moderations, which are passed through in OpenAI's format.
    pub format: Option<Format>,
}

/// What one provider kind knows about itself.
pub trait Adapter: Send + Sync {
    /// How the provider serves a client endpoint, or `None` when it cannot.
    fn wire(&self, endpoint: Endpoint) -> Option<Wire>;

    /// The URL of one of the provider's endpoints for a model (some providers put the
    /// model or deployment in the path).
    fn url(&self, endpoint: Endpoint, upstream_model: &str) -> String;

    /// Headers sent with every request: authentication (marked sensitive, so that no
    /// log shows them) and API versions.
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)>;

    /// A decoder of the provider's event streams into events.
    fn stream_decoder(&self, max_frame_bytes: usize) -> SseDecoder {
        SseDecoder::new(max_frame_bytes)
    }

    /// Classifies a non-2xx answer from its status, headers and (the start of) its body.
    fn refusal(
        &self,
        provider: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> UpstreamError {
        UpstreamError::from_status(provider, status, headers, error_message(body))
    }
}

/// The adapter of a configured provider.
pub fn adapter(provider: &Provider) -> Box<dyn Adapter> {
    match provider.kind {
        ProviderKind::Openai => Box::new(openai::OpenAi::new(provider)),
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(provider)),
        ProviderKind::Azure => Box::new(azure::Azure::new(provider)),
    }
}

/// Checks that every deployment's provider can serve every endpoint its model lists (an
/// Anthropic provider has no embeddings, say): the error names the model, the provider
/// and the endpoint.
pub fn check_catalog(config: &crate::config::Config) -> Result<(), String> {
    for model in &config.models {
        for deployment in &model.deployments {
            let provider = &config.providers[deployment.provider];
            let adapter = adapter(provider);
            for &endpoint in &model.endpoints {
                let Some(wire) = adapter.wire(endpoint) else {
                    return Err(format!(
                        "the model '{}' lists the endpoint {}, which its provider '{}' ({:?}) cannot serve; remove it from the model's `endpoints`",
                        model.id,
                        endpoint.name(),
                        provider.name,
                        provider.kind
                    ));
                };
                // Uploads are passed through: the provider must take them as they are.
                if endpoint.is_upload() && wire.format.is_some() {
                    return Err(format!(
                        "the model '{}' lists the upload endpoint {}, which its provider '{}' cannot take",
                        model.id,
                        endpoint.name(),
                        provider.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The `error.message` of an OpenAI- or Anthropic-shaped error body.
fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// A header value holding a secret: marked sensitive so that no log prints it.
fn secret_header(text: String) -> Option<HeaderValue> {
    HeaderValue::from_str(&text).ok().map(|mut value| {
        value.set_sensitive(true);
        value
    })
}
