//! Anthropic Messages client, OpenAI Chat Completions upstream.
//!
//! # Request
//! | Messages | Chat Completions |
//! |---|---|
//! | `system` (string or text blocks) | first message, `role: system` (blocks joined with a blank line) |
//! | `role: "system"` messages inside `messages` (mid-conversation system messages) | `role: system` messages at the same place |
//! | user `text` / `image` (base64 or url source) blocks | user content parts `text` / `image_url` (data: URL or http URL) |
//! | user `document` blocks: base64 PDF (`title`) / plain-text source | `file` parts (`file_data` data: URL, `filename`) / `text` parts |
//! | user `tool_result` blocks | `role: tool` messages, placed before the rest of that user turn; `is_error: true` prefixes the content with `Error: `; images in a tool result follow in a user message |
//! | assistant `text` / `tool_use` blocks | assistant `content` (text blocks concatenated) / `tool_calls` |
//! | assistant `thinking` / `redacted_thinking` blocks in history | `reasoning_details` of that assistant message (`reasoning.text` with `signature`, `reasoning.encrypted` with `data`, `format: "anthropic-claude-v1"`), as OpenRouter-style servers read them back |
//! | `tools[]{name, description, input_schema, strict}` | `tools[]{type: function, function{name, description, parameters, strict}}` |
//! | `tool_choice` auto / any / tool / none, `disable_parallel_tool_use` | `tool_choice` auto / required / named / none, `parallel_tool_calls: false` |
//! | `max_tokens` | `max_completion_tokens` |
//! | `stop_sequences`, `temperature`, `top_p` | `stop`, `temperature`, `top_p` |
//! | `output_config.effort` (low / medium / high; max and xhigh) | `reasoning_effort` (same; `high`) |
//! | `output_config.format` (json_schema) | `response_format` json_schema |
//! | `stream: true` | `stream: true`, `stream_options.include_usage: true` |
//! | `metadata.user_id` (64 characters at most) | `user` |
//!
//! Dropped and reported: `thinking` enabled or adaptive (a Chat model reasons, or not, by
//! itself; `output_config.effort` is the explicit setting), `context_management` (context
//! editing that the upstream does not do; the whole history is sent), `cache_control` on
//! blocks, system blocks and tools, `citations` on text and document blocks, `defer_loading`,
//! `input_examples` and `eager_input_streaming` on tools, `output_config` of a mid-conversation
//! system message, a `metadata.user_id` longer than 64 characters, `tool_choice` when there
//! are no tools (OpenAI rejects it), an empty `stop_sequences`, `service_tier`.
//! Neutral: `thinking: {type: "disabled"}`.
//! Errors: `top_k`, server tools (a `type` other than `custom`: Claude Code sends them only
//! in a request whose point is to run them), `search_result`, `container_upload` and other block
//! types, URL or file documents, `container`, `mcp_servers` and every other unknown field.
//!
//! # Response
//! Text becomes one `text` block, `refusal` a `text` block with `stop_reason: refusal`,
//! `reasoning_details` (`reasoning.text`, `reasoning.encrypted`) become `thinking` /
//! `redacted_thinking` blocks with their signatures, placed first; `tool_calls` become
//! `tool_use` blocks (arguments that are not a JSON object, as in a call cut off by the token
//! limit, become `{}`); `reasoning_content` without details is left out (it has no signature to
//! send back). `finish_reason` stop / length / tool_calls / content_filter maps to end_turn /
//! max_tokens / tool_use / refusal; Chat does not say which stop sequence matched, so
//! `stop_sequence` is always `null`. Usage splits `prompt_tokens` into uncached input, cache
//! reads and cache writes.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{
    anthropic_usage_json, as_array, as_bool, as_count, as_number, as_object, as_str, block_type,
    chat_finish_to_anthropic, err, field_path, frame, id_suffix, index_path, parse_event, present,
    required_str, upstream_error_message, ConversionError, Converted, Dropped, Map,
    StreamConverter,
};
use crate::frames::StreamFailure;
use crate::sse::SseEvent;
use crate::usage::{self, Usage};
use crate::Format;

