//! How an answer's usage becomes billable quantities, per endpoint kind.

use serde_json::Value;
use tollgate_formats::usage as wire_usage;
use tollgate_formats::Format;

use tollgate_formats::hosted::HostedCalls;
use tollgate_formats::usage::ESTIMATE_BYTES_PER_TOKEN;

use crate::billing::{HostedTool, Usage};

/// How the hosted-tool calls of an answer are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hosted {
    /// The request offered no hosted tool.
    None,
    /// Counted in the answer's output items (Responses) or content blocks (Messages).
    Counted,
    /// One call per answered request (Chat Completions search models).
    PerRequest(HostedTool),
}

/// How a response's usage becomes billable quantities.
#[derive(Debug, Clone, Copy)]
pub(super) enum Billing {
    /// Token usage in a text-generation format (the provider's).
    Tokens {
        format: Format,
        hosted: Hosted,
    },
    Embeddings,
    Images {
        n: u64,
    },
    Speech {
        characters: u64,
    },
    Transcription,
    /// Moderation answers carry no usage: when the model prices input tokens, the
    /// gateway's estimate of the input is charged (marked estimated).
    Moderation {
        input_priced: bool,
    },
}

/// Token usage as the meter counts it.
pub(super) fn tokens_usage(u: wire_usage::Usage) -> Usage {
    Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        cache_write_tokens: u.cache_write_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens.min(u.output_tokens),
        ..Usage::default()
    }
}

impl Hosted {
    /// Billable calls per tool, from the calls an answer showed.
    pub(super) fn calls(self, seen: HostedCalls) -> [u64; 4] {
        let mut calls = [0; 4];
        match self {
            Hosted::None => {}
            Hosted::PerRequest(tool) => calls[tool.index()] = 1,
            Hosted::Counted => {
                calls[HostedTool::WebSearch.index()] = seen.web_search;
                calls[HostedTool::FileSearch.index()] = seen.file_search;
                calls[HostedTool::CodeInterpreter.index()] = seen.code_interpreter;
                calls[HostedTool::ImageGeneration.index()] = seen.image_generation;
            }
        }
        calls
    }
}

impl Billing {
    /// Whether measuring needs the whole answer (not only its `usage`).
    pub(super) fn reads_whole_answer(self) -> bool {
        matches!(
            self,
            Billing::Images { .. }
                | Billing::Tokens {
                    hosted: Hosted::Counted,
                    ..
                }
        )
    }

    /// Billable quantities of a whole JSON answer, when it reports them: `None` for an
    /// answer without readable usage (the gateway then estimates).
    pub(super) fn measured(self, answer: &Value) -> Option<Usage> {
        let tokens = |u: Option<wire_usage::Usage>| u.map(tokens_usage);
        match self {
            Billing::Tokens { format, hosted } => {
                let mut usage = tokens(wire_usage::from_response(format, answer))?;
                usage.tool_calls = hosted.calls(HostedCalls::in_answer(answer));
                Some(usage)
            }
            Billing::Embeddings => tokens(wire_usage::from_embeddings_response(answer)),
            Billing::Images { n } => {
                let mut usage = tokens(answer.get("usage").map(wire_usage::from_responses_usage))
                    .unwrap_or_default();
                let made = answer
                    .get("data")
                    .and_then(Value::as_array)
                    .map_or(n, |d| d.len() as u64);
                usage.images = made;
                Some(usage)
            }
            Billing::Speech { characters } => Some(Usage {
                characters,
                ..Usage::default()
            }),
            Billing::Transcription => match answer.get("usage") {
                Some(u) if u.get("type").and_then(Value::as_str) == Some("duration") => {
                    Some(Usage {
                        audio_seconds: u
                            .get("seconds")
                            .and_then(Value::as_f64)
                            .map_or(0, |s| s.max(0.0).ceil() as u64),
                        ..Usage::default()
                    })
                }
                Some(u) => Some(tokens_usage(wire_usage::from_responses_usage(u))),
                None => answer
                    .get("duration")
                    .and_then(Value::as_f64)
                    .map(|s| Usage {
                        audio_seconds: s.max(0.0).ceil() as u64,
                        ..Usage::default()
                    }),
            },
            Billing::Moderation { input_priced } => {
                match answer.get("usage").map(wire_usage::from_chat_usage) {
                    Some(usage) => Some(tokens_usage(usage)),
                    None if input_priced => None,
                    None => Some(Usage::default()),
                }
            }
        }
    }

    /// The usage of an answer that reported none: the request's input estimate, and for
    /// generated text the bytes delivered (`text_bytes`) as output; hosted calls counted
    /// in the answer.
    pub(super) fn estimate(self, input_estimate: u64, text_bytes: u64, answer: &Value) -> Usage {
        let mut usage = Usage {
            input_tokens: input_estimate,
            ..Usage::default()
        };
        if let Billing::Tokens { hosted, .. } = self {
            usage.output_tokens = text_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN);
            usage.tool_calls = hosted.calls(HostedCalls::in_answer(answer));
        }
        usage
    }
}
