//! Token usage as each provider reports it, read from whole responses and from streams in flight.
//!
//! All formats are normalised into one [`Usage`] whose `input_tokens` counts **every** input
//! token, cached or not; the cached and cache-write parts are reported beside it, so a price can
//! be computed as `(input - cached - cache_write) * input_price + cached * cached_price + ...`.
//!
//! | format | `input_tokens` | `cached_input_tokens` | `cache_write_tokens` | `output_tokens` |
//! |---|---|---|---|---|
//! | Chat Completions | `prompt_tokens` | `prompt_tokens_details.cached_tokens` | `prompt_tokens_details.cache_write_tokens` | `completion_tokens` |
//! | Responses | `input_tokens` | `input_tokens_details.cached_tokens` | `input_tokens_details.cache_write_tokens` | `output_tokens` |
//! | Anthropic Messages | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` | `cache_read_input_tokens` | `cache_creation_input_tokens` | `output_tokens` |
//! | embeddings | `prompt_tokens` | 0 | 0 | 0 |
//!
//! `reasoning_tokens` (part of `output_tokens`, for metrics) is Chat Completions'
//! `completion_tokens_details.reasoning_tokens` and Responses'
//! `output_tokens_details.reasoning_tokens`; Anthropic does not report it apart.
//!
//! Counts that are missing, negative or not numbers read as 0; sums saturate.

use std::borrow::Cow;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::hosted::HostedCalls;
use crate::sse::SseEvent;
use crate::Format;

/// Bytes of text per output token when the gateway estimates output it relayed but the
/// provider did not report: English runs at about four bytes a token in the common BPE
/// tokenizers, code and most other scripts at fewer, so three errs towards charging.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 3;
/// Most bytes of text one token covers on average over a stream, for a lower bound of the
/// tokens a stream carried.
pub const MAX_BYTES_PER_TOKEN: u64 = 8;

/// Tokens used by one request, normalised across formats.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Usage {
    /// All input tokens, **including** the cached and cache-write ones.
    pub input_tokens: u64,
    /// The part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// The part of `input_tokens` written into the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// Generated tokens, reasoning included.
    pub output_tokens: u64,
    /// The part of `output_tokens` spent on reasoning, where the provider tells it (for
    /// metrics only: reasoning is priced as output).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Input tokens that were neither read from nor written to a cache.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens)
            .saturating_sub(self.cache_write_tokens)
    }

    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Reads a token count: a non-negative integer (or integral float, as some servers send).