/// The longest `metadata.user_id` passed on as `user` (OpenAI's limit is not documented; 64 is
/// the length of its other identifiers' limits, and Claude Code sends ~150 characters).
const MAX_USER_ID: usize = 64;

/// The `format` OpenRouter-style servers give Anthropic reasoning in `reasoning_details`.
pub const ANTHROPIC_REASONING_FORMAT: &str = "anthropic-claude-v1";

/// Converts an Anthropic Messages request into a Chat Completions request for `upstream_model`.
pub fn convert_request(
    request: &Value,
    upstream_model: &str,
) -> Result<Converted, ConversionError> {
    let request = request
        .as_object()
        .ok_or_else(|| ConversionError::new("", "the request body must be a JSON object"))?;
    let mut dropped = Dropped::default();
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let mut messages = Vec::new();
    if let Some(system) = present(request, "system") {
        messages.push(
            json!({"role": "system", "content": system_text(system, "system", &mut dropped)?}),
        );
    }
    let Some(input) = present(request, "messages") else {
        return err("messages", "is required");
    };
    for (index, message) in as_array(input, "messages")?.iter().enumerate() {
        convert_message(
            message,
            &index_path("messages", index),
            &mut messages,
            &mut dropped,
        )?;
    }
    out.insert("messages".into(), Value::Array(messages));

    for (key, value) in request {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "messages" | "system" | "tools" | "tool_choice" => {}
            "max_tokens" => {
                out.insert("max_completion_tokens".into(), as_count(value, key)?.into());
            }
            "temperature" | "top_p" => {
                as_number(value, key)?;
                out.insert(key.clone(), value.clone());
            }
            "stop_sequences" => {
                for (index, stop) in as_array(value, key)?.iter().enumerate() {
                    as_str(stop, &index_path(key, index))?;
                }
                if !as_array(value, key)?.is_empty() {
                    out.insert("stop".into(), value.clone());
                }
            }
            "stream" => {
                if as_bool(value, key)? {
                    out.insert("stream".into(), true.into());
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "metadata" => {
                for (meta_key, meta_value) in as_object(value, key)? {
                    let param = field_path(key, meta_key);
                    match meta_key.as_str() {
                        _ if meta_value.is_null() => {}
                        "user_id" => {
                            let user = as_str(meta_value, &param)?;
                            if user.chars().count() <= MAX_USER_ID {
                                out.insert("user".into(), user.into());
                            } else {
                                dropped.push(param);
                            }
                        }
                        _ => return err(param, "is not a known metadata field"),
                    }
                }
            }
            "thinking" => {
                let thinking = as_object(value, key)?;
                match block_type(thinking, key)? {
                    "disabled" => {}
                    "enabled" | "adaptive" => dropped.push(key.as_str()),
                    other => {
                        return err(
                            "thinking.type",
                            format!("\"{other}\" is not a known thinking type"),
                        )
                    }
                }
            }
            "output_config" => convert_output_config(as_object(value, key)?, &mut out)?,
            "context_management" | "service_tier" => dropped.push(key.as_str()),
            "top_k" => {
                return err(
                    key.as_str(),
                    "top_k has no equivalent at this model's provider",
                )
            }
            other => {
                return err(
                    other,
                    "is not supported for this model: its provider speaks another API",
                )
            }
        }
    }
    convert_tools(request, &mut out, &mut dropped)?;
    Ok(dropped.finish(out))
}

fn convert_output_config(config: &Map, out: &mut Map) -> Result<(), ConversionError> {
    for (key, value) in config {
        let param = field_path("output_config", key);
        match key.as_str() {
            _ if value.is_null() => {}
            "effort" => {
                let effort = match as_str(value, &param)? {
                    effort @ ("low" | "medium" | "high") => effort,
                    "max" | "xhigh" => "high",
                    other => return err(param, format!("\"{other}\" is not a known effort")),
                };
                out.insert("reasoning_effort".into(), effort.into());
            }
            "format" => {
                let format = as_object(value, &param)?;
                if block_type(format, &param)? != "json_schema" {
                    return err(
                        field_path(&param, "type"),
                        "only json_schema output formats can be translated",
                    );
                }
                let schema = present(format, "schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {
                        "name": "output", "schema": schema, "strict": true,
                    }}),
                );
            }
            _ => return err(param, "is not a known output setting"),
        }
    }
    Ok(())
}

