//! A Bedrock `ConverseResponse` as a Chat Completions answer: the output message's `text`
//! blocks become `content`, its `reasoningContent` blocks `reasoning_content`, its
//! `toolUse` blocks `tool_calls` (input as JSON text, Bedrock's `toolUseId` as the id);
//! `stopReason` becomes `finish_reason` and `usage` the usage (see [`super`]).

use serde_json::{json, Value};

use super::{chat_usage, finish_reason};

/// The Chat Completions answer of a whole Converse answer, named `public_model`; `Err`
/// names what is missing.
pub fn convert(answer: &Value, public_model: &str, created: u64) -> Result<Value, String> {
    let Some(content) = answer
        .pointer("/output/message/content")
        .and_then(Value::as_array)
    else {
        return Err("an answer without output.message.content".into());
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(t) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(t);
        } else if let Some(call) = block.get("toolUse") {
            calls.push(json!({
                "id": call.get("toolUseId").and_then(Value::as_str).unwrap_or(""),
                "type": "function",
                "function": {
                    "name": call.get("name").and_then(Value::as_str).unwrap_or(""),
                    "arguments": call.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                },
            }));
        }
    }
    let reason = answer
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut out = json!({
        "id": format!("chatcmpl-bedrock-{created}"),
        "object": "chat.completion",
        "created": created,
        "model": public_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reason),
        }],
    });
    if let Some(usage) = answer.get("usage") {
        out["usage"] = chat_usage(usage);
    }
    Ok(out)
}
