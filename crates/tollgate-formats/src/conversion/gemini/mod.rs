//! Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`,
//! `batchEmbedContents`), read and written as the gateway's hub formats: a Gemini provider
//! is sent what a Chat Completions (or OpenAI embeddings) request asks, translated here,
//! and its answers come back as Chat Completions answers and chunks, so every client
//! format reaches it through the existing translations (Messages and Responses to Chat).
//!
//! | module | direction |
//! |---|---|
//! | [`request`] | Chat Completions request → `GenerateContentRequest` |
//! | [`answer`] | `GenerateContentResponse` → Chat Completions answer; `usageMetadata` → `usage` |
//! | [`stream`] | `GenerateContentResponse` stream chunks → Chat Completions chunks |
//! | [`embed`] | OpenAI embeddings ↔ `batchEmbedContents` |
//!
//! Usage is carried exactly: `prompt_tokens` = `promptTokenCount` + `toolUsePromptTokenCount`
//! (cached tokens included, as OpenAI counts them), `cached_tokens` =
//! `cachedContentTokenCount`, `completion_tokens` = `candidatesTokenCount` +
//! `thoughtsTokenCount` (Gemini counts thoughts apart; OpenAI counts reasoning inside the
//! completion), `reasoning_tokens` = `thoughtsTokenCount`.
//!
//! A prompt or answer blocked by Gemini's safety filters (`promptFeedback.blockReason`, or a
//! `finishReason` such as `SAFETY`) is a [`Blocked`] error, never an empty success.

pub mod answer;
pub mod embed;
pub mod request;
pub mod stream;

use serde_json::{json, Value};

/// A prompt or answer Gemini refused to serve (its safety or policy filters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the provider blocked {what} ({reason})")]
pub struct Blocked {
    /// `the prompt` or `the answer`.
    pub what: &'static str,
    /// Gemini's reason, e.g. `SAFETY`, `PROHIBITED_CONTENT`.
    pub reason: String,
}

/// Why a Gemini answer could not be read as the hub format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("{0}")]
    Malformed(String),
}

/// The finish reasons that mean Gemini withheld the answer.
const BLOCKING: [&str; 7] = [
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
];

/// The first candidate of an answer or chunk (read without `Value::pointer`, which
/// allocates for every path segment: this runs once per streamed chunk).
pub(crate) fn candidate(answer: &Value) -> Option<&Value> {
    answer.get("candidates")?.get(0)
}

/// The block of a chunk or answer: its prompt feedback's, or its first candidate's finish
/// reason when that is a blocking one.
pub(crate) fn blocked(answer: &Value) -> Option<Blocked> {
    if let Some(reason) = answer
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)
    {
        return Some(Blocked {
            what: "the prompt",
            reason: reason.to_string(),
        });
    }
    let reason = candidate(answer)?
        .get("finishReason")
        .and_then(Value::as_str)?;
    BLOCKING.contains(&reason).then(|| Blocked {
        what: "the answer",
        reason: reason.to_string(),
    })
}

/// Chat Completions' `finish_reason` for Gemini's `finishReason`.
pub(crate) fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

fn count(usage: &Value, key: &str) -> u64 {
    usage.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Chat Completions' `usage` for Gemini's `usageMetadata` (see the module docs).
pub fn chat_usage(metadata: &Value) -> Value {
    let thoughts = count(metadata, "thoughtsTokenCount");
    let prompt = count(metadata, "promptTokenCount")
        .saturating_add(count(metadata, "toolUsePromptTokenCount"));
    let completion = count(metadata, "candidatesTokenCount").saturating_add(thoughts);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": count(metadata, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    })
}

/// The tool-call id of the `index`-th function call of an answer: Gemini's own `id` when it
/// gives one.
pub(crate) fn call_id(call: &Value, response_id: &str, index: usize) -> String {
    match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("call_{response_id}_{index}"),
    }
}

#[cfg(test)]
mod tests;
