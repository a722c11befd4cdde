//! Upstream providers: the adapter trait with one adapter per provider kind (its URLs, its
//! authentication, the wire format it speaks per endpoint, its stream framing and how its
//! failures are classified), the client headers each kind receives, the pooled HTTP client
//! that sends one attempt, and the typed error of an attempt. The gateway never matches on provider kinds; it asks the adapter.

mod anthropic;
mod azure;
mod bedrock;
mod client;
mod error;
mod gemini;
mod google_auth;
mod headers;
mod openai;
mod sigv4;
mod vertex;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use bytes::Bytes;
use serde_json::Value;
use tollgate_formats::conversion::gemini::AnswerError;
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::conversion::Converted;
use tollgate_formats::eventstream::StreamDecoder;
use tollgate_formats::{ConversionError, Format, SseDecoder};

pub use client::{
    chunks, ProviderClient, UpstreamBody, UpstreamChunks, UpstreamResponse, Upstreams,
};
pub use error::{StatusClass, UpstreamError};
pub use headers::ClientHeaders;

use crate::config::{Endpoint, Provider, ProviderKind};
use crate::secrets::Scrubber;

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
    /// How the provider serves a client endpoint for a model, or `None` when it cannot
    /// (a cloud serves some models in one format and others in another).
    fn wire(&self, endpoint: Endpoint, upstream_model: &str) -> Option<Wire>;

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
    /// provider that speaks none of the client formats for this model (see [`Native`]).
    fn native(&self, _upstream_model: &str) -> Option<&dyn Native> {
        None
    }

    /// The body as the provider takes it, from the body in the wire's format (or the
    /// native one): a cloud names the model in the path and its API version (and, on
    /// Bedrock, the client's `forwarded` betas) in the body.
    fn upstream_body(
        &self,
        _wire: Wire,
        _upstream_model: &str,
        _stream: bool,
        body: Bytes,
        _forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<Bytes, ConversionError> {
        Ok(body)
    }

    /// Authentication computed per request (a signature over the body, a token that
    /// expires), for a provider whose [`headers`](Self::headers) cannot hold it.
    fn signer(&self) -> Option<&dyn Signer> {
        None
    }

    /// A decoder of the provider's event streams into events.
    fn stream_decoder(&self, max_frame_bytes: usize) -> StreamDecoder {
        StreamDecoder::Sse(SseDecoder::new(max_frame_bytes))
    }

    /// Whether an answer of this content type is an event stream.
    fn is_stream(&self, content_type: &str) -> bool {
        content_type.starts_with("text/event-stream")
    }

    /// Whether the provider's Messages endpoint has `/messages/count_tokens` beside it.
    fn counts_tokens(&self) -> bool {
        true
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

/// The headers a [`Signer`] adds, or why it could not.
pub type Signing<'a> = Pin<
    Box<dyn Future<Output = Result<Vec<(HeaderName, HeaderValue)>, UpstreamError>> + Send + 'a>,
>;

/// Per-request authentication (see [`Adapter::signer`]).
pub trait Signer: Send + Sync {
    /// The headers authenticating a POST of `body` to `uri`, sent with `content_type`.
    fn sign<'a>(
        &'a self,
        provider: &'a Arc<str>,
        uri: &'a Uri,
        content_type: &'a str,
        body: &'a [u8],
    ) -> Signing<'a>;
}

/// The adapter of a configured provider; `scrubber` learns the secrets it obtains at run
/// time.
pub fn adapter(provider: &Provider, scrubber: &Scrubber) -> Box<dyn Adapter> {
    match provider.kind {
        ProviderKind::Openai => Box::new(openai::OpenAi::new(provider)),
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(provider)),
        ProviderKind::Azure => Box::new(azure::Azure::new(provider)),
        ProviderKind::Gemini => Box::new(gemini::Gemini::new(provider)),
        ProviderKind::Bedrock => Box::new(bedrock::Bedrock::new(provider)),
        ProviderKind::Vertex => Box::new(vertex::Vertex::new(provider, scrubber)),
    }
}

/// Checks that every deployment's provider can serve every endpoint its model lists (an
/// Anthropic provider has no embeddings, say): the error names the model, the provider
/// and the endpoint.
pub fn check_catalog(config: &crate::config::Config) -> Result<(), String> {
    for model in &config.models {
        for deployment in &model.deployments {
            let provider = &config.providers[deployment.provider];
            let adapter = adapter(provider, &Scrubber::default());
            for &endpoint in &model.endpoints {
                let Some(wire) = adapter.wire(endpoint, &deployment.upstream_model) else {
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
