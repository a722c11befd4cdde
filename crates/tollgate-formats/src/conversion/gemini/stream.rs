//! Gemini's `streamGenerateContent?alt=sse` stream as Chat Completions chunks: each Gemini
//! chunk (a whole `GenerateContentResponse` holding the new parts) becomes chunks with the
//! text, thoughts (`reasoning_content`) and calls (whole, with their index) as deltas; the
//! chunk with a `finishReason` gives the finish chunk. Gemini repeats `usageMetadata` on
//! chunks, the last being the total: it is sent as the usage chunk, then `[DONE]`, when the
//! stream ends after its finish — a stream that ends without one gets neither (the gateway
//! then charges it by estimate). A block (`promptFeedback.blockReason`, a blocking
//! `finishReason`) is an error.

use serde_json::{json, Value};

use super::answer::read_parts;
use super::{blocked, chat_usage, finish_reason};
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
    usage: Option<Value>,
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
            usage: None,
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
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|_| ConversionError::new("", "the provider sent a malformed event"))?;
        if let Some(message) = chunk
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
        {
            return Err(ConversionError::new(
                "",
                format!("the provider reported an error: {message}"),
            ));
        }
        if let Some(block) = blocked(&chunk) {
            return Err(ConversionError::new("", block.to_string()));
        }
        if let Some(metadata) = chunk.get("usageMetadata") {
            self.usage = Some(metadata.clone());
        }
        let mut out = Vec::new();
        if self.id.is_none() {
            let id = chunk
                .get("responseId")
                .and_then(Value::as_str)
                .unwrap_or("gemini");
            let id = format!("chatcmpl-{id}");
            self.writer = Some(ChunkWriter::new(&id, self.created, &self.model));
            self.id = Some(id);
            out.push(self.chunk(r#"{"role":"assistant","content":""}"#, None));
        }
        let response_id = self.id.clone().unwrap_or_default();
        let response_id = response_id.trim_start_matches("chatcmpl-");
        let parts = read_parts(&chunk, response_id, self.calls);
        if !parts.thoughts.is_empty() {
            out.push(self.text("reasoning_content", &parts.thoughts));
        }
        if !parts.text.is_empty() {
            out.push(self.text("content", &parts.text));
        }
        for call in parts.calls {
            let index = self.calls;
            self.calls += 1;
            let mut call = call;
            call["index"] = index.into();
            out.push(self.chunk(&json!({"tool_calls": [call]}).to_string(), None));
        }
        if let Some(reason) = super::candidate(&chunk)
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            if !self.finished {
                self.finished = true;
                let finish = finish_reason(reason, self.calls > 0);
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
        if let Some(metadata) = self.usage.take() {
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
