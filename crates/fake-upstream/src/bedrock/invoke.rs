//! InvokeModel and InvokeModelWithResponseStream for Anthropic models: the Messages API's
//! answer (the fake's own `/v1/messages`), behind Bedrock's body rules, errors and framing
//! (see the module docs of [`super`]).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{error, event_stream, frames, invalid};
use crate::directives::Directives;
use crate::http::Ctx;
use crate::Shared;

/// The `anthropic_version` Bedrock takes.
pub(crate) const VERSION: &str = "bedrock-2023-05-31";

/// AWS's error for an Anthropic-shaped error answer.
async fn aws_error(response: Response) -> Response {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(axum::http::header::RETRY_AFTER)
        .cloned();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "The server encountered an error processing your request.".into());
    let kind = match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        _ => "InternalServerException",
    };
    let status = if status == 529 { 503 } else { status };
    let mut out = error(status, kind, &message);
    if let Some(value) = retry_after {
        out.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    out
}

pub(super) async fn run(
    s: &Arc<Shared>,
    ctx: &Ctx,
    model: &str,
    body: &Bytes,
    streamed: bool,
) -> Result<Response, Response> {
    let mut req: Value = serde_json::from_slice(body).map_err(|_| {
        invalid("Malformed input request, please reformat your input and try again.")
    })?;
    let Value::Object(map) = &mut req else {
        return Err(invalid(
            "Malformed input request, please reformat your input and try again.",
        ));
    };
    for key in ["model", "stream"] {
        if map.contains_key(key) {
            return Err(invalid(&format!("Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again.")));
        }
    }
    match map.remove("anthropic_version") {
        Some(Value::String(v)) if v == VERSION => {}
        Some(_) => return Err(invalid(&format!("Malformed input request: #/anthropic_version: only '{VERSION}' is supported, please reformat your input and try again."))),
        None => return Err(invalid("Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.")),
    }
    if !model.contains("anthropic.") {
        return Err(invalid("The provided model identifier is invalid."));
    }
    let mut headers = HeaderMap::new();
    if let Some(Value::Array(betas)) = map.remove("anthropic_beta") {
        let betas: Vec<&str> = betas.iter().filter_map(Value::as_str).collect();
        if let Ok(value) = HeaderValue::from_str(&betas.join(",")) {
            headers.insert("anthropic-beta", value);
        }
    }
    map.insert("model".into(), model.into());
    if streamed {
        map.insert("stream".into(), true.into());
    }
    let bad_crc = map
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| crate::messages::last_user_texts(m))
        .and_then(|texts| Directives::parse(texts).ok())
        .is_some_and(|d| d.bad_crc);
    let key = s
        .opts
        .anthropic_api_key
        .clone()
        .unwrap_or_else(|| "bedrock".into());
    if let Ok(value) = HeaderValue::from_str(&key) {
        headers.insert("x-api-key", value);
    }
    headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    let inner = Ctx {
        headers,
        conn: ctx.conn.clone(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&req).unwrap_or_default());
    let response = match crate::messages::run(s, &inner, &bytes).await {
        Ok(r) | Err(r) => r,
    };
    if !response.status().is_success() {
        return Err(aws_error(response).await);
    }
    if !streamed {
        return Ok(response);
    }
    Ok(event_stream(Body::from_stream(reframe(response, bad_crc))))
}

/// What the re-framing has seen.
#[derive(Default)]
struct Reframe {
    buffer: String,
    input: u64,
    output: u64,
    sent: usize,
    bad_crc: bool,
}

impl Reframe {
    /// The event-stream messages of the complete SSE events in the buffer.
    fn frames(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            let Ok(mut event) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let frame = match event.get("type").and_then(Value::as_str) {
                Some("error") => frames::exception(
                    "internalServerException",
                    event
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("Internal server error"),
                ),
                kind => {
                    match kind {
                        Some("message_start") => {
                            let u = event.pointer("/message/usage");
                            let n = |k: &str| {
                                u.and_then(|u| u.get(k))
                                    .and_then(Value::as_u64)
                                    .unwrap_or(0)
                            };
                            self.input = n("input_tokens")
                                + n("cache_read_input_tokens")
                                + n("cache_creation_input_tokens");
                        }
                        Some("message_delta") => {
                            self.output = event
                                .pointer("/usage/output_tokens")
                                .and_then(Value::as_u64)
                                .unwrap_or(0);
                        }
                        Some("message_stop") => {
                            event["amazon-bedrock-invocationMetrics"] = json!({
                                "inputTokenCount": self.input, "outputTokenCount": self.output,
                                "invocationLatency": 412, "firstByteLatency": 87});
                        }
                        _ => {}
                    }
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(event.to_string());
                    frames::event("chunk", json!({"bytes": encoded}), self.sent)
                }
            };
            self.sent += 1;
            let frame = if self.bad_crc && self.sent == 2 {
                frames::corrupt(&frame)
            } else {
                frame
            };
            out.extend_from_slice(&frame);
        }
        out
    }
}

/// The Messages answer's SSE body as Bedrock's event stream of `chunk`s.
fn reframe(
    response: Response,
    bad_crc: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> {
    let state = Reframe {
        bad_crc,
        ..Reframe::default()
    };
    response
        .into_body()
        .into_data_stream()
        .scan(state, |state, chunk| {
            let out = chunk.map(|bytes| {
                state
                    .buffer
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n"));
                Bytes::from(state.frames())
            });
            futures_util::future::ready(Some(out))
        })
}