pub(crate) fn count(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

fn count_at(value: &Value, path: &[&str]) -> u64 {
    let mut current = value;
    for key in path {
        match current.get(key) {
            Some(next) => current = next,
            None => return 0,
        }
    }
    count(Some(current)).unwrap_or(0)
}

fn usage_object(response: &Value) -> Option<&Value> {
    response.get("usage").filter(|usage| usage.is_object())
}

/// Reads a Chat Completions `usage` object (the object itself, not the response).
pub fn from_chat_usage(usage: &Value) -> Usage {
    Usage {
        input_tokens: count_at(usage, &["prompt_tokens"]),
        cached_input_tokens: count_at(usage, &["prompt_tokens_details", "cached_tokens"]),
        cache_write_tokens: count_at(usage, &["prompt_tokens_details", "cache_write_tokens"]),
        output_tokens: count_at(usage, &["completion_tokens"]),
        reasoning_tokens: count_at(usage, &["completion_tokens_details", "reasoning_tokens"]),
    }
}

/// Reads a Responses `usage` object (the object itself, not the response).
pub fn from_responses_usage(usage: &Value) -> Usage {
    Usage {
        input_tokens: count_at(usage, &["input_tokens"]),
        cached_input_tokens: count_at(usage, &["input_tokens_details", "cached_tokens"]),
        cache_write_tokens: count_at(usage, &["input_tokens_details", "cache_write_tokens"]),
        output_tokens: count_at(usage, &["output_tokens"]),
        reasoning_tokens: count_at(usage, &["output_tokens_details", "reasoning_tokens"]),
    }
}

/// Reads an Anthropic `usage` object (the object itself, not the message).
pub fn from_anthropic_usage(usage: &Value) -> Usage {
    AnthropicCounts::default().merged(usage).to_usage()
}

/// Usage of a Chat Completions response; `None` when it carries no `usage` object.
pub fn from_chat_response(response: &Value) -> Option<Usage> {
    usage_object(response).map(from_chat_usage)
}

/// Usage of a Responses response; `None` when it carries no `usage` object.
pub fn from_responses_response(response: &Value) -> Option<Usage> {
    usage_object(response).map(from_responses_usage)
}

/// Usage of an Anthropic Messages response; `None` when it carries no `usage` object.
pub fn from_anthropic_response(response: &Value) -> Option<Usage> {
    usage_object(response).map(from_anthropic_usage)
}

/// Usage of an embeddings response (`prompt_tokens` only); `None` without a `usage` object.
pub fn from_embeddings_response(response: &Value) -> Option<Usage> {
    usage_object(response).map(|usage| Usage {
        input_tokens: count_at(usage, &["prompt_tokens"]),
        ..Usage::default()
    })
}

/// Usage of a whole (non-streamed) response in `format`.
pub fn from_response(format: Format, response: &Value) -> Option<Usage> {
    match format {
        Format::ChatCompletions => from_chat_response(response),
        Format::Responses => from_responses_response(response),
        Format::AnthropicMessages => from_anthropic_response(response),
    }
}

/// Anthropic reports the parts of the input separately and repeats them, updated, in
/// `message_delta`; a field absent from a later event keeps its earlier value.
#[derive(Debug, Clone, Copy, Default)]
struct AnthropicCounts {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
}

impl AnthropicCounts {
    fn merged(mut self, usage: &Value) -> Self {
        if let Some(n) = count(usage.get("input_tokens")) {
            self.input = n;
        }
        if let Some(n) = count(usage.get("cache_read_input_tokens")) {
            self.cache_read = n;
        }
        if let Some(n) = count(usage.get("cache_creation_input_tokens")) {
            self.cache_creation = n;
        }
        if let Some(n) = count(usage.get("output_tokens")) {
            self.output = n;
        }
        self
    }

    fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_creation),
            cached_input_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation,
            output_tokens: self.output,
            reasoning_tokens: 0,
        }
    }
}

/// Follows a streamed response of one format and keeps the latest usage it reported.
/// Legacy completions streams (`POST /v1/completions`) are read as Chat Completions: the
/// same usage chunk and `[DONE]`, their text in `choices[].text`.
///
/// Feed it every upstream event, before any conversion. Chat Completions streams carry usage on
/// the last chunk (when `stream_options.include_usage` was requested), Responses streams on the
/// `response.completed`/`response.incomplete`/`response.failed` event, Anthropic streams in
/// `message_start` and then, cumulatively, in `message_delta`.
#[derive(Debug, Clone)]
pub struct UsageTracker {
    format: Format,
    usage: Option<Usage>,
    anthropic: AnthropicCounts,
    final_seen: bool,
    content_deltas: u64,
    text_bytes: u64,
    hosted: HostedCalls,
}

