//! Providers whose wire format is not one the gateway speaks to clients (Gemini, Bedrock):
//! their adapters translate the hub format (Chat Completions) to the native one and read
//! the native answers back as it, so the gateway's metering, translations and relays see
//! only the formats they know.

use crate::conversion::ConversionError;
use crate::sse::SseEvent;

/// A native event stream read as Chat Completions events.
pub trait NativeStream {
    /// The Chat Completions events of one native event (none, one or several); an error
    /// ends the stream (a malformed event, a block, an in-stream error).
    fn push(&mut self, event: &SseEvent) -> Result<Vec<SseEvent>, ConversionError>;

    /// The events that end the stream once the native stream ended: the usage chunk and
    /// `[DONE]` when it finished, nothing when it was cut short.
    fn finish(&mut self) -> Vec<SseEvent>;
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes the Chat Completions chunks of one stream: the part before the delta (id,
/// object, created, model) is serialized once per stream, not once per chunk.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    prefix: String,
}

impl ChunkWriter {
    /// The writer of the chunks of stream `id`, created at `created`, naming `model`.
    pub fn new(id: &str, created: u64, model: &str) -> Self {
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        ChunkWriter {
            prefix: format!(
                "{{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":",
                quote(id),
                quote(model)
            ),
        }
    }

    /// A chunk whose delta is the JSON object `delta`, with `finish_reason`.
    pub fn chunk(&self, delta: &str, finish: Option<&str>) -> SseEvent {
        let mut data = String::with_capacity(self.prefix.len() + delta.len() + 64);
        data.push_str(&self.prefix);
        data.push_str(delta);
        data.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(reason) => {
                data.push('"');
                data.push_str(reason);
                data.push('"');
            }
            None => data.push_str("null"),
        }
        data.push_str("}],\"usage\":null}");
        SseEvent { event: None, data }
    }

    /// A chunk whose delta is `{"<key>": "<text>"}` (`content`, `reasoning_content`).
    pub fn text(&self, key: &str, text: &str) -> SseEvent {
        let quoted = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        self.chunk(&format!("{{\"{key}\":{quoted}}}"), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_written_once_per_stream_are_the_chunks_json_would_write() {
        let writer = ChunkWriter::new("chatcmpl-\"x\"", 7, "m");
        let text: serde_json::Value =
            serde_json::from_str(&writer.text("content", "a \"quoted\"\nline").data).expect("json");
        assert_eq!(
            text,
            serde_json::json!({"id": "chatcmpl-\"x\"", "object": "chat.completion.chunk", "created": 7,
                "model": "m", "choices": [{"index": 0, "delta": {"content": "a \"quoted\"\nline"},
                "logprobs": null, "finish_reason": null}], "usage": null})
        );
        let stop: serde_json::Value =
            serde_json::from_str(&writer.chunk("{}", Some("stop")).data).expect("json");
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
    }
}
