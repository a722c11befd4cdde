//! Wire formats of the AI providers Tollgate speaks: OpenAI Chat Completions, OpenAI Responses,
//! OpenAI embeddings and Anthropic Messages.
//!
//! Everything here is pure and synchronous: JSON [`serde_json::Value`]s and byte chunks in,
//! values and ready-to-send bytes out, so the gateway can call it from any task and the tests
//! need no server.
//!
//! - [`sse`]: an incremental Server-Sent-Events decoder with a frame-size limit, and the encoder.
//! - [`usage`]: token usage read from whole responses and, in flight, from streams.
//! - [`conversion`]: translation of requests, responses and streams between formats.
//! - [`frames`]: the in-stream error event of each client format.
//! - [`hosted`]: calls of hosted tools (charged per call) counted in an answer.
//! - [`model_name`]: the model an answer names, replaced by the one the client knows.
//! - [`scan`]: chosen top-level members of a JSON object found as its bytes pass.
//! - [`estimate`]: the input-token bound of a request, read from its body before it is sent.
//!
//! Inputs are treated as hostile: nothing in this crate panics on bad input; it returns an error
//! or skips what it cannot read, as documented on each function.
//!
//! # A translated, metered stream
//! An Anthropic-format client, a model served by an OpenAI-compatible provider:
//! ```
//! use tollgate_formats::conversion::{messages_to_chat, StreamConverter};
//! use tollgate_formats::{sse::SseDecoder, usage::UsageTracker, Format};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client_request = serde_json::json!({"model": "gpt-4.1-mini", "max_tokens": 100,
//!     "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
//! let upstream_request = messages_to_chat::convert_request(&client_request, "gpt-4.1-mini")?;
//! assert_eq!(upstream_request.body["stream_options"]["include_usage"], true);
//! assert_eq!(upstream_request.header_value(), None); // nothing was dropped
//!
//! let upstream_body: [&[u8]; 3] = [
//!     b"data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel",
//!     b"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"chatcmpl-1\",\"choices\":[],",
//!     b"\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
//! ];
//! let mut decoder = SseDecoder::new(1 << 20);
//! let mut tracker = UsageTracker::new(Format::ChatCompletions);
//! let mut converter = messages_to_chat::ResponseStream::new("gpt-4.1-mini");
//! let mut to_client = Vec::new();
//! for chunk in upstream_body {
//!     for event in decoder.push(chunk)? {
//!         tracker.observe(&event); // the upstream's own usage, before any conversion
//!         match converter.push(&event) {
//!             Ok(frames) => to_client.extend(frames),
//!             Err(error) => to_client.push(converter.error_frame(&error.message)),
//!         }
//!     }
//! }
//! to_client.extend(converter.finish());
//! assert_eq!(tracker.usage().map(|u| u.output_tokens), Some(1));
//! assert!(to_client.last().is_some_and(|f| f.starts_with(b"event: message_stop")));
//! # Ok(())
//! # }
//! ```

pub mod conversion;
pub mod estimate;
pub mod eventstream;
pub mod frames;
pub mod hosted;
pub mod model_name;
pub mod scan;
pub mod sse;
pub mod usage;

pub use conversion::{ConversionError, StreamConverter};
pub use sse::{SseDecoder, SseError, SseEvent};
pub use usage::{RawObject, Usage, UsageTracker};

/// An API format for text generation, as spoken by a client or an upstream provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    ChatCompletions,
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
    /// Anthropic Messages (`POST /v1/messages`).
    AnthropicMessages,
}
