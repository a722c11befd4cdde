//! AWS Bedrock's Converse API (`/model/{modelId}/converse`, `/converse-stream`), read and
//! written as the gateway's hub format: a Bedrock provider serving a model through Converse
//! is sent what a Chat Completions request asks, translated here, and its answers and
//! streams (event-stream messages, decoded by [`crate::eventstream`]) come back as Chat
//! Completions, so Messages and Responses clients reach it through the existing
//! translations. (Anthropic models on Bedrock take the Messages body itself through
//! InvokeModel; see the provider adapter.)
//!
//! | module | direction |
//! |---|---|
//! | [`request`] | Chat Completions request → `ConverseRequest` |
//! | [`answer`] | `ConverseResponse` → Chat Completions answer |
//! | [`stream`] | `ConverseStream` events → Chat Completions chunks |
//!
//! Usage is carried exactly: Bedrock's `inputTokens` leaves out the cached tokens (as
//! Anthropic's `input_tokens` does), so `prompt_tokens` = `inputTokens` +
//! `cacheReadInputTokens` + `cacheWriteInputTokens`, `cached_tokens` =
//! `cacheReadInputTokens`, `cache_write_tokens` = `cacheWriteInputTokens`,
//! `completion_tokens` = `outputTokens`.
//!
//! `stopReason`: `end_turn` and `stop_sequence` → `stop`, `tool_use` → `tool_calls`,
//! `max_tokens` → `length`, `guardrail_intervened` and `content_filtered` →
//! `content_filter`.

pub mod answer;
pub mod request;
pub mod stream;

use serde_json::{json, Value};

fn count(usage: &Value, key: &str) -> u64 {
    usage.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Chat Completions' `usage` for Converse's `usage` (see the module docs).
pub fn chat_usage(usage: &Value) -> Value {
    let read = count(usage, "cacheReadInputTokens");
    let write = count(usage, "cacheWriteInputTokens");
    let prompt = count(usage, "inputTokens")
        .saturating_add(read)
        .saturating_add(write);
    let completion = count(usage, "outputTokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// Chat Completions' `finish_reason` for Converse's `stopReason`.
pub(crate) fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests;
