//! Ending a stream before the provider does, in a well-formed way: when it exceeds the
//! output its request reserved for (a provider that ignores the output limit), the relay
//! stops reading and hands the transform the events that end a stream in the provider's
//! format, as if the provider had stopped at its limit; passed through or translated,
//! the client sees a normal finish for `length` / `max_tokens` / `max_output_tokens`.

use serde_json::{json, Value};
use tollgate_formats::{Format, SseEvent};

/// What the synthetic ending needs from the events seen so far.
#[derive(Debug, Default)]
pub(super) struct Cutoff {
    /// Chat Completions: the `id`, `created` and `model` of the chunks.
    chat: Option<(Value, Value, Value)>,
    /// Messages: the index of the content block open now.
    open_block: Option<u64>,
    /// Responses: the response object of `response.created`.
    response: Option<Value>,
    /// Responses: events seen (their sequence numbers count from 0).
    events: u64,
}

fn event(name: Option<&str>, data: Value) -> SseEvent {
    SseEvent {
        event: name.map(str::to_string),
        data: data.to_string(),
    }
}

impl Cutoff {
    /// Notes what an upstream event tells about the stream's shape. Only the few events
    /// that carry it are parsed.
    pub(super) fn observe(&mut self, format: Format, e: &SseEvent) {
        match format {
            Format::ChatCompletions => {
                if self.chat.is_none() && !e.is_done() {
                    if let Ok(chunk) = serde_json::from_str::<Value>(&e.data) {
                        self.chat = Some((
                            chunk["id"].clone(),
                            chunk["created"].clone(),
                            chunk["model"].clone(),
                        ));
                    }
                }
            }
            Format::AnthropicMessages => match e.event.as_deref() {
                Some("content_block_start") => {
                    self.open_block = serde_json::from_str::<Value>(&e.data)
                        .ok()
                        .and_then(|v| v["index"].as_u64());
                }
                Some("content_block_stop") => self.open_block = None,
                _ => {}
            },
            Format::Responses => {
                if e.event.as_deref() == Some("response.created")
                    || e.data.starts_with("{\"type\":\"response.created\"")
                {
                    self.response = serde_json::from_str::<Value>(&e.data)
                        .ok()
                        .map(|v| v["response"].clone());
                }
                self.events += 1;
            }
        }
    }

    /// The events that end the stream at its output limit, in the provider's format,
    /// reporting `usage` (input, output tokens).
    pub(super) fn ending(&self, format: Format, input: u64, output: u64) -> Vec<SseEvent> {
        match format {
            Format::ChatCompletions => {
                let (id, created, model) =
                    self.chat
                        .clone()
                        .unwrap_or((json!("chatcmpl-cut"), json!(0), json!("")));
                vec![
                    event(
                        None,
                        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
                    ),
                    event(
                        None,
                        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}}),
                    ),
                    SseEvent {
                        event: None,
                        data: "[DONE]".into(),
                    },
                ]
            }
            Format::AnthropicMessages => {
                let mut events = Vec::new();
                if let Some(index) = self.open_block {
                    events.push(event(
                        Some("content_block_stop"),
                        json!({"type": "content_block_stop", "index": index}),
                    ));
                }
                events.push(event(
                    Some("message_delta"),
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                    "usage": {"output_tokens": output}}),
                ));
                events.push(event(Some("message_stop"), json!({"type": "message_stop"})));
                events
            }
            Format::Responses => {
                let mut response = self
                    .response
                    .clone()
                    .unwrap_or_else(|| json!({"object": "response"}));
                response["status"] = json!("incomplete");
                response["incomplete_details"] = json!({"reason": "max_output_tokens"});
                response["usage"] = json!({"input_tokens": input, "output_tokens": output,
                    "total_tokens": input + output,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0}});
                vec![event(
                    Some("response.incomplete"),
                    json!({"type": "response.incomplete",
                    "sequence_number": self.events, "response": response}),
                )]
            }
        }
    }
}
