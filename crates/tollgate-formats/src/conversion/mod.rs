//! Translation between formats: a client speaks one API, the model's provider another.
//!
//! One module per direction, named client-to-upstream; each converts the client's request into
//! the upstream's format, and the upstream's response (whole or streamed) back:
//!
//! | module | client | upstream |
//! |---|---|---|
//! | [`messages_to_chat`] | Anthropic Messages | OpenAI Chat Completions |
//! | [`chat_to_messages`] | OpenAI Chat Completions | Anthropic Messages |
//! | [`responses_to_chat`] | OpenAI Responses | OpenAI Chat Completions |
//! | [`responses_to_messages`] | OpenAI Responses | Anthropic Messages |
//!
//! Providers with a wire format of their own are read and written as Chat Completions by
//! [`gemini`] (see [`native`]).
//!
//! Every field of every direction, and why it is mapped, dropped or refused, is tabled in
//! `docs/translation.md`.
//!
//! # Rules every direction follows
//! - **Nothing is dropped silently that changes what the model does.** A field, content type or
//!   value that has no equivalent upstream is a [`ConversionError`] naming it (`param` is a path
//!   such as `messages[2].content[0].type`); the gateway returns it as a 400.
//! - **Hints that change nothing the client can rely on are dropped, and reported**: each module
//!   lists them (prompt-cache markers, `service_tier`, `client_metadata`, ...), and every
//!   `convert_request` returns the paths it dropped in [`Converted::dropped`], which the gateway
//!   sends back in the [`DROPPED_FIELDS_HEADER`] response header. Neutral values that ask for
//!   the default (`n: 1`, `store: false`, `truncation: "disabled"`) are honoured, not dropped.
//! - **An offered tool the upstream cannot run is dropped, a demanded one is refused**: agents
//!   offer built-in tools (`web_search`, `local_shell`, ...) on every request; without them the
//!   model still answers, so they are dropped and reported; a `tool_choice` that forces such a
//!   tool is a [`ConversionError`].
//! - **Unknown top-level fields are errors**: a new API feature must be translated on purpose,
//!   not ignored by accident. `null` values count as absent everywhere.
//! - **Streams are always metered**: a Chat Completions upstream is asked for
//!   `stream_options.include_usage`; the gateway reads usage from the upstream events with a
//!   [`UsageTracker`](crate::usage::UsageTracker) before they are converted.
//! - **Ids are derived from the upstream ids** (`chatcmpl-X` ↔ `msg_X` ↔ `resp_X`), so the same
//!   upstream answer always converts to the same bytes. Tool-call ids pass through unchanged, so
//!   the client can send them back.
//! - **Models**: the request gets the `upstream_model` name, responses show the public model id.
//! - **Max tokens to a Chat Completions upstream** are sent as `max_completion_tokens`, the
//!   current OpenAI name (reasoning models reject `max_tokens`).

pub mod bedrock;
pub mod chat_to_messages;
pub mod gemini;
pub mod messages_to_chat;
pub mod native;
pub mod responses_to_chat;
pub mod responses_to_messages;

mod responses_common;

use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::sse::{self, SseEvent};
use crate::usage::Usage;

pub(crate) type Map = serde_json::Map<String, Value>;

/// A part of a request or response that cannot be expressed in the other format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{param}: {message}")]
pub struct ConversionError {
    /// Path of the offending field, such as `messages[2].content[0].type`; empty for the body.
    pub param: String,
    /// What is wrong, in words a client can act on.
    pub message: String,
}

impl ConversionError {
    /// An error about the field at `param`.
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The OpenAI-style error body (`{"error": {...}}`) for a 400 response.
    pub fn to_openai_body(&self) -> Value {
        json!({"error": {
            "message": self.to_string(),
            "type": "invalid_request_error",
            "param": self.param,
            "code": "unsupported_parameter",
        }})
    }

    /// The Anthropic-style error body (`{"type": "error", ...}`) for a 400 response.
    pub fn to_anthropic_body(&self) -> Value {
        json!({"type": "error", "error": {
            "type": "invalid_request_error",
            "message": self.to_string(),
        }})
    }
}

/// Name of the response header in which the gateway lists the fields a translation dropped.
pub const DROPPED_FIELDS_HEADER: &str = "x-tollgate-dropped-fields";

/// The most bytes [`Converted::header_value`] returns; a longer list ends with `...`.
pub const DROPPED_FIELDS_HEADER_MAX: usize = 2048;

/// A translated request, and the fields of the client's request that were dropped as hints.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The request in the upstream's format.
    pub body: Value,
    /// Paths of the dropped fields (`tools[3].defer_loading`, `messages[0].content[1].cache_control`),
    /// in the order they were met; empty when nothing was dropped.
    pub dropped: Vec<String>,
}

