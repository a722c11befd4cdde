//! Upstream providers: the adapter trait with one adapter per provider kind (its URLs, its
//! authentication, the wire format it speaks per endpoint, its stream framing and how its
//! failures are classified), the client headers each kind receives, the pooled HTTP client
//! that sends one attempt, and the typed error of an attempt. The gateway never matches on provider kinds; it asks the adapter.

mod anthropic;
mod azure;
mod client;
mod error;
mod gemini;
mod headers;
mod openai;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;
use tollgate_formats::conversion::gemini::AnswerError;
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::conversion::Converted;
use tollgate_formats::{ConversionError, Format, SseDecoder};

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

    /// The URL of a streamed request, when the provider streams at another URL than it
    /// answers whole (Gemini's `streamGenerateContent`).
    fn stream_url(&self, _endpoint: Endpoint, _upstream_model: &str) -> Option<String> {
        None
    }

    /// The translation of the hub formats to the provider's own wire format, for a
    /// provider that speaks none of the client formats (see [`Native`]).
    fn native(&self) -> Option<&dyn Native> {
        None
    }

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

/// A provider with a wire format of its own: the gateway prepares a Chat Completions (or
/// OpenAI embeddings) request as for an OpenAI provider, this translates it, and reads the
/// provider's answers and streams back as Chat Completions, before any metering.
pub trait Native: Send + Sync {
    /// The provider's request for a hub request to `endpoint` (the wire's endpoint).
    fn request(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        upstream_model: &str,
    ) -> Result<Converted, ConversionError>;

    /// The hub answer of a whole answer; `base64` when the embeddings client asked for
    /// `encoding_format: "base64"`.
    fn answer(
        &self,
        endpoint: Endpoint,
        answer: &Value,
        public_model: &str,
        base64: bool,
    ) -> Result<Value, AnswerError>;

    /// A reader of one event stream as Chat Completions events.
    fn stream(&self, upstream_model: &str) -> Box<dyn NativeStream + Send>;
}

/// The adapter of a configured provider.
pub fn adapter(provider: &Provider) -> Box<dyn Adapter> {
    match provider.kind {
        ProviderKind::Openai => Box::new(openai::OpenAi::new(provider)),
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(provider)),
        ProviderKind::Azure => Box::new(azure::Azure::new(provider)),
        ProviderKind::Gemini => Box::new(gemini::Gemini::new(provider)),
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
