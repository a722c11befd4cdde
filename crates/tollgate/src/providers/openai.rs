//! OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, Ollama, Groq, Together):
//! bearer authentication, every endpoint under the base URL, and for servers without the
//! Responses API (`chat_only`) Responses requests translated to Chat Completions.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, HeaderValue};
use tollgate_formats::Format;

use super::{secret_header, Adapter, Wire};
use crate::config::{Endpoint, Provider, Secret};

/// The OpenAI adapter.
pub struct OpenAi {
    base_url: String,
    api_key: Option<Secret>,
    chat_only: bool,
}

impl OpenAi {
    pub fn new(provider: &Provider) -> Self {
        OpenAi {
            base_url: provider.base_url.clone(),
            api_key: provider.api_key.clone(),
            chat_only: provider.chat_only,
        }
    }
}

impl Adapter for OpenAi {
    fn wire(&self, endpoint: Endpoint, _upstream_model: &str) -> Option<Wire> {
        let chat = Wire {
            endpoint: Endpoint::ChatCompletions,
            format: Some(Format::ChatCompletions),
        };
        Some(match endpoint {
            Endpoint::ChatCompletions | Endpoint::Messages => chat,
            Endpoint::Responses if self.chat_only => chat,
            Endpoint::Responses => Wire {
                endpoint,
                format: Some(Format::Responses),
            },
            // Legacy completions: passed through, read like Chat Completions.
            Endpoint::Completions => Wire {
                endpoint,
                format: Some(Format::ChatCompletions),
            },
            _ => Wire {
                endpoint,
                format: None,
            },
        })
    }

    fn url(&self, endpoint: Endpoint, _upstream_model: &str) -> String {
        format!("{}{}", self.base_url, endpoint.path())
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.api_key
            .as_ref()
            .and_then(|key| secret_header(format!("Bearer {}", key.expose())))
            .map(|value| (AUTHORIZATION, value))
            .into_iter()
            .collect()
    }
}