impl Converted {
    /// The value of the [`DROPPED_FIELDS_HEADER`] header, `None` when nothing was dropped: the
    /// paths with indices written `[*]` (so a marker on fifty blocks is named once),
    /// deduplicated, joined with `, `, at most [`DROPPED_FIELDS_HEADER_MAX`] bytes.
    pub fn header_value(&self) -> Option<String> {
        let mut seen: Vec<String> = Vec::new();
        for path in &self.dropped {
            let general = generalize_path(path);
            if !seen.contains(&general) {
                seen.push(general);
            }
        }
        let mut out = String::new();
        for path in seen {
            let separator = if out.is_empty() { "" } else { ", " };
            if out.len() + separator.len() + path.len() > DROPPED_FIELDS_HEADER_MAX - 5 {
                out.push_str(", ...");
                break;
            }
            out.push_str(separator);
            out.push_str(&path);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// `tools[3].x` → `tools[*].x`; header values stay printable ASCII (other characters become `?`).
fn generalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[*");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// The fields a translation drops, collected while it runs.
#[derive(Debug, Default)]
pub(crate) struct Dropped(pub(crate) Vec<String>);

impl Dropped {
    /// Records that the field at `path` was dropped.
    pub(crate) fn push(&mut self, path: impl Into<String>) {
        self.0.push(path.into());
    }

    pub(crate) fn finish(self, body: Map) -> Converted {
        Converted {
            body: Value::Object(body),
            dropped: self.0,
        }
    }
}

/// Converts an upstream event stream into the client's format, one event at a time.
///
/// Every method returns complete, ready-to-send SSE frames. After the stream has ended (the
/// terminal frames were produced, or an error frame), `push` and `finish` return nothing.
pub trait StreamConverter {
    /// Converts one upstream event into zero or more client frames. An error means the upstream
    /// sent something that cannot be translated; send [`error_frame`](Self::error_frame) then.
    fn push(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, ConversionError>;

    /// Call when the upstream stream ended. Closes the client stream normally if the upstream
    /// reached its end, or with an error frame if it was cut short.
    fn finish(&mut self) -> Vec<Bytes>;

    /// An in-stream error event in the client's format; the client stream is over after it.
    fn error_frame(&mut self, message: &str) -> Bytes;
}

/// Seconds since the Unix epoch, for the `created` field the converters take as a parameter.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the directions.

pub(crate) fn err<T>(
    param: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, ConversionError> {
    Err(ConversionError::new(param, message))
}

/// `base.key`, or `key` at the top level.
pub(crate) fn field_path(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

/// `base[index]`.
pub(crate) fn index_path(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// The field `key` of `object`, treating `null` as absent.
pub(crate) fn present<'a>(object: &'a Map, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

pub(crate) fn as_object<'a>(value: &'a Value, param: &str) -> Result<&'a Map, ConversionError> {
    value
        .as_object()
        .ok_or_else(|| ConversionError::new(param, "must be an object"))
}

pub(crate) fn as_array<'a>(
    value: &'a Value,
    param: &str,
) -> Result<&'a Vec<Value>, ConversionError> {
    value
        .as_array()
        .ok_or_else(|| ConversionError::new(param, "must be an array"))
}

pub(crate) fn as_str<'a>(value: &'a Value, param: &str) -> Result<&'a str, ConversionError> {
    value
        .as_str()
        .ok_or_else(|| ConversionError::new(param, "must be a string"))
}

pub(crate) fn as_bool(value: &Value, param: &str) -> Result<bool, ConversionError> {
    value
        .as_bool()
        .ok_or_else(|| ConversionError::new(param, "must be a boolean"))
}

pub(crate) fn as_number(value: &Value, param: &str) -> Result<f64, ConversionError> {
    value
        .as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| ConversionError::new(param, "must be a number"))
}

pub(crate) fn as_count(value: &Value, param: &str) -> Result<u64, ConversionError> {
    value
        .as_u64()
        .ok_or_else(|| ConversionError::new(param, "must be a non-negative integer"))
}

/// A required string field of `object`.
pub(crate) fn required_str<'a>(
    object: &'a Map,
    key: &str,
    base: &str,
) -> Result<&'a str, ConversionError> {
    let param = field_path(base, key);
    match present(object, key) {
        Some(value) => as_str(value, &param),
        None => err(param, "is required"),
    }
}

/// The `type` of a content block or item, required.
pub(crate) fn block_type<'a>(block: &'a Map, base: &str) -> Result<&'a str, ConversionError> {
    required_str(block, "type", base)
}

/// Splits `data:<media type>;base64,<data>` into its media type and data.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// The distinctive part of an upstream id, without its format's prefix; random when the upstream
/// sent no id.
pub(crate) fn id_suffix(id: Option<&str>) -> String {
    let id = id.unwrap_or_default();
    let stripped = ["chatcmpl-", "msg_", "resp_"]
        .iter()
        .find_map(|prefix| id.strip_prefix(prefix))
        .unwrap_or(id);
    if stripped.is_empty() {
        random_suffix()
    } else {
        stripped.to_owned()
    }
}

/// 64 unpredictable bits as hex, from the standard library's randomly keyed hasher.
pub(crate) fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

