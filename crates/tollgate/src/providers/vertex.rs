//! Google Vertex AI, under `{base_url}/v1/projects/{project}/locations/{region}/publishers`,
//! with an OAuth bearer token (see `google_auth`). Per model:
//! - **Claude** (an upstream model id starting with `claude`): `anthropic/models/{model}:rawPredict`
//!   and `:streamRawPredict` with the Messages body itself — no `model`, `anthropic_version:
//!   "vertex-2023-10-16"`, `stream` kept — and Anthropic's answers and SSE streams.
//! - **Every other model** (Gemini): `google/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse`, translated from and to Chat Completions by the Gemini
//!   translation.

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, Uri};
use bytes::Bytes;
use tollgate_formats::{ConversionError, Format};

use super::bedrock::messages_body;
use super::gemini::Gemini;
use super::google_auth::Tokens;
use super::{secret_header, Adapter, Native, Signer, Signing, Wire};
use crate::config::{Endpoint, Provider};
use crate::secrets::Scrubber;

/// The `anthropic_version` Vertex's Claude models take in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The Vertex adapter.
pub struct Vertex {
    /// `{base_url}/v1/projects/{project}/locations/{region}/publishers`.
    publishers: String,
    gemini: Gemini,
    tokens: Tokens,
}

impl Vertex {
    pub fn new(provider: &Provider, scrubber: &Scrubber) -> Self {
        let cloud = &provider.cloud;
        Vertex {
            publishers: format!(
                "{}/v1/projects/{}/locations/{}/publishers",
                provider.base_url,
                cloud.project.as_deref().unwrap_or(""),
                cloud.region.as_deref().unwrap_or("")
            ),
            gemini: Gemini::new(provider),
            tokens: Tokens::new(provider, scrubber),
        }
    }
}

/// Whether Vertex serves a model as Anthropic's publisher.
pub fn is_claude(upstream_model: &str) -> bool {
    upstream_model.starts_with("claude")
}

impl Adapter for Vertex {
    fn wire(&self, endpoint: Endpoint, upstream_model: &str) -> Option<Wire> {
        if !matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses
        ) {
            return None;
        }
        Some(if is_claude(upstream_model) {
            Wire {
                endpoint: Endpoint::Messages,
                format: Some(Format::AnthropicMessages),
            }
        } else {
            Wire {
                endpoint: Endpoint::ChatCompletions,
                format: Some(Format::ChatCompletions),
            }
        })
    }

    fn url(&self, _endpoint: Endpoint, upstream_model: &str) -> String {
        if is_claude(upstream_model) {
            format!(
                "{}/anthropic/models/{upstream_model}:rawPredict",
                self.publishers
            )
        } else {
            format!(
                "{}/google/models/{upstream_model}:generateContent",
                self.publishers
            )
        }
    }

    fn stream_url(&self, _endpoint: Endpoint, upstream_model: &str) -> Option<String> {
        Some(if is_claude(upstream_model) {
            format!(
                "{}/anthropic/models/{upstream_model}:streamRawPredict",
                self.publishers
            )
        } else {
            format!(
                "{}/google/models/{upstream_model}:streamGenerateContent?alt=sse",
                self.publishers
            )
        })
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }

    fn native(&self, upstream_model: &str) -> Option<&dyn Native> {
        (!is_claude(upstream_model)).then_some(&self.gemini as &dyn Native)
    }

    fn upstream_body(
        &self,
        wire: Wire,
        _upstream_model: &str,
        stream: bool,
        body: Bytes,
        _forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<Bytes, ConversionError> {
        match wire.format {
            // Vertex takes the betas as the `anthropic-beta` header.
            Some(Format::AnthropicMessages) => {
                messages_body(&body, ANTHROPIC_VERSION, stream.then_some(true), &[])
            }
            _ => Ok(body),
        }
    }

    fn signer(&self) -> Option<&dyn Signer> {
        Some(self)
    }

    fn counts_tokens(&self) -> bool {
        false
    }
}

impl Signer for Vertex {
    fn sign<'a>(
        &'a self,
        provider: &'a Arc<str>,
        _uri: &'a Uri,
        _content_type: &'a str,
        _body: &'a [u8],
    ) -> Signing<'a> {
        Box::pin(async move {
            let token = self.tokens.token(provider).await?;
            Ok(token
                .and_then(|t| secret_header(format!("Bearer {}", t.expose())))
                .map(|value| (header::AUTHORIZATION, value))
                .into_iter()
                .collect())
        })
    }
}
