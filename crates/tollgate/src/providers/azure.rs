//! Azure OpenAI: OpenAI's formats on Azure's URLs. With an `api_version`, the
//! deployment-in-the-path form (`{endpoint}/openai/deployments/{deployment}/chat/completions
//! ?api-version=…`, the deployment being the model's `upstream_model`; Responses, which
//! Azure serves without a deployment, at `{endpoint}/openai/responses?api-version=…`);
//! without one, the v1 form (`{endpoint}/openai/v1/…`, the model in the body).
//! Authentication is the `api-key` header, or `Authorization: Bearer` (an Entra ID token)
//! with `auth = "bearer"`.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, HeaderValue};
use tollgate_formats::Format;

use super::{secret_header, Adapter, Wire};
use crate::config::{Endpoint, Provider, Secret};

/// The Azure OpenAI adapter.
pub struct Azure {
    base_url: String,
    api_key: Option<Secret>,
    api_version: Option<String>,
    bearer: bool,
}

impl Azure {
    pub fn new(provider: &Provider) -> Self {
        Azure {
            base_url: provider.base_url.clone(),
            api_key: provider.api_key.clone(),
            api_version: provider.api_version.clone(),
            bearer: provider.bearer,
        }
    }
}

impl Adapter for Azure {
    fn wire(&self, endpoint: Endpoint, _upstream_model: &str) -> Option<Wire> {
        let format = match endpoint {
            Endpoint::ChatCompletions | Endpoint::Messages => {
                return Some(Wire {
                    endpoint: Endpoint::ChatCompletions,
                    format: Some(Format::ChatCompletions),
                })
            }
            Endpoint::Responses => Some(Format::Responses),
            Endpoint::Completions => Some(Format::ChatCompletions),
            Endpoint::Embeddings | Endpoint::ImagesGenerations => None,
            // Uploads, speech and moderations are not offered the same way on Azure.
            _ => return None,
        };
        Some(Wire { endpoint, format })
    }

    fn url(&self, endpoint: Endpoint, upstream_model: &str) -> String {
        match &self.api_version {
            Some(version) if endpoint == Endpoint::Responses => {
                format!("{}/openai/responses?api-version={}", self.base_url, version)
            }
            Some(version) => format!(
                "{}/openai/deployments/{}{}?api-version={}",
                self.base_url,
                upstream_model,
                endpoint.path(),
                version
            ),
            None => format!("{}/openai/v1{}", self.base_url, endpoint.path()),
        }
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let Some(key) = &self.api_key else {
            return Vec::new();
        };
        let header = if self.bearer {
            secret_header(format!("Bearer {}", key.expose())).map(|v| (AUTHORIZATION, v))
        } else {
            secret_header(key.expose().to_string()).map(|v| (HeaderName::from_static("api-key"), v))
        };
        header.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure(api_version: Option<&str>, bearer: bool) -> Azure {
        Azure {
            base_url: "https://res.openai.azure.com".into(),
            api_key: Some(Secret::new("k".into())),
            api_version: api_version.map(str::to_string),
            bearer,
        }
    }

    #[test]
    fn both_url_forms() {
        let dated = azure(Some("2024-10-21"), false);
        assert_eq!(
            dated.url(Endpoint::ChatCompletions, "gpt4o-east"),
            "https://res.openai.azure.com/openai/deployments/gpt4o-east/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            dated.url(Endpoint::Embeddings, "emb"),
            "https://res.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            dated.url(Endpoint::Responses, "gpt4o-east"),
            "https://res.openai.azure.com/openai/responses?api-version=2024-10-21"
        );
        let v1 = azure(None, false);
        assert_eq!(
            v1.url(Endpoint::ChatCompletions, "gpt-4o"),
            "https://res.openai.azure.com/openai/v1/chat/completions"
        );
    }

    #[test]
    fn api_key_or_bearer() {
        let key = azure(None, false).headers();
        assert_eq!(key.len(), 1);
        assert_eq!(key[0].0, "api-key");
        assert_eq!(key[0].1, "k");
        assert!(key[0].1.is_sensitive());
        let bearer = azure(None, true).headers();
        assert_eq!(bearer[0].0, AUTHORIZATION);
        assert_eq!(bearer[0].1, "Bearer k");
        assert!(azure(None, false)
            .wire(Endpoint::AudioSpeech, "m")
            .is_none());
    }
}
