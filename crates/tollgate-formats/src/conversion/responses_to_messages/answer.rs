//! A whole Anthropic Messages answer as a Responses `response` object, and the output items
//! the stream converter builds too.

use serde_json::{json, Value};

use super::encode_envelope;
use crate::conversion::responses_common::{
    call_item, echo_fields, origin_in, output_text_part, response_object, tool_names, Origin,
    ResponseParts,
};
use crate::conversion::{id_suffix, responses_usage_json, ConversionError};
use crate::usage;

/// True when the request asked for reasoning summaries (`reasoning.summary` set, not `none`).
pub(super) fn wants_summary(request: &Value) -> bool {
    request
        .pointer("/reasoning/summary")
        .and_then(Value::as_str)
        .is_some_and(|s| s != "none")
}

/// A `reasoning` item for a `thinking` or `redacted_thinking` block.
pub(super) fn reasoning_item(id: &str, block: &Value, summary: bool, status: &str) -> Value {
    let text = block
        .get("thinking")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let summary = if summary && !text.is_empty() {
        json!([{"type": "summary_text", "text": text}])
    } else {
        json!([])
    };
    json!({
        "id": id,
        "type": "reasoning",
        "status": status,
        "summary": summary,
        "encrypted_content": encode_envelope(block),
    })
}

/// A `web_search_call` item.
pub(super) fn web_search_item(id: &str, query: Option<&str>, status: &str) -> Value {
    let mut action = json!({"type": "search"});
    if let Some(query) = query {
        action["query"] = json!(query);
    }
    json!({"id": format!("ws_{}", id.strip_prefix("srvtoolu_").unwrap_or(id)), "type": "web_search_call", "status": status, "action": action})
}

/// A `function_call` / `custom_tool_call` item for a `tool_use` block's call.
pub(super) fn tool_item(
    names: &[(String, Origin)],
    id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    call_item(&origin_in(names, name), id, arguments, status)
}

/// `status` and `incomplete_details` for an Anthropic `stop_reason`.
pub(super) fn status_for(stop_reason: Option<&str>) -> (&'static str, Value) {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        }
        Some("refusal") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The thinking tokens Anthropic reports (`usage.output_tokens_details.thinking_tokens`, under
/// a beta); 0 when it does not say.
pub(super) fn reasoning_tokens(usage: Option<&Value>) -> u64 {
    usage
        .and_then(|u| u.pointer("/output_tokens_details/thinking_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Converts an Anthropic Messages response into a Responses response created at `created_at`
/// (Unix seconds; Anthropic sends no timestamp); `request` is the client's Responses request.
///
/// `thinking` / `redacted_thinking` blocks become `reasoning` items (see the module docs),
/// consecutive `text` blocks one `message` item, `tool_use` blocks `function_call` items (with
/// their `namespace`, or `custom_tool_call` items for custom tools), a web search
/// (`server_tool_use` and its result) a `web_search_call` item. `stop_reason` max_tokens gives
/// `status: incomplete` (reason `max_output_tokens`), refusal `incomplete` (reason
/// `content_filter`). Usage: `input_tokens` includes the cache reads and writes, which
/// `input_tokens_details` names.
pub fn convert_response(
    response: &Value,
    request: &Value,
    public_model: &str,
    created_at: u64,
) -> Result<Value, ConversionError> {
    let blocks = response
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ConversionError::new("content", "the upstream response has no content"))?;
    let suffix = id_suffix(response.get("id").and_then(Value::as_str));
    let stop_reason = response.get("stop_reason").and_then(Value::as_str);
    let (status, incomplete_details) = status_for(stop_reason);
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };
    let names = tool_names(request);
    let summary = wants_summary(request);

    let mut output = Vec::new();
    let mut parts: Vec<Value> = Vec::new();
    let mut messages = 0;
    let mut reasoning = 0;
    let flush = |parts: &mut Vec<Value>, output: &mut Vec<Value>, messages: &mut usize| {
        if parts.is_empty() {
            return;
        }
        let id = match *messages {
            0 => format!("msg_{suffix}"),
            n => format!("msg_{suffix}_{n}"),
        };
        *messages += 1;
        output.push(json!({"id": id, "type": "message", "status": item_status,
            "role": "assistant", "content": std::mem::take(parts)}));
    };
    for (index, block) in blocks.iter().enumerate() {
        let text = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or_default();
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(output_text_part(text("text"))),
            Some("thinking" | "redacted_thinking") => {
                flush(&mut parts, &mut output, &mut messages);
                output.push(reasoning_item(
                    &format!("rs_{suffix}_{reasoning}"),
                    block,
                    summary,
                    "completed",
                ));
                reasoning += 1;
            }
            Some("tool_use") => {
                flush(&mut parts, &mut output, &mut messages);
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                output.push(tool_item(
                    &names,
                    text("id"),
                    text("name"),
                    &input.to_string(),
                    "completed",
                ));
            }
            Some("server_tool_use") if text("name") == "web_search" => {
                flush(&mut parts, &mut output, &mut messages);
                let query = block.pointer("/input/query").and_then(Value::as_str);
                output.push(web_search_item(text("id"), query, "completed"));
            }
            Some("web_search_tool_result") => {}
            other => {
                return Err(ConversionError::new(
                    format!("content[{index}].type"),
                    format!(
                        "the upstream returned a \"{}\" block, which has no Responses equivalent",
                        other.unwrap_or("untyped")
                    ),
                ))
            }
        }
    }
    flush(&mut parts, &mut output, &mut messages);
    let usage = usage::from_anthropic_response(response).unwrap_or_default();
    let mut echo = echo_fields(request);
    echo.insert("incomplete_details".into(), incomplete_details);
    Ok(response_object(
        &echo,
        ResponseParts {
            id: &format!("resp_{suffix}"),
            created_at,
            model: public_model,
            status,
            output,
            usage: responses_usage_json(&usage, reasoning_tokens(response.get("usage"))),
        },
    ))
}
