//! AWS Bedrock (`bedrock-runtime`), signed with SigV4 (service `bedrock`, the provider's
//! region, the standard AWS credentials). Per model:
//! - **Anthropic models** (an upstream model id starting with `anthropic.`, or with a
//!   cross-region prefix such as `us.anthropic.` or `global.anthropic.`) through
//!   `InvokeModel` (`/model/{id}/invoke`) and `InvokeModelWithResponseStream`
//!   (`/invoke-with-response-stream`) with the Messages body itself — no `model` or
//!   `stream` field, `anthropic_version: "bedrock-2023-05-31"` — so `/v1/messages` is a near
//!   pass-through; stream chunks are event-stream messages wrapping Anthropic's own events.
//! - **Every other model** through `Converse` (`/model/{id}/converse`) and `ConverseStream`
//!   (`/converse-stream`), translated from and to Chat Completions (the hub) by
//!   `tollgate_formats::conversion::bedrock`.
//!
//! Errors are AWS's `{"message": …}` with the type in `x-amzn-ErrorType`.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tollgate_formats::conversion::bedrock;
use tollgate_formats::conversion::gemini::AnswerError;
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::conversion::Converted;
use tollgate_formats::eventstream::{EventStreamDecoder, StreamDecoder};
use tollgate_formats::{ConversionError, Format};

use super::{secret_header, sigv4, Adapter, Native, Signer, Signing, UpstreamError, Wire};
use crate::config::{AwsCredentials, Endpoint, Provider};

/// The `anthropic_version` Bedrock's Anthropic models take in the body.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// What a model id keeps unencoded in a URL path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The Bedrock adapter.
pub struct Bedrock {
    base_url: String,
    region: String,
    credentials: Option<AwsCredentials>,
}

impl Bedrock {
    pub fn new(provider: &Provider) -> Self {
        Bedrock {
            base_url: provider.base_url.clone(),
            region: provider.cloud.region.clone().unwrap_or_default(),
            credentials: provider.cloud.aws.clone(),
        }
    }
}

/// Whether Bedrock serves a model through InvokeModel with the Messages body.
pub fn is_anthropic(upstream_model: &str) -> bool {
    upstream_model.starts_with("anthropic.")
        || upstream_model
            .split_once('.')
            .is_some_and(|(prefix, rest)| {
                rest.starts_with("anthropic.") && prefix.bytes().all(|b| b.is_ascii_lowercase())
            })
}

/// Removes the fields the path carries (`model`, `stream`) and adds `version` (and
/// `stream` again when given, and the betas as `anthropic_beta` when there are some).
pub(super) fn messages_body(
    body: &[u8],
    version: &str,
    stream: Option<bool>,
    betas: &[String],
) -> Result<Bytes, ConversionError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ConversionError::new("", format!("the request is not JSON: {e}")))?;
    let Value::Object(map) = &mut value else {
        return Err(ConversionError::new(
            "",
            "the request must be a JSON object",
        ));
    };
    map.remove("model");
    map.remove("stream");
    if let Some(stream) = stream {
        map.insert("stream".into(), stream.into());
    }
    map.insert("anthropic_version".into(), version.into());
    if !betas.is_empty() {
        map.insert("anthropic_beta".into(), betas.into());
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ConversionError::new("", e.to_string()))
}

