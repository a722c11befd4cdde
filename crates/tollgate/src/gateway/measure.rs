//! How an answer's usage becomes billable quantities, per endpoint kind.

use serde_json::Value;
use tollgate_formats::usage as wire_usage;
use tollgate_formats::Format;

use crate::billing::Usage;

/// How a response's usage becomes billable quantities.
#[derive(Debug, Clone, Copy)]
pub(super) enum Billing {
    /// Token usage in a text-generation format (the provider's).
    Tokens(Format),
    Embeddings,
    Images {
        n: u64,
    },
    Speech {
        characters: u64,
    },
    Transcription,
    Moderation,
}

/// Token usage as the meter counts it.
pub(super) fn tokens_usage(u: wire_usage::Usage) -> Usage {
    Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        cache_write_tokens: u.cache_write_tokens,
        output_tokens: u.output_tokens,
        ..Usage::default()
    }
}

impl Billing {
    /// Billable quantities of a whole JSON answer.
    pub(super) fn usage_of(self, answer: &Value) -> Usage {
        let tokens = |u: Option<wire_usage::Usage>| u.map(tokens_usage).unwrap_or_default();
        match self {
            Billing::Tokens(format) => tokens(wire_usage::from_response(format, answer)),
            Billing::Embeddings => tokens(wire_usage::from_embeddings_response(answer)),
            Billing::Images { n } => {
                let mut usage = tokens(answer.get("usage").map(wire_usage::from_responses_usage));
                let made = answer
                    .get("data")
                    .and_then(Value::as_array)
                    .map_or(n, |d| d.len() as u64);
                usage.images = made;
                usage
            }
            Billing::Speech { characters } => Usage {
                characters,
                ..Usage::default()
            },
            Billing::Transcription => match answer.get("usage") {
                Some(u) if u.get("type").and_then(Value::as_str) == Some("duration") => Usage {
                    audio_seconds: u
                        .get("seconds")
                        .and_then(Value::as_f64)
                        .map_or(0, |s| s.max(0.0).ceil() as u64),
                    ..Usage::default()
                },
                Some(u) => tokens_usage(wire_usage::from_responses_usage(u)),
                None => Usage::default(),
            },
            Billing::Moderation => tokens(answer.get("usage").map(wire_usage::from_chat_usage)),
        }
    }
}
