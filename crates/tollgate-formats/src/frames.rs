//! The in-stream error event of each client format: the one place that writes it, for the
//! gateway (a provider that broke off, a stall, a ledger that cannot record) and for the
//! stream converters (an upstream error event, a stream cut short) alike.

use bytes::Bytes;
use serde_json::json;

use crate::sse;
use crate::Format;

/// Why a stream ends with an error event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// The provider failed: it broke off, stalled, sent an error event or something
    /// unreadable or untranslatable.
    Upstream,
    /// The provider is overloaded (Anthropic's `overloaded_error`): clients back off on it.
    Overloaded,
    /// The gateway cannot go on (for example, the stream reached its time limit).
    Gateway,
    /// The charge could not be recorded in time (the ledger's disk is full, or its
    /// database unreachable): the answer is not delivered as a success.
    Ledger,
}

impl StreamFailure {
    /// The stable machine code of the failure.
    pub fn code(self) -> &'static str {
        match self {
            StreamFailure::Upstream => "upstream_stream_failed",
            StreamFailure::Overloaded => "upstream_overloaded",
            StreamFailure::Gateway => "gateway_stream_failed",
            StreamFailure::Ledger => "ledger_unavailable",
        }
    }
}

/// The error event that ends a stream of `format`, carrying `message`.
///
/// - Chat Completions: `data: {"error": {"message", "type", "code", "param": null}}`
///   (what OpenAI sends mid-stream; the SDKs raise it as an API error);
/// - Responses: `event: error` with `{"type": "error", "code", "message", "param": null}`;
/// - Messages: `event: error` with `{"type": "error", "error": {"type", "message"}}`.
pub fn error_frame(format: Format, failure: StreamFailure, message: &str) -> Bytes {
    let code = failure.code();
    match format {
        Format::ChatCompletions => {
            let kind = match failure {
                StreamFailure::Gateway | StreamFailure::Ledger => "server_error",
                StreamFailure::Upstream | StreamFailure::Overloaded => "upstream_error",
            };
            sse::encode_json(
                None,
                &json!({"error": {"message": message, "type": kind, "code": code, "param": null}}),
            )
        }
        Format::Responses => sse::encode_json(
            Some("error"),
            &json!({"type": "error", "code": code, "message": message, "param": null}),
        ),
        Format::AnthropicMessages => {
            let kind = match failure {
                StreamFailure::Overloaded => "overloaded_error",
                StreamFailure::Upstream | StreamFailure::Gateway | StreamFailure::Ledger => {
                    "api_error"
                }
            };
            sse::encode_json(
                Some("error"),
                &json!({"type": "error", "error": {"type": kind, "message": message}}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(frame: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(frame).unwrap_or_default();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_default();
        serde_json::from_str(line).unwrap_or_default()
    }

    #[test]
    fn each_format_has_its_own_shape() {
        let chat = error_frame(Format::ChatCompletions, StreamFailure::Upstream, "broke");
        assert!(!chat.starts_with(b"event:"));
        assert_eq!(data(&chat)["error"]["type"], "upstream_error");
        assert_eq!(data(&chat)["error"]["code"], "upstream_stream_failed");
        assert_eq!(data(&chat)["error"]["message"], "broke");

        let responses = error_frame(Format::Responses, StreamFailure::Gateway, "no ledger");
        assert!(responses.starts_with(b"event: error\n"));
        assert_eq!(data(&responses)["type"], "error");
        assert_eq!(data(&responses)["code"], "gateway_stream_failed");

        let messages = error_frame(Format::AnthropicMessages, StreamFailure::Overloaded, "busy");
        assert!(messages.starts_with(b"event: error\n"));
        assert_eq!(data(&messages)["error"]["type"], "overloaded_error");
        assert_eq!(data(&messages)["error"]["message"], "busy");
    }
}