impl Adapter for Bedrock {
    fn wire(&self, endpoint: Endpoint, upstream_model: &str) -> Option<Wire> {
        if !matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses
        ) {
            return None;
        }
        Some(if is_anthropic(upstream_model) {
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
        let method = if is_anthropic(upstream_model) {
            "invoke"
        } else {
            "converse"
        };
        let model = utf8_percent_encode(upstream_model, PATH_SEGMENT);
        format!("{}/model/{model}/{method}", self.base_url)
    }

    fn stream_url(&self, _endpoint: Endpoint, upstream_model: &str) -> Option<String> {
        let method = if is_anthropic(upstream_model) {
            "invoke-with-response-stream"
        } else {
            "converse-stream"
        };
        let model = utf8_percent_encode(upstream_model, PATH_SEGMENT);
        Some(format!("{}/model/{model}/{method}", self.base_url))
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }

    fn native(&self, upstream_model: &str) -> Option<&dyn Native> {
        (!is_anthropic(upstream_model)).then_some(self as &dyn Native)
    }

    fn upstream_body(
        &self,
        wire: Wire,
        _upstream_model: &str,
        _stream: bool,
        body: Bytes,
        forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<Bytes, ConversionError> {
        match wire.format {
            Some(Format::AnthropicMessages) => {
                // Bedrock takes the betas in the body, not as a header.
                let betas: Vec<String> = forwarded
                    .iter()
                    .filter(|(name, _)| name.as_str().eq_ignore_ascii_case("anthropic-beta"))
                    .filter_map(|(_, value)| value.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty())
                    .collect();
                messages_body(&body, ANTHROPIC_VERSION, None, &betas)
            }
            _ => Ok(body),
        }
    }

    fn signer(&self) -> Option<&dyn Signer> {
        Some(self)
    }

    fn stream_decoder(&self, max_frame_bytes: usize) -> StreamDecoder {
        StreamDecoder::EventStream(EventStreamDecoder::new(max_frame_bytes))
    }

    fn is_stream(&self, content_type: &str) -> bool {
        content_type.starts_with("application/vnd.amazon.eventstream")
    }

    fn counts_tokens(&self) -> bool {
        false
    }

    fn refusal(
        &self,
        provider: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> UpstreamError {
        UpstreamError::from_status(provider, status, headers, aws_error(headers, body))
    }
}

/// AWS's error message, prefixed with its type (`ValidationException: …`); a body in
/// OpenAI's or Anthropic's shape (a proxy in front of Bedrock) is read too.
pub(super) fn aws_error(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| super::error_message(body))?;
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(':').next())
        .filter(|k| !k.is_empty());
    Some(match kind {
        Some(kind) => format!("{kind}: {message}"),
        None => message,
    })
}

impl Signer for Bedrock {
    fn sign<'a>(
        &'a self,
        _provider: &'a Arc<str>,
        uri: &'a Uri,
        content_type: &'a str,
        body: &'a [u8],
    ) -> Signing<'a> {
        Box::pin(async move {
            let Some(credentials) = &self.credentials else {
                return Ok(Vec::new());
            };
            let host = uri.authority().map(|a| a.as_str()).unwrap_or("");
            let amz_date = sigv4::amz_date(time::OffsetDateTime::now_utc());
            let token = credentials.session_token.as_ref().map(|t| t.expose());
            let mut signed: Vec<(&str, &str)> = vec![
                ("content-type", content_type),
                ("host", host),
                ("x-amz-date", &amz_date),
            ];
            if let Some(token) = token {
                signed.push(("x-amz-security-token", token));
            }
            let authorization = sigv4::authorization(
                &sigv4::Scope {
                    access_key_id: &credentials.access_key_id,
                    secret_access_key: credentials.secret_access_key.expose(),
                    region: &self.region,
                    service: "bedrock",
                },
                &sigv4::Request {
                    method: "POST",
                    path: uri.path(),
                    query: uri.query().unwrap_or(""),
                    headers: &signed,
                    body,
                    amz_date: &amz_date,
                },
            );
            let mut out = Vec::new();
            if let Ok(value) = HeaderValue::from_str(&amz_date) {
                out.push((HeaderName::from_static("x-amz-date"), value));
            }
            if let Ok(value) = HeaderValue::from_str(host) {
                out.push((axum::http::header::HOST, value));
            }
            if let Some(value) = token.and_then(|t| secret_header(t.to_string())) {
                out.push((HeaderName::from_static("x-amz-security-token"), value));
            }
            if let Some(value) = secret_header(authorization) {
                out.push((axum::http::header::AUTHORIZATION, value));
            }
            Ok(out)
        })
    }
}

impl Native for Bedrock {
    fn request(
        &self,
        _endpoint: Endpoint,
        body: &[u8],
        _upstream_model: &str,
    ) -> Result<Converted, ConversionError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| ConversionError::new("", format!("the request is not JSON: {e}")))?;
        bedrock::request::convert(&request)
    }

    fn answer(
        &self,
        _endpoint: Endpoint,
        answer: &Value,
        public_model: &str,
        _base64: bool,
    ) -> Result<Value, AnswerError> {
        bedrock::answer::convert(
            answer,
            public_model,
            tollgate_formats::conversion::unix_now(),
        )
        .map_err(AnswerError::Malformed)
    }

    fn stream(&self, upstream_model: &str) -> Box<dyn NativeStream + Send> {
        Box::new(bedrock::stream::ConverseStream::new(
            upstream_model,
            tollgate_formats::conversion::unix_now(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_models_and_their_inference_profiles_go_through_invoke_model() {
        for id in [
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ] {
            assert!(is_anthropic(id), "{id}");
        }
        for id in [
            "amazon.nova-pro-v1:0",
            "meta.llama3-70b-instruct-v1:0",
            "us.amazon.nova-lite-v1:0",
        ] {
            assert!(!is_anthropic(id), "{id}");
        }
    }

    #[test]
    fn the_messages_body_loses_model_and_stream_and_gains_the_version() {
        let body = br#"{"model":"claude","stream":true,"max_tokens":5,"messages":[]}"#;
        let out: Value = serde_json::from_slice(
            &messages_body(body, ANTHROPIC_VERSION, None, &["b-1".to_string()]).expect("body"),
        )
        .expect("json");
        assert_eq!(
            out,
            serde_json::json!({"max_tokens": 5, "messages": [], "anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["b-1"]})
        );
    }
}
