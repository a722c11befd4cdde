//! Bedrock's `ConverseStream` events (decoded from the event stream, named by their
//! `:event-type`) as Chat Completions chunks: `messageStart` → the role chunk,
//! `contentBlockDelta` text / reasoning → content / `reasoning_content` deltas, a
//! `contentBlockStart` with `toolUse` → a tool call's first chunk (id, name), its
//! `toolUse.input` deltas → argument fragments, `messageStop` → the finish chunk; the
//! `metadata` event's `usage` becomes the usage chunk, sent with `[DONE]` once the stream
//! ends after its `messageStop` and its `metadata` (a stream cut short gets neither, and the
//! gateway charges it by estimate). An exception message is an error.

use serde_json::{json, Value};

use super::{chat_usage, finish_reason};
use crate::conversion::native::NativeStream;
use crate::conversion::ConversionError;
use crate::eventstream::ERROR_EVENT;
use crate::sse::{SseEvent, DONE};

/// Reads a ConverseStream as Chat Completions chunks.
pub struct ConverseStream {
    model: String,
    created: u64,
    id: String,
    /// Converse's `contentBlockIndex` of each tool call, in the order of their Chat index.
    calls: Vec<u64>,
    started: bool,
    finished: bool,
    usage: Option<Value>,
}

impl ConverseStream {
    /// A reader of one stream; chunks name `model` (the gateway renames it).
    pub fn new(model: &str, created: u64) -> Self {
        ConverseStream {
            model: model.to_string(),
            created,
            id: format!("chatcmpl-bedrock-{created}"),
            calls: Vec::new(),
            started: false,
            finished: false,
            usage: None,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let data = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null,
        });
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    fn start(&mut self, out: &mut Vec<SseEvent>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }
}

impl NativeStream for ConverseStream {
    fn push(&mut self, event: &SseEvent) -> Result<Vec<SseEvent>, ConversionError> {
        let name = event.event.as_deref().unwrap_or("");
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|_| ConversionError::new("", "the provider sent a malformed event"))?;
        let mut out = Vec::new();
        match name {
            ERROR_EVENT => {
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("an error");
                let kind = data
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                return Err(ConversionError::new(
                    "",
                    format!("the provider reported an error ({kind}): {message}"),
                ));
            }
            "messageStart" => self.start(&mut out),
            "contentBlockStart" => {
                self.start(&mut out);
                if let Some(call) = data.pointer("/start/toolUse") {
                    let block = data
                        .get("contentBlockIndex")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    let index = self.calls.len();
                    self.calls.push(block);
                    out.push(self.chunk(
                        json!({"tool_calls": [{
                            "index": index,
                            "id": call.get("toolUseId").and_then(Value::as_str).unwrap_or(""),
                            "type": "function",
                            "function": {"name": call.get("name").and_then(Value::as_str).unwrap_or(""), "arguments": ""},
                        }]}),
                        None,
                    ));
                }
            }
            "contentBlockDelta" => {
                self.start(&mut out);
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    out.push(self.chunk(json!({"content": text}), None));
                } else if let Some(text) = delta
                    .pointer("/reasoningContent/text")
                    .and_then(Value::as_str)
                {
                    out.push(self.chunk(json!({"reasoning_content": text}), None));
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str)
                {
                    let block = data
                        .get("contentBlockIndex")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    let Some(index) = self.calls.iter().position(|b| *b == block) else {
                        return Err(ConversionError::new(
                            "",
                            "the provider sent a tool input delta for a block it never started",
                        ));
                    };
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]}),
                        None,
                    ));
                }
            }
            "messageStop" => {
                self.start(&mut out);
                if !self.finished {
                    self.finished = true;
                    let reason = data
                        .get("stopReason")
                        .and_then(Value::as_str)
                        .unwrap_or("end_turn");
                    out.push(self.chunk(json!({}), Some(finish_reason(reason))));
                }
            }
            "metadata" => {
                if let Some(usage) = data.get("usage") {
                    self.usage = Some(usage.clone());
                }
            }
            // contentBlockStop and events added later carry nothing to relay.
            _ => {}
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        if !self.finished {
            return Vec::new();
        }
        let Some(usage) = self.usage.take() else {
            // No metadata event: the usage is unknown, and the stream not complete.
            return Vec::new();
        };
        let data = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": chat_usage(&usage),
        });
        vec![
            SseEvent {
                event: None,
                data: data.to_string(),
            },
            SseEvent {
                event: None,
                data: DONE.to_string(),
            },
        ]
    }
}
