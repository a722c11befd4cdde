//! Error bodies in each provider's real shape, as responses and as in-stream events.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::http::sse;

/// Which provider's shapes to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Anthropic,
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

fn openai_type(status: u16) -> &'static str {
    match status {
        401 | 400 | 404 | 409 | 413 | 415 | 422 => "invalid_request_error",
        403 => "permission_error",
        429 => "requests",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

fn openai_message(status: u16) -> &'static str {
    match status {
        429 => "Rate limit reached for requests. Please try again later.",
        500 => "The server had an error while processing your request. Sorry about that!",
        502 => "Bad gateway.",
        503 => "The engine is currently overloaded, please try again later.",
        504 => "Gateway timeout.",
        s if s >= 500 => "The server had an error while processing your request.",
        _ => "Fake upstream error injected by a [[fake:status]] directive.",
    }
}

fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

fn anthropic_message(status: u16) -> &'static str {
    match status {
        429 => "Number of requests has exceeded your rate limit.",
        529 => "Overloaded",
        504 => "Request timed out.",
        s if s >= 500 => "Internal server error",
        _ => "Fake upstream error injected by a [[fake:status]] directive.",
    }
}

/// OpenAI pretty-prints error bodies with four spaces.
fn pretty4<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if v.serialize(&mut ser).is_err() {
        return b"{}".to_vec();
    }
    out.push(b'\n');
    out
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(body),
    )
        .into_response()
}

/// An OpenAI error response.
pub(crate) fn openai(
    status: StatusCode,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = OpenAiBody {
        error: OpenAiError {
            message,
            kind: openai_type(status.as_u16()),
            param,
            code,
        },
    };
    json_response(status, pretty4(&body))
}

/// An Anthropic error response.
pub(crate) fn anthropic(status: StatusCode, message: &str) -> Response {
    let body = AnthropicBody {
        kind: "error",
        error: AnthropicError {
            kind: anthropic_type(status.as_u16()),
            message,
        },
    };
    json_response(status, serde_json::to_vec(&body).unwrap_or_default())
}

/// A 400 in the flavor's shape.
pub(crate) fn bad_request(flavor: Flavor, message: &str, param: Option<&str>) -> Response {
    match flavor {
        Flavor::OpenAi => openai(StatusCode::BAD_REQUEST, message, param, None),
        Flavor::Anthropic => anthropic(StatusCode::BAD_REQUEST, message),
    }
}

/// The response for a `status=N` directive (or a status fault); `echo`, when set, is
/// quoted in the message as some providers quote the request.
pub(crate) fn injected(
    flavor: Flavor,
    status: u16,
    retry_after: Option<u64>,
    echo: Option<&str>,
) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let base = match flavor {
        Flavor::OpenAi => openai_message(status),
        Flavor::Anthropic => anthropic_message(status),
    };
    let message = match echo {
        Some(headers) => format!("{base} Request headers: {headers}"),
        None => base.to_string(),
    };
    let mut resp = match flavor {
        Flavor::OpenAi => {
            let code_field = (status == 429).then_some("rate_limit_exceeded");
            openai(code, &message, None, code_field)
        }
        Flavor::Anthropic => anthropic(code, &message),
    };
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// OpenAI's in-stream error for chat completions: a `data:` line with an error object.
pub(crate) fn chat_stream_event() -> Bytes {
    let body = OpenAiBody {
        error: OpenAiError {
            message: openai_message(500),
            kind: "server_error",
            param: None,
            code: None,
        },
    };
    sse(None, &body)
}

#[derive(Serialize)]
struct ResponsesError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
}

/// The Responses API's in-stream `error` event.
pub(crate) fn responses_stream_event(sequence_number: u64) -> Bytes {
    let body = ResponsesError {
        kind: "error",
        sequence_number,
        code: "server_error",
        message: openai_message(500),
        param: None,
    };
    sse(Some("error"), &body)
}

/// Anthropic's in-stream `error` event.
pub(crate) fn anthropic_stream_event() -> Bytes {
    let body = AnthropicBody {
        kind: "error",
        error: AnthropicError {
            kind: "overloaded_error",
            message: "Overloaded",
        },
    };
    sse(Some("error"), &body)
}