/// Parses one upstream event's data as JSON.
pub(crate) fn parse_event(event: &SseEvent) -> Result<Value, ConversionError> {
    serde_json::from_str(&event.data)
        .map_err(|_| ConversionError::new("stream", "the upstream sent an event that is not JSON"))
}

/// The message of an upstream in-stream error object, whatever its shape.
pub(crate) fn upstream_error_message(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .unwrap_or("the upstream provider reported an error")
        .to_owned()
}

/// Why an upstream error event ends the stream: Anthropic's `overloaded_error` is kept as
/// such (clients back off on it), anything else is an upstream failure.
pub(crate) fn upstream_failure(error: &Value) -> crate::frames::StreamFailure {
    match error.get("type").and_then(Value::as_str) {
        Some("overloaded_error") => crate::frames::StreamFailure::Overloaded,
        _ => crate::frames::StreamFailure::Upstream,
    }
}

/// One SSE frame with `value` as its data.
pub(crate) fn frame(event: Option<&str>, value: &Value) -> Bytes {
    sse::encode_json(event, value)
}

/// Chat Completions `finish_reason` → Anthropic `stop_reason`.
pub(crate) fn chat_finish_to_anthropic(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic `stop_reason` → Chat Completions `finish_reason`.
pub(crate) fn anthropic_stop_to_chat(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A Chat Completions `usage` object.
pub(crate) fn chat_usage_json(usage: &Usage) -> Value {
    let mut details = Map::new();
    details.insert("cached_tokens".into(), usage.cached_input_tokens.into());
    if usage.cache_write_tokens > 0 {
        details.insert("cache_write_tokens".into(), usage.cache_write_tokens.into());
    }
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens(),
        "prompt_tokens_details": details,
    })
}

/// An Anthropic `usage` object (its `input_tokens` excludes the cache parts).
pub(crate) fn anthropic_usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.uncached_input_tokens(),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    })
}

/// A Responses `usage` object.
pub(crate) fn responses_usage_json(usage: &Usage, reasoning_tokens: u64) -> Value {
    let mut input_details = Map::new();
    input_details.insert("cached_tokens".into(), usage.cached_input_tokens.into());
    if usage.cache_write_tokens > 0 {
        input_details.insert("cache_write_tokens".into(), usage.cache_write_tokens.into());
    }
    json!({
        "input_tokens": usage.input_tokens,
        "input_tokens_details": input_details,
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.total_tokens(),
    })
}

/// Text of a Chat Completions message `content`: a string, or an array of `text` (and, when
/// `allow_refusal`, `refusal`) parts. Other part types are errors.
pub(crate) fn chat_text_content(
    content: &Value,
    param: &str,
    allow_refusal: bool,
) -> Result<Vec<String>, ConversionError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                let part_param = index_path(param, index);
                let part = as_object(part, &part_param)?;
                match block_type(part, &part_param)? {
                    "text" => texts.push(required_str(part, "text", &part_param)?.to_owned()),
                    "refusal" if allow_refusal => {
                        texts.push(required_str(part, "refusal", &part_param)?.to_owned())
                    }
                    other => {
                        return err(
                            field_path(&part_param, "type"),
                            format!("content parts of type \"{other}\" cannot be translated here; only text is supported"),
                        )
                    }
                }
            }
            Ok(texts)
        }
        _ => err(param, "must be a string or an array of content parts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_split() {
        assert_eq!(
            parse_data_url("data:image/png;base64,iVBOR"),
            Some(("image/png", "iVBOR"))
        );
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://example.com/cat.png"), None);
    }

    #[test]
    fn dropped_header_generalizes_dedups_and_caps() {
        let converted = Converted {
            body: Value::Null,
            dropped: vec![
                "messages[0].content[1].cache_control".into(),
                "messages[12].content[0].cache_control".into(),
                "client_metadata".into(),
                "tools[é]".into(),
            ],
        };
        assert_eq!(
            converted.header_value().as_deref(),
            Some("messages[*].content[*].cache_control, client_metadata, tools[*]")
        );
        let many = Converted {
            body: Value::Null,
            dropped: (0..500).map(|i| format!("field_{i}")).collect(),
        };
        let header = many.header_value().unwrap_or_default();
        assert!(
            header.len() <= DROPPED_FIELDS_HEADER_MAX,
            "{}",
            header.len()
        );
        assert!(header.ends_with(", ..."));
        let none = Converted {
            body: Value::Null,
            dropped: Vec::new(),
        };
        assert_eq!(none.header_value(), None);
    }

    #[test]
    fn id_suffixes() {
        assert_eq!(id_suffix(Some("chatcmpl-abc")), "abc");
        assert_eq!(id_suffix(Some("msg_01X")), "01X");
        assert_eq!(id_suffix(Some("other")), "other");
        assert_eq!(id_suffix(Some("")).len(), 16);
        assert_ne!(id_suffix(None), id_suffix(None));
    }
}
