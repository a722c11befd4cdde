//! Gemini's `streamGenerateContent?alt=sse` stream as Chat Completions chunks: each Gemini
//! chunk (a whole `GenerateContentResponse` holding the new parts) becomes chunks with the
//! text, thoughts (`reasoning_content`) and calls (whole, with their index) as deltas; the
//! chunk with a `finishReason` gives the finish chunk. Gemini repeats `usageMetadata` on
//! chunks, the last being the total: it is sent as the usage chunk, then `[DONE]`, when the
//! stream ends after its finish — a stream that ends without one gets neither (the gateway
//! then charges it by estimate). A block (`promptFeedback.blockReason`, a blocking
//! `finishReason`) is an error.

use serde_json::{json, Value};

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{call_id, chat_usage, finish_reason, Blocked, BLOCKING};
use crate::conversion::native::{ChunkWriter, NativeStream};
use crate::conversion::ConversionError;
use crate::sse::{SseEvent, DONE};

/// Reads a Gemini stream as Chat Completions chunks.
pub struct GeminiStream {
    model: String,
    created: u64,
    id: Option<String>,
    /// Made with the first chunk, which gives the stream's id.
    writer: Option<ChunkWriter>,
    calls: usize,
    finished: bool,
    /// The last `usageMetadata`, as sent.
    usage_text: Option<String>,
}

/// One stream chunk (a `GenerateContentResponse`), read into borrowed structs rather than
/// a JSON tree: this runs once per streamed chunk.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(rename = "usageMetadata", borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(rename = "promptFeedback", borrow, default)]
    feedback: Option<Feedback<'a>>,
    #[serde(rename = "responseId", borrow, default)]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(rename = "finishReason", borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(rename = "functionCall", default)]
    function_call: Option<Value>,
}

#[derive(Deserialize)]
struct Feedback<'a> {
    #[serde(rename = "blockReason", borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

impl GeminiStream {
    /// A reader of one stream; chunks name `model` (the name the provider is asked for;
    /// the gateway renames it).
    pub fn new(model: &str, created: u64) -> Self {
        GeminiStream {
            model: model.to_string(),
            created,
            id: None,
            writer: None,
            calls: 0,
            finished: false,
            usage_text: None,
        }
    }

    /// A chunk of `delta` (a JSON object's text).
    fn chunk(&self, delta: &str, finish: Option<&str>) -> SseEvent {
        match &self.writer {
            Some(writer) => writer.chunk(delta, finish),
            None => {
                ChunkWriter::new("chatcmpl-gemini", self.created, &self.model).chunk(delta, finish)
            }
        }
    }

    fn text(&self, key: &str, text: &str) -> SseEvent {
        match &self.writer {
            Some(writer) => writer.text(key, text),
            None => ChunkWriter::new("chatcmpl-gemini", self.created, &self.model).text(key, text),
        }
    }
}

impl NativeStream for GeminiStream {
    fn push(&mut self, event: &SseEvent) -> Result<Vec<SseEvent>, ConversionError> {
        let chunk: Chunk<'_> = serde_json::from_str(&event.data)
            .map_err(|_| ConversionError::new("", "the provider sent a malformed event"))?;
        if let Some(message) = chunk.error.and_then(|e| e.message) {
            return Err(ConversionError::new(
                "",
                format!("the provider reported an error: {message}"),
            ));
        }
        let candidate = chunk.candidates.into_iter().next();
        let finish = candidate.as_ref().and_then(|c| c.finish_reason.clone());
        if let Some(reason) = chunk.feedback.and_then(|f| f.block_reason) {
            let block = Blocked {
                what: "the prompt",
                reason: reason.into_owned(),
            };
            return Err(ConversionError::new("", block.to_string()));
        }
        if let Some(reason) = finish.as_deref().filter(|r| BLOCKING.contains(r)) {
            let block = Blocked {
                what: "the answer",
                reason: reason.to_string(),
            };
            return Err(ConversionError::new("", block.to_string()));
        }
        if let Some(metadata) = chunk.usage {
            // Kept as text, read once at the end: Gemini repeats it on every chunk.
            self.usage_text = Some(metadata.get().to_string());
        }
        let mut out = Vec::new();
        if self.id.is_none() {
            let id = format!(
                "chatcmpl-{}",
                chunk.response_id.as_deref().unwrap_or("gemini")
            );
            self.writer = Some(ChunkWriter::new(&id, self.created, &self.model));
            self.id = Some(id);
            out.push(self.chunk(r#"{"role":"assistant","content":""}"#, None));
        }
        let (mut text, mut thoughts) = (String::new(), String::new());
        let mut calls = Vec::new();
        for part in candidate
            .and_then(|c| c.content)
            .map(|c| c.parts)
            .unwrap_or_default()
        {
            if let Some(call) = part.function_call {
                calls.push(call);
            } else if let Some(t) = part.text {
                if part.thought == Some(true) {
                    thoughts.push_str(&t);
                } else {
                    text.push_str(&t);
                }
            }
        }
        if !thoughts.is_empty() {
            out.push(self.text("reasoning_content", &thoughts));
        }
        if !text.is_empty() {
            out.push(self.text("content", &text));
        }
        let response_id = self.id.clone().unwrap_or_default();
        let response_id = response_id.trim_start_matches("chatcmpl-");
        for call in calls {
            let index = self.calls;
            self.calls += 1;
            let name = call.get("name").and_then(Value::as_str).unwrap_or("");
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            let delta = json!({"tool_calls": [{
                "id": call_id(&call, response_id, index),
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
                "index": index,
            }]});
            out.push(self.chunk(&delta.to_string(), None));
        }
        if let Some(reason) = finish {
            if !self.finished {
                self.finished = true;
                let finish = finish_reason(&reason, self.calls > 0);
                out.push(self.chunk("{}", Some(finish)));
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        if !self.finished {
            return Vec::new();
        }
        let mut out = Vec::new();
        let metadata = self
            .usage_text
            .take()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        if let Some(metadata) = metadata {
            let data = json!({
                "id": self.id.as_deref().unwrap_or("chatcmpl-gemini"),
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": chat_usage(&metadata),
            });
            out.push(SseEvent {
                event: None,
                data: data.to_string(),
            });
        }
        out.push(SseEvent {
            event: None,
            data: DONE.to_string(),
        });
        out
    }
}