impl UsageTracker {
    /// A tracker for an upstream stream in `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            usage: None,
            anthropic: AnthropicCounts::default(),
            final_seen: false,
            content_deltas: 0,
            text_bytes: 0,
            hosted: HostedCalls::default(),
        }
    }

    /// Looks at one upstream event. Events that are not JSON (such as `[DONE]`) are ignored.
    pub fn observe(&mut self, event: &SseEvent) {
        if event.is_done() {
            return;
        }
        if let Ok(value) = serde_json::from_str::<Value>(&event.data) {
            self.observe_value(event.event.as_deref(), &value);
        }
    }

    /// Like [`observe`](Self::observe), for an event whose data the caller already parsed.
    pub fn observe_value(&mut self, event_name: Option<&str>, data: &Value) {
        match self.format {
            Format::ChatCompletions => self.observe_chat(data),
            Format::Responses => self.observe_responses(event_name, data),
            Format::AnthropicMessages => self.observe_anthropic(event_name, data),
        }
    }

    fn observe_chat(&mut self, chunk: &Value) {
        if let Some(usage) = usage_object(chunk) {
            self.usage = Some(from_chat_usage(usage));
            self.final_seen = true;
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for choice in choices {
            // Legacy completions chunks (`text_completion`) carry their text in `text`;
            // they share the rest (usage, `[DONE]`) with Chat Completions.
            self.count_text(choice.get("text"));
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            for key in ["content", "refusal", "reasoning_content", "reasoning"] {
                self.count_text(delta.get(key));
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    self.count_text(call.get("function").and_then(|f| f.get("arguments")));
                }
            }
        }
    }

    fn observe_responses(&mut self, event_name: Option<&str>, data: &Value) {
        let kind = data.get("type").and_then(Value::as_str).or(event_name);
        let Some(kind) = kind else { return };
        match kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(usage) = data.get("response").and_then(usage_object) {
                    self.usage = Some(from_responses_usage(usage));
                    self.final_seen = true;
                }
            }
            "response.output_item.done" => {
                if let Some(item) = data.get("item") {
                    self.hosted.count_responses_item(item);
                }
            }
            kind if kind.ends_with(".delta") => {
                let text = data.get("delta");
                if text.and_then(Value::as_str).is_some() {
                    self.count_text(text);
                } else {
                    self.content_deltas += 1;
                }
            }
            _ => {}
        }
    }

    fn observe_anthropic(&mut self, event_name: Option<&str>, data: &Value) {
        let kind = data.get("type").and_then(Value::as_str).or(event_name);
        match kind {
            Some("message_start") => {
                if let Some(usage) = data.get("message").and_then(usage_object) {
                    self.anthropic = self.anthropic.merged(usage);
                    self.usage = Some(self.anthropic.to_usage());
                }
            }
            Some("message_delta") => {
                if let Some(usage) = usage_object(data) {
                    self.anthropic = self.anthropic.merged(usage);
                    self.usage = Some(self.anthropic.to_usage());
                    self.final_seen = true;
                }
            }
            Some("content_block_delta") => {
                let delta = data.get("delta");
                let text = ["text", "partial_json", "thinking"]
                    .iter()
                    .find_map(|k| delta.and_then(|d| d.get(*k)));
                if text.is_some() {
                    self.count_text(text);
                } else {
                    self.content_deltas += 1;
                }
            }
            Some("content_block_start") => {
                if let Some(block) = data.get("content_block") {
                    self.hosted.count_anthropic_block(block);
                }
            }
            _ => {}
        }
    }

    /// Counts one piece of relayed text (a content delta), if it is a non-empty string.
    fn count_text(&mut self, value: Option<&Value>) {
        if let Some(text) = value.and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.content_deltas += 1;
            self.text_bytes += text.len() as u64;
        }
    }

    /// Bytes of text (content, refusal, reasoning, tool arguments) the stream carried.
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// The hosted-tool calls the stream has shown so far.
    pub fn hosted_calls(&self) -> HostedCalls {
        self.hosted
    }

    /// The latest usage the stream reported, if any yet. For Anthropic this exists from
    /// `message_start` on, with a provisional output count until `message_delta`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the stream delivered its final usage report (chat usage chunk, Responses terminal
    /// event, Anthropic `message_delta`).
    pub fn has_final_usage(&self) -> bool {
        self.final_seen
    }

    /// How many content deltas (text, refusal, reasoning, tool-argument pieces) the stream has
    /// carried: a rough output-token estimate for a stream cut before its usage arrived.
    pub fn output_tokens_seen_so_far(&self) -> u64 {
        self.content_deltas
    }

    /// The final usage if it arrived; otherwise the best estimate: what was reported so far
    /// (Anthropic's `message_start` input counts) with the output raised to what was
    /// relayed: a token per content delta, and at least a token per [`ESTIMATE_BYTES_PER_TOKEN`]
    /// bytes of text (rounded up), so that an estimate errs towards charging.
    pub fn usage_or_estimate(&self) -> Usage {
        let mut usage = self.usage.unwrap_or_default();
        if !self.final_seen {
            let relayed = self
                .content_deltas
                .max(self.text_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN));
            usage.output_tokens = usage.output_tokens.max(relayed);
        }
        usage
    }

    /// Output tokens the stream has surely carried: a token per content delta (providers
    /// stream a token or more per delta), and at least one per [`MAX_BYTES_PER_TOKEN`]
    /// bytes of text. A lower bound, so that a stream is never cut before its limit.
    pub fn output_tokens_at_least(&self) -> u64 {
        self.content_deltas
            .max(self.text_bytes / MAX_BYTES_PER_TOKEN)
    }
}

