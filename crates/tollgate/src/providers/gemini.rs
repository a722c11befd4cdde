//! Google's Gemini API (AI Studio): `POST {base_url}/models/{model}:generateContent`,
//! streamed at `:streamGenerateContent?alt=sse`, embeddings at `:batchEmbedContents`, the
//! key in `x-goog-api-key`. Chat Completions, Messages and Responses clients reach it
//! through Chat Completions (the hub): the request is translated to Gemini's by
//! `tollgate_formats::conversion::gemini`, its answers and streams back, before metering.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;
use tollgate_formats::conversion::gemini::{self, AnswerError};
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::conversion::Converted;
use tollgate_formats::{ConversionError, Format};

use super::{error_message, secret_header, Adapter, Native, UpstreamError, Wire};
use crate::config::{Endpoint, Provider, Secret};

/// The Gemini adapter.
pub struct Gemini {
    base_url: String,
    api_key: Option<Secret>,
}

impl Gemini {
    pub fn new(provider: &Provider) -> Self {
        Gemini {
            base_url: provider.base_url.clone(),
            api_key: provider.api_key.clone(),
        }
    }
}

impl Adapter for Gemini {
    fn wire(&self, endpoint: Endpoint, _upstream_model: &str) -> Option<Wire> {
        match endpoint {
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => Some(Wire {
                endpoint: Endpoint::ChatCompletions,
                format: Some(Format::ChatCompletions),
            }),
            Endpoint::Embeddings => Some(Wire {
                endpoint,
                format: None,
            }),
            _ => None,
        }
    }

    fn url(&self, endpoint: Endpoint, upstream_model: &str) -> String {
        let method = match endpoint {
            Endpoint::Embeddings => "batchEmbedContents",
            _ => "generateContent",
        };
        format!("{}/models/{upstream_model}:{method}", self.base_url)
    }

    fn stream_url(&self, endpoint: Endpoint, upstream_model: &str) -> Option<String> {
        (endpoint == Endpoint::ChatCompletions).then(|| {
            format!(
                "{}/models/{upstream_model}:streamGenerateContent?alt=sse",
                self.base_url
            )
        })
    }

    fn native(&self, _upstream_model: &str) -> Option<&dyn Native> {
        Some(self)
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.api_key
            .as_ref()
            .and_then(|key| secret_header(key.expose().to_string()))
            .map(|value| (HeaderName::from_static("x-goog-api-key"), value))
            .into_iter()
            .collect()
    }

    /// Gemini refuses a bad key with a 400 (`API_KEY_INVALID`): that is the operator's
    /// credentials, classified as a 401.
    fn refusal(
        &self,
        provider: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> UpstreamError {
        let bad_key = serde_json::from_slice::<Value>(body).ok().is_some_and(|v| {
            v.pointer("/error/details")
                .and_then(Value::as_array)
                .is_some_and(|details| {
                    details
                        .iter()
                        .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
                })
        });
        let status = if bad_key {
            StatusCode::UNAUTHORIZED
        } else {
            status
        };
        UpstreamError::from_status(provider, status, headers, error_message(body))
    }
}

impl Native for Gemini {
    fn request(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        upstream_model: &str,
    ) -> Result<Converted, ConversionError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| ConversionError::new("", format!("the request is not JSON: {e}")))?;
        match endpoint {
            Endpoint::Embeddings => gemini::embed::convert_request(&request, upstream_model),
            _ => gemini::request::convert(&request),
        }
    }

    fn answer(
        &self,
        endpoint: Endpoint,
        answer: &Value,
        public_model: &str,
        base64: bool,
    ) -> Result<Value, AnswerError> {
        match endpoint {
            Endpoint::Embeddings => gemini::embed::convert_answer(answer, public_model, base64)
                .map_err(|e| AnswerError::Malformed(e.to_string())),
            _ => gemini::answer::convert(
                answer,
                public_model,
                tollgate_formats::conversion::unix_now(),
            ),
        }
    }

    fn stream(&self, upstream_model: &str) -> Box<dyn NativeStream + Send> {
        Box::new(gemini::stream::GeminiStream::new(
            upstream_model,
            tollgate_formats::conversion::unix_now(),
        ))
    }
}
