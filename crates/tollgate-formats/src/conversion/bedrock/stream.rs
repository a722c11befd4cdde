//! Bedrock's `ConverseStream` events (decoded from the event stream, named by their
//! `:event-type`) as Chat Completions chunks: `messageStart` → the role chunk,
//! `contentBlockDelta` text / reasoning → content / `reasoning_content` deltas, a
//! `contentBlockStart` with `toolUse` → a tool call's first chunk (id, name), its
//! `toolUse.input` deltas → argument fragments, `messageStop` → the finish chunk; the
//! `metadata` event's `usage` becomes the usage chunk, sent with `[DONE]` once the stream
//! ends after its `messageStop` and its `metadata` (a stream cut short gets neither, and the
//! gateway charges it by estimate). An exception message is an error.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{chat_usage, finish_reason};
use crate::conversion::native::{ChunkWriter, NativeStream};
use crate::conversion::ConversionError;
use crate::eventstream::ERROR_EVENT;
use crate::sse::{SseEvent, DONE};

/// One ConverseStream event's payload, the fields any event may carry (read without
/// building a JSON tree: this runs once per streamed token).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "contentBlockIndex", default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    start: Option<Start<'a>>,
    #[serde(rename = "stopReason", borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(rename = "reasoningContent", borrow, default)]
    reasoning: Option<TextField<'a>>,
    #[serde(rename = "toolUse", borrow, default)]
    tool_use: Option<ToolInput<'a>>,
}

#[derive(Deserialize)]
struct TextField<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolInput<'a> {
    #[serde(borrow, default)]
    input: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Start<'a> {
    #[serde(rename = "toolUse", borrow, default)]
    tool_use: Option<ToolStart<'a>>,
}

#[derive(Deserialize)]
struct ToolStart<'a> {
    #[serde(rename = "toolUseId", borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}

/// Reads a ConverseStream as Chat Completions chunks.
pub struct ConverseStream {
    model: String,
    created: u64,
    id: String,
    writer: ChunkWriter,
    /// Converse's `contentBlockIndex` of each tool call, in the order of their Chat index.
    calls: Vec<u64>,
    started: bool,
    finished: bool,
    usage: Option<Value>,
}

impl ConverseStream {
    /// A reader of one stream; chunks name `model` (the gateway renames it).
    pub fn new(model: &str, created: u64) -> Self {
        let id = format!("chatcmpl-bedrock-{created}");
        ConverseStream {
            writer: ChunkWriter::new(&id, created, model),
            model: model.to_string(),
            created,
            id,
            calls: Vec::new(),
            started: false,
            finished: false,
            usage: None,
        }
    }

    fn start(&mut self, out: &mut Vec<SseEvent>) {
        if !self.started {
            self.started = true;
            out.push(
                self.writer
                    .chunk(r#"{"role":"assistant","content":""}"#, None),
            );
        }
    }
}

impl NativeStream for ConverseStream {
    fn push(&mut self, event: &SseEvent) -> Result<Vec<SseEvent>, ConversionError> {
        let name = event.event.as_deref().unwrap_or("");
        let malformed = || ConversionError::new("", "the provider sent a malformed event");
        if name == ERROR_EVENT {
            let data: Value = serde_json::from_str(&event.data).map_err(|_| malformed())?;
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
        let data: Event<'_> = serde_json::from_str(&event.data).map_err(|_| malformed())?;
        let mut out = Vec::new();
        match name {
            "messageStart" => self.start(&mut out),
            "contentBlockStart" => {
                self.start(&mut out);
                if let Some(call) = data.start.and_then(|s| s.tool_use) {
                    let index = self.calls.len();
                    self.calls.push(data.index);
                    let delta = json!({"tool_calls": [{
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }]});
                    out.push(self.writer.chunk(&delta.to_string(), None));
                }
            }
            "contentBlockDelta" => {
                self.start(&mut out);
                let Some(delta) = data.delta else {
                    return Ok(out);
                };
                if let Some(text) = delta.text {
                    out.push(self.writer.text("content", &text));
                } else if let Some(text) = delta.reasoning.and_then(|r| r.text) {
                    out.push(self.writer.text("reasoning_content", &text));
                } else if let Some(input) = delta.tool_use.and_then(|t| t.input) {
                    let Some(index) = self.calls.iter().position(|b| *b == data.index) else {
                        return Err(ConversionError::new(
                            "",
                            "the provider sent a tool input delta for a block it never started",
                        ));
                    };
                    let delta =
                        json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]});
                    out.push(self.writer.chunk(&delta.to_string(), None));
                }
            }
            "messageStop" => {
                self.start(&mut out);
                if !self.finished {
                    self.finished = true;
                    let reason = data.stop_reason.as_deref().unwrap_or("end_turn");
                    out.push(self.writer.chunk("{}", Some(finish_reason(reason))));
                }
            }
            "metadata" => {
                if let Some(usage) = data.usage {
                    self.usage = Some(usage);
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
