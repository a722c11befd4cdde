//! A Gemini `GenerateContentResponse` as a Chat Completions answer: the first candidate's
//! text parts become the message's `content`, its thought parts (`thought: true`) its
//! `reasoning_content`, its `functionCall` parts `tool_calls` (arguments as JSON text);
//! `finishReason` becomes `finish_reason` and `usageMetadata` the `usage` (see the module
//! docs of [`super`]).

use serde_json::{json, Value};

use super::{blocked, call_id, chat_usage, finish_reason, AnswerError};

/// The text, thoughts and calls of one candidate's parts.
#[derive(Default)]
pub(crate) struct Parts {
    pub(crate) text: String,
    pub(crate) thoughts: String,
    pub(crate) calls: Vec<Value>,
}

/// Reads the parts of the first candidate of an answer or chunk; `first_call` numbers the
/// calls (a stream numbers them across chunks).
pub(crate) fn read_parts(answer: &Value, response_id: &str, first_call: usize) -> Parts {
    let mut out = Parts::default();
    let parts = answer
        .get("candidates")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("content"))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            let index = first_call + out.calls.len();
            let name = call.get("name").and_then(Value::as_str).unwrap_or("");
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            out.calls.push(json!({
                "id": call_id(call, response_id, index),
                "type": "function",
                "function": {"name": name, "arguments": args.to_string()},
            }));
        } else if let Some(text) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                out.thoughts.push_str(text);
            } else {
                out.text.push_str(text);
            }
        }
    }
    out
}

/// The Chat Completions answer of a whole Gemini answer, named `public_model`.
pub fn convert(answer: &Value, public_model: &str, created: u64) -> Result<Value, AnswerError> {
    if !answer.is_object() {
        return Err(AnswerError::Malformed(
            "the answer is not a JSON object".into(),
        ));
    }
    if let Some(block) = blocked(answer) {
        return Err(block.into());
    }
    let Some(candidate) = answer.pointer("/candidates/0") else {
        return Err(AnswerError::Malformed(
            "an answer without candidates".into(),
        ));
    };
    let response_id = answer
        .get("responseId")
        .and_then(Value::as_str)
        .unwrap_or("gemini");
    let parts = read_parts(answer, response_id, 0);
    let reason = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .unwrap_or("STOP");
    let mut message = json!({
        "role": "assistant",
        "content": if parts.text.is_empty() && !parts.calls.is_empty() { Value::Null } else { Value::String(parts.text) },
        "refusal": null,
    });
    if !parts.thoughts.is_empty() {
        message["reasoning_content"] = Value::String(parts.thoughts);
    }
    let called = !parts.calls.is_empty();
    if called {
        message["tool_calls"] = Value::Array(parts.calls);
    }
    let mut out = json!({
        "id": format!("chatcmpl-{response_id}"),
        "object": "chat.completion",
        "created": created,
        "model": public_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reason, called),
        }],
    });
    if let Some(metadata) = answer.get("usageMetadata") {
        out["usage"] = chat_usage(metadata);
    }
    Ok(out)
}