/// Reports the hint fields of `block` that the upstream has no place for.
fn drop_block_hints(block: &Map, param: &str, dropped: &mut Dropped) {
    for key in ["cache_control", "citations"] {
        if present(block, key).is_some() {
            dropped.push(field_path(param, key));
        }
    }
}

fn system_text(
    system: &Value,
    param: &str,
    dropped: &mut Dropped,
) -> Result<String, ConversionError> {
    match system {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (index, block) in blocks.iter().enumerate() {
                let block_param = index_path(param, index);
                let block = as_object(block, &block_param)?;
                match block_type(block, &block_param)? {
                    "text" => {
                        drop_block_hints(block, &block_param, dropped);
                        texts.push(required_str(block, "text", &block_param)?)
                    }
                    other => {
                        return err(
                            field_path(&block_param, "type"),
                            format!("system blocks of type \"{other}\" cannot be translated"),
                        )
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => err(param, "must be a string or an array of text blocks"),
    }
}

fn convert_message(
    message: &Value,
    param: &str,
    out: &mut Vec<Value>,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let message = as_object(message, param)?;
    let role = required_str(message, "role", param)?;
    let content_param = field_path(param, "content");
    let content = present(message, "content");
    if role == "system" {
        // A mid-conversation system message; the directive-only form has empty content and
        // an `output_config` that applies from there on, which Chat cannot express per turn.
        if present(message, "output_config").is_some() {
            dropped.push(field_path(param, "output_config"));
        }
        let text = match content {
            None => String::new(),
            Some(content) => system_text(content, &content_param, dropped)?,
        };
        if !text.is_empty() {
            out.push(json!({"role": "system", "content": text}));
        }
        return Ok(());
    }
    let Some(content) = content else {
        return err(content_param, "is required");
    };
    match role {
        "user" => convert_user(content, &content_param, out, dropped),
        "assistant" => convert_assistant(content, &content_param, out, dropped),
        _ => err(
            field_path(param, "role"),
            "must be \"user\", \"assistant\" or \"system\"",
        ),
    }
}

fn convert_user(
    content: &Value,
    param: &str,
    out: &mut Vec<Value>,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return err(param, "must be a string or an array of content blocks"),
    };
    let mut parts = Vec::new();
    let mut tool_images = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let block_param = index_path(param, index);
        let block = as_object(block, &block_param)?;
        drop_block_hints(block, &block_param, dropped);
        match block_type(block, &block_param)? {
            "text" => parts.push(json!({
                "type": "text",
                "text": required_str(block, "text", &block_param)?,
            })),
            "image" => parts.push(image_part(block, &block_param)?),
            "document" => parts.push(document_part(block, &block_param, dropped)?),
            "tool_result" => {
                out.push(tool_message(block, &block_param, &mut tool_images, dropped)?)
            }
            other => {
                return err(
                    field_path(&block_param, "type"),
                    format!("content blocks of type \"{other}\" cannot be translated for this model's provider"),
                )
            }
        }
    }
    // Chat tool messages hold only text: the images of tool results come right after them.
    tool_images.extend(parts);
    let parts = tool_images;
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [only] if only.get("type").and_then(Value::as_str) == Some("text") => only["text"].clone(),
        _ => Value::Array(parts),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn document_part(
    block: &Map,
    param: &str,
    dropped: &mut Dropped,
) -> Result<Value, ConversionError> {
    if present(block, "context").is_some() {
        dropped.push(field_path(param, "context"));
    }
    let filename = match present(block, "title") {
        Some(title) => as_str(title, &field_path(param, "title"))?,
        None => "document.pdf",
    };
    let source_param = field_path(param, "source");
    let Some(source) = present(block, "source") else {
        return err(source_param, "is required");
    };
    let source = as_object(source, &source_param)?;
    match block_type(source, &source_param)? {
        "base64" => {
            let media_type = required_str(source, "media_type", &source_param)?;
            let data = required_str(source, "data", &source_param)?;
            Ok(json!({"type": "file", "file": {
                "filename": filename,
                "file_data": format!("data:{media_type};base64,{data}"),
            }}))
        }
        "text" => Ok(json!({"type": "text", "text": required_str(source, "data", &source_param)?})),
        other => err(
            field_path(&source_param, "type"),
            format!("document sources of type \"{other}\" cannot be translated; send the document as base64 or text"),
        ),
    }
}

fn image_part(block: &Map, param: &str) -> Result<Value, ConversionError> {
    let source_param = field_path(param, "source");
    let Some(source) = present(block, "source") else {
        return err(source_param, "is required");
    };
    let source = as_object(source, &source_param)?;
    let url = match block_type(source, &source_param)? {
        "base64" => format!(
            "data:{};base64,{}",
            required_str(source, "media_type", &source_param)?,
            required_str(source, "data", &source_param)?
        ),
        "url" => required_str(source, "url", &source_param)?.to_owned(),
        other => {
            return err(
                field_path(&source_param, "type"),
                format!(
                    "image sources of type \"{other}\" cannot be translated; use base64 or url"
                ),
            )
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_message(
    block: &Map,
    param: &str,
    images: &mut Vec<Value>,
    dropped: &mut Dropped,
) -> Result<Value, ConversionError> {
    let tool_use_id = required_str(block, "tool_use_id", param)?;
    let content_param = field_path(param, "content");
    let mut text = match present(block, "content") {
        None => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (index, inner) in blocks.iter().enumerate() {
                let inner_param = index_path(&content_param, index);
                let inner = as_object(inner, &inner_param)?;
                drop_block_hints(inner, &inner_param, dropped);
                match block_type(inner, &inner_param)? {
                    "text" => texts.push(required_str(inner, "text", &inner_param)?.to_owned()),
                    "image" => {
                        images.push(image_part(inner, &inner_param)?);
                        texts.push(format!("[image {} of this tool result follows in the next user message]", images.len()));
                    }
                    other => {
                        return err(
                            field_path(&inner_param, "type"),
                            format!("tool results containing \"{other}\" blocks cannot be translated; this model's provider accepts only text and images there"),
                        )
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return err(
                content_param,
                "must be a string or an array of content blocks",
            )
        }
    };
    if let Some(is_error) = present(block, "is_error") {
        if as_bool(is_error, &field_path(param, "is_error"))? {
            text.insert_str(0, "Error: ");
        }
    }
    Ok(json!({"role": "tool", "tool_call_id": tool_use_id, "content": text}))
}

fn convert_assistant(
    content: &Value,
    param: &str,
    out: &mut Vec<Value>,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({"role": "assistant", "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return err(param, "must be a string or an array of content blocks"),
    };
    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    let mut reasoning = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let block_param = index_path(param, index);
        let block = as_object(block, &block_param)?;
        drop_block_hints(block, &block_param, dropped);
        match block_type(block, &block_param)? {
            "text" => {
                text.push_str(required_str(block, "text", &block_param)?);
                has_text = true;
            }
            "tool_use" => {
                let input = present(block, "input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": required_str(block, "id", &block_param)?,
                    "type": "function",
                    "function": {
                        "name": required_str(block, "name", &block_param)?,
                        "arguments": input.to_string(),
                    },
                }));
            }
            "thinking" => {
                let mut detail = Map::new();
                detail.insert("type".into(), "reasoning.text".into());
                detail.insert(
                    "text".into(),
                    required_str(block, "thinking", &block_param)?.into(),
                );
                if let Some(signature) = present(block, "signature") {
                    let signature = as_str(signature, &field_path(&block_param, "signature"))?;
                    detail.insert("signature".into(), signature.into());
                }
                detail.insert("format".into(), ANTHROPIC_REASONING_FORMAT.into());
                detail.insert("index".into(), reasoning.len().into());
                reasoning.push(Value::Object(detail));
            }
            "redacted_thinking" => {
                reasoning.push(json!({
                    "type": "reasoning.encrypted",
                    "data": required_str(block, "data", &block_param)?,
                    "format": ANTHROPIC_REASONING_FORMAT,
                    "index": reasoning.len(),
                }));
            }
            other => {
                return err(
                    field_path(&block_param, "type"),
                    format!("content blocks of type \"{other}\" cannot be translated for this model's provider"),
                )
            }
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content = if has_text || tool_calls.is_empty() {
        Value::String(text)
    } else {
        Value::Null
    };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if !reasoning.is_empty() {
        message.insert("reasoning_details".into(), Value::Array(reasoning));
    }
    out.push(Value::Object(message));
    Ok(())
}

fn convert_tools(
    request: &Map,
    out: &mut Map,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let mut tools = Vec::new();
    if let Some(input) = present(request, "tools") {
        for (index, tool) in as_array(input, "tools")?.iter().enumerate() {
            let param = index_path("tools", index);
            let tool = as_object(tool, &param)?;
            let mut function = Map::new();
            for (key, value) in tool {
                let key_param = field_path(&param, key);
                match key.as_str() {
                    _ if value.is_null() => {}
                    "type" => {
                        let kind = as_str(value, &key_param)?;
                        if kind != "custom" {
                            return err(
                                key_param,
                                format!("\"{kind}\" is a server tool run by Anthropic; it cannot be translated for this model's provider"),
                            );
                        }
                    }
                    "name" => {
                        function.insert("name".into(), as_str(value, &key_param)?.into());
                    }
                    "description" => {
                        function.insert("description".into(), as_str(value, &key_param)?.into());
                    }
                    "input_schema" => {
                        function.insert("parameters".into(), value.clone());
                    }
                    "strict" => {
                        if as_bool(value, &key_param)? {
                            function.insert("strict".into(), true.into());
                        }
                    }
                    "cache_control"
                    | "defer_loading"
                    | "input_examples"
                    | "eager_input_streaming" => dropped.push(key_param),
                    _ => return err(key_param, "is not a known tool field"),
                }
            }
            if !function.contains_key("name") {
                return err(field_path(&param, "name"), "is required");
            }
            function
                .entry("parameters")
                .or_insert_with(|| json!({"type": "object", "properties": {}}));
            tools.push(json!({"type": "function", "function": function}));
        }
    }
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = present(request, "tool_choice") {
        let choice = as_object(choice, "tool_choice")?;
        let converted = match block_type(choice, "tool_choice")? {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => json!({"type": "function", "function": {
                "name": required_str(choice, "name", "tool_choice")?,
            }}),
            other => {
                return err(
                    "tool_choice.type",
                    format!("tool_choice of type \"{other}\" cannot be translated"),
                )
            }
        };
        let disable_parallel = match present(choice, "disable_parallel_tool_use") {
            Some(disable) => as_bool(disable, "tool_choice.disable_parallel_tool_use")?,
            None => false,
        };
        // Without tools a tool_choice means nothing, and OpenAI rejects it.
        if has_tools {
            out.insert("tool_choice".into(), converted);
            if disable_parallel {
                out.insert("parallel_tool_calls".into(), false.into());
            }
        } else {
            dropped.push("tool_choice");
        }
    }
    Ok(())
}

/// Converts a Chat Completions response into an Anthropic Messages response.
pub fn convert_response(response: &Value, public_model: &str) -> Result<Value, ConversionError> {
    let choice = response
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| ConversionError::new("choices", "the upstream response has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = thinking_blocks(message.get("reasoning_details"));
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    if let Some(refusal) = refusal {
        content.push(json!({"type": "text", "text": refusal}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call.get("function").unwrap_or(&Value::Null);
            let arguments = function
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let input = serde_json::from_str::<Value>(arguments)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            content.push(json!({
                "type": "tool_use",
                "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
                "name": function.get("name").and_then(Value::as_str).unwrap_or_default(),
                "input": input,
            }));
        }
    }
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let stop_reason = if refusal.is_some() {
        "refusal"
    } else {
        chat_finish_to_anthropic(finish_reason)
    };
    let usage = usage::from_chat_response(response).unwrap_or_default();
    Ok(json!({
        "id": format!("msg_{}", id_suffix(response.get("id").and_then(Value::as_str))),
        "type": "message",
        "role": "assistant",
        "model": public_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": anthropic_usage_json(&usage),
    }))
}

/// `thinking` / `redacted_thinking` blocks from Chat `reasoning_details`; details of other
/// types (summaries) carry no signature and are left out.
fn thinking_blocks(details: Option<&Value>) -> Vec<Value> {
    let mut blocks = Vec::new();
    for detail in details.and_then(Value::as_array).into_iter().flatten() {
        let text = |key: &str| detail.get(key).and_then(Value::as_str).unwrap_or_default();
        match detail.get("type").and_then(Value::as_str) {
            Some("reasoning.text") => blocks.push(json!({
                "type": "thinking",
                "thinking": text("text"),
                "signature": text("signature"),
            })),
            Some("reasoning.encrypted") => {
                blocks.push(json!({"type": "redacted_thinking", "data": text("data")}))
            }
            _ => {}
        }
    }
    blocks
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text(u64),
    Tool(u64),
    Thinking(u64),
}

/// Converts a Chat Completions stream into an Anthropic Messages stream: `message_start`,
/// `content_block_start`/`_delta`/`_stop` per text run and tool call, then `message_delta`
/// (stop reason and usage, sent once the upstream's usage chunk arrived) and `message_stop`.
#[derive(Debug, Clone)]
pub struct ResponseStream {
    public_model: String,
    message_id: Option<String>,
    open: Option<OpenBlock>,
    next_index: u64,
    /// Chat tool-call index → Anthropic block index.
    tool_blocks: Vec<(u64, u64)>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    content_deltas: u64,
    done: bool,
}

impl ResponseStream {
    /// A converter whose events show `public_model`.
    pub fn new(public_model: &str) -> Self {
        Self {
            public_model: public_model.to_owned(),
            message_id: None,
            open: None,
            next_index: 0,
            tool_blocks: Vec::new(),
            stop_reason: None,
            usage: None,
            content_deltas: 0,
            done: false,
        }
    }

    fn start(&mut self, upstream_id: Option<&str>, frames: &mut Vec<Bytes>) {
        if self.message_id.is_some() {
            return;
        }
        let id = format!("msg_{}", id_suffix(upstream_id));
        frames.push(frame(
            Some("message_start"),
            &json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": self.public_model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
        self.message_id = Some(id);
    }

    fn close_block(&mut self, frames: &mut Vec<Bytes>) {
        if let Some(OpenBlock::Text(index) | OpenBlock::Tool(index) | OpenBlock::Thinking(index)) =
            self.open.take()
        {
            frames.push(frame(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open_block(&mut self, block: Value, frames: &mut Vec<Bytes>) -> u64 {
        self.close_block(frames);
        let index = self.next_index;
        self.next_index += 1;
        frames.push(frame(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn text(&mut self, text: &str, frames: &mut Vec<Bytes>) {
        let index = match self.open {
            Some(OpenBlock::Text(index)) => index,
            _ => {
                let index = self.open_block(json!({"type": "text", "text": ""}), frames);
                self.open = Some(OpenBlock::Text(index));
                index
            }
        };
        self.content_deltas += 1;
        frames.push(frame(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
        ));
    }

    /// One streamed `reasoning_details` entry: thinking text and its signature, or a redacted
    /// block.
    fn reasoning_detail(&mut self, detail: &Value, frames: &mut Vec<Bytes>) {
        let piece = |key: &str| {
            detail
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        match detail.get("type").and_then(Value::as_str) {
            Some("reasoning.text") => {
                let index = match self.open {
                    Some(OpenBlock::Thinking(index)) => index,
                    _ => {
                        let index = self.open_block(
                            json!({"type": "thinking", "thinking": "", "signature": ""}),
                            frames,
                        );
                        self.open = Some(OpenBlock::Thinking(index));
                        index
                    }
                };
                if let Some(text) = piece("text") {
                    self.content_deltas += 1;
                    frames.push(frame(
                        Some("content_block_delta"),
                        &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "thinking_delta", "thinking": text}}),
                    ));
                }
                if let Some(signature) = piece("signature") {
                    frames.push(frame(
                        Some("content_block_delta"),
                        &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "signature_delta", "signature": signature}}),
                    ));
                }
            }
            Some("reasoning.encrypted") => {
                let data = piece("data").unwrap_or_default();
                self.open_block(json!({"type": "redacted_thinking", "data": data}), frames);
                self.next_index_closed(frames);
            }
            _ => {}
        }
    }

    /// Closes the block just opened by `open_block` (a block that comes whole).
    fn next_index_closed(&mut self, frames: &mut Vec<Bytes>) {
        let index = self.next_index.saturating_sub(1);
        frames.push(frame(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }

    fn tool_call(&mut self, position: usize, call: &Value, frames: &mut Vec<Bytes>) {
        let chat_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let known = self
            .tool_blocks
            .iter()
            .find(|(chat, _)| *chat == chat_index)
            .map(|(_, block)| *block);
        let function = call.get("function").unwrap_or(&Value::Null);
        let block_index = match known {
            Some(index) => index,
            None => {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        let message = self.message_id.as_deref().unwrap_or_default();
                        format!("toolu_{}_{chat_index}", id_suffix(Some(message)))
                    });
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let index = self.open_block(
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    frames,
                );
                self.open = Some(OpenBlock::Tool(index));
                self.tool_blocks.push((chat_index, index));
                index
            }
        };
        if let Some(arguments) = function
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            self.content_deltas += 1;
            frames.push(frame(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": block_index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments}}),
            ));
        }
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        self.start(None, &mut frames);
        self.close_block(&mut frames);
        let usage = match self.usage {
            Some(usage) => anthropic_usage_json(&usage),
            None => json!({"output_tokens": self.content_deltas}),
        };
        frames.push(frame(
            Some("message_delta"),
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage}),
        ));
        frames.push(frame(
            Some("message_stop"),
            &json!({"type": "message_stop"}),
        ));
        self.done = true;
        frames
    }
}

impl StreamConverter for ResponseStream {
    fn push(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, ConversionError> {
        if self.done {
            return Ok(Vec::new());
        }
        if event.is_done() {
            return Ok(self.end());
        }
        let chunk = parse_event(event)?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Ok(vec![self.error_frame(&upstream_error_message(error))]);
        }
        let mut frames = Vec::new();
        self.start(chunk.get("id").and_then(Value::as_str), &mut frames);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage::from_chat_usage(usage));
        }
        let choice = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| {
                choices
                    .iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            });
        let Some(choice) = choice else {
            return Ok(frames);
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(details) = delta.get("reasoning_details").and_then(Value::as_array) {
                for detail in details {
                    self.reasoning_detail(detail, &mut frames);
                }
            }
            for key in ["content", "refusal"] {
                if let Some(text) = delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    if key == "refusal" {
                        self.stop_reason = Some("refusal");
                    }
                    self.text(text, &mut frames);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (position, call) in calls.iter().enumerate() {
                    self.tool_call(position, call, &mut frames);
                }
            }
        }
        if let Some(finish_reason) = choice.get("finish_reason").and_then(Value::as_str) {
            if self.stop_reason != Some("refusal") {
                self.stop_reason = Some(chat_finish_to_anthropic(finish_reason));
            }
            self.close_block(&mut frames);
        }
        Ok(frames)
    }

    fn finish(&mut self) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        if self.stop_reason.is_some() {
            return self.end();
        }
        vec![self.error_frame("the upstream stream ended before the response was complete")]
    }

    fn error_frame(&mut self, message: &str) -> Bytes {
        self.done = true;
        crate::frames::error_frame(Format::AnthropicMessages, StreamFailure::Upstream, message)
    }
}