/// Bytes of generated text in a whole answer of any format: message content, refusals,
/// reasoning and thinking text, tool-call arguments and inputs. What the gateway counts
/// when a provider answered without usage.
pub fn answer_text_bytes(answer: &Value) -> u64 {
    const TEXT: [&str; 8] = [
        "content",
        "text",
        "refusal",
        "arguments",
        "thinking",
        "reasoning_content",
        "reasoning",
        "input",
    ];
    fn walk(value: &Value, counted: bool) -> u64 {
        match value {
            Value::String(s) if counted => s.len() as u64,
            Value::Array(items) => items.iter().map(|v| walk(v, counted)).sum(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| match v {
                    // A tool's input is generated JSON: its text counts whole.
                    Value::Object(_) if k == "input" => v.to_string().len() as u64,
                    _ => walk(v, counted || TEXT.contains(&k.as_str())),
                })
                .sum(),
            _ => 0,
        }
    }
    walk(answer, false)
}

/// Whether a parsed Chat Completions chunk is the usage-only chunk sent at the end of a stream
/// with `include_usage` (empty `choices`, `usage` object present).
pub fn is_usage_only_chunk(chunk: &Value) -> bool {
    let no_choices = match chunk.get("choices") {
        None | Some(Value::Null) => true,
        Some(Value::Array(choices)) => choices.is_empty(),
        Some(_) => false,
    };
    no_choices && usage_object(chunk).is_some()
}

/// [`is_usage_only_chunk`] on raw event data; `false` when the data is not JSON.
pub fn is_usage_only_chunk_data(data: &str) -> bool {
    // Cheap pre-check: every chunk of a long stream passes through here.
    data.contains("\"usage\"")
        && serde_json::from_str::<Value>(data).is_ok_and(|chunk| is_usage_only_chunk(&chunk))
}

/// Removes the top-level `usage` key from a chunk's JSON text, keeping every other member
/// byte for byte and in order. Returns the input unchanged (borrowed) when there is no such key
/// or the text is not a JSON object.
///
/// Used when Tollgate asked the upstream for `include_usage` but the client did not: the real
/// API then sends chunks without any `usage` key.
pub fn strip_usage_field(data: &str) -> Cow<'_, str> {
    if !data.contains("\"usage\"") {
        return Cow::Borrowed(data);
    }
    let Ok(object) = serde_json::from_str::<RawObject<'_>>(data) else {
        return Cow::Borrowed(data);
    };
    if object.get("usage").is_none() {
        return Cow::Borrowed(data);
    }
    Cow::Owned(object.rewrite(&[], &["usage"]))
}

/// A JSON object's top-level members in document order, values kept as raw text, so
/// an object can be read cheaply and written back with every untouched member byte for byte.
#[derive(Debug)]
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawObject<'a> {
    /// The raw value of a member (the last one, if the name repeats).
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// The object as JSON text with the members of `replace` set to new raw JSON values
    /// (added at the end if absent) and the members of `remove` left out.
    pub fn rewrite(&self, replace: &[(&str, String)], remove: &[&str]) -> String {
        let mut out = String::with_capacity(256);
        out.push('{');
        let push = |out: &mut String, key: &str, value: &str| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&Value::String(key.to_string()).to_string());
            out.push(':');
            out.push_str(value);
        };
        for (key, value) in &self.0 {
            if remove.contains(&key.as_ref()) {
                continue;
            }
            match replace.iter().find(|(k, _)| k == key) {
                Some((_, new)) => push(&mut out, key, new),
                None => push(&mut out, key, value.get()),
            }
        }
        for (key, value) in replace {
            if self.get(key).is_none() {
                push(&mut out, key, value);
            }
        }
        out.push('}');
        out
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((Key(key), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(RawObject(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A member name, borrowed from the text unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// For a Chat Completions request: whether the client itself asked for usage in its stream
/// (`stream_options.include_usage: true`).
pub fn chat_request_wants_usage(request: &Value) -> bool {
    request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// For a streamed Chat Completions request about to go upstream: sets
/// `stream_options.include_usage` to `true` so the stream can be metered, and returns whether the
/// client had asked for it (if not, strip the usage chunk and `usage` keys on the way back).
/// Requests that are not streamed are left as they are.
pub fn ensure_chat_stream_usage(request: &mut Value) -> bool {
    let wanted = chat_request_wants_usage(request);
    let streaming = request.get("stream").and_then(Value::as_bool) == Some(true);
    if let (true, Some(object)) = (streaming, request.as_object_mut()) {
        let options = object
            .entry("stream_options")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !options.is_object() {
            *options = Value::Object(serde_json::Map::new());
        }
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }
    }
    wanted
}

#[cfg(test)]
mod tests;
