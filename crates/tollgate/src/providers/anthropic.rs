//! Anthropic's native Messages API: `x-api-key` and `anthropic-version` headers, and only
//! the Messages endpoint (Chat Completions and Responses clients are translated to it).

use axum::http::{HeaderName, HeaderValue};
use tollgate_formats::Format;

use super::{secret_header, Adapter, Wire};
use crate::config::{Endpoint, Provider, Secret};

/// The Anthropic adapter.
pub struct Anthropic {
    base_url: String,
    api_key: Option<Secret>,
    version: String,
}

impl Anthropic {
    pub fn new(provider: &Provider) -> Self {
        Anthropic {
            base_url: provider.base_url.clone(),
            api_key: provider.api_key.clone(),
            version: provider.anthropic_version.clone(),
        }
    }
}

impl Adapter for Anthropic {
    fn wire(&self, endpoint: Endpoint, _upstream_model: &str) -> Option<Wire> {
        match endpoint {
            Endpoint::Messages | Endpoint::ChatCompletions | Endpoint::Responses => Some(Wire {
                endpoint: Endpoint::Messages,
                format: Some(Format::AnthropicMessages),
            }),
            _ => None,
        }
    }

    fn url(&self, endpoint: Endpoint, _upstream_model: &str) -> String {
        format!("{}{}", self.base_url, endpoint.path())
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if let Ok(version) = HeaderValue::from_str(&self.version) {
            headers.push((HeaderName::from_static("anthropic-version"), version));
        }
        if let Some(value) = self
            .api_key
            .as_ref()
            .and_then(|key| secret_header(key.expose().to_string()))
        {
            headers.push((HeaderName::from_static("x-api-key"), value));
        }
        headers
    }
}
