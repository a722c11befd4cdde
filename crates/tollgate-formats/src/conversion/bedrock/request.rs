//! A Chat Completions request as a Bedrock `ConverseRequest`.
//!
//! | Chat Completions | Converse |
//! |---|---|
//! | `system` / `developer` messages | `system[]` (`{"text"}`) |
//! | `user` text and `image_url` (base64 data URL) | `messages[].content[]`: `text`, `image {format, source.bytes}` |
//! | `assistant` text and `tool_calls` | `role: "assistant"`, `text` and `toolUse {toolUseId, name, input}` |
//! | `tool` messages | a `user` message's `toolResult {toolUseId, content: [json \| text], status}` |
//! | `tools[].function` | `toolConfig.tools[].toolSpec {name, description, inputSchema.json}` |
//! | `tool_choice` `auto` / `required` / one function | `toolConfig.toolChoice` `auto` / `any` / `tool` |
//! | `max_completion_tokens` / `max_tokens`, `temperature`, `top_p`, `stop` | `inferenceConfig` `maxTokens`, `temperature`, `topP`, `stopSequences` |
//!
//! Consecutive messages of one role are merged (Converse alternates turns). Dropped as
//! hints (reported): `user`, `store`, `metadata`, `service_tier`, `parallel_tool_calls`,
//! `prompt_cache_key`, `safety_identifier`, `seed`, `reasoning_effort`, `tool_choice: "none"`
//! (Converse has no such choice: the tools stay offered). Refused: `n` above 1,
//! `logprobs`, penalties, `audio`, a `response_format` other than text, an image by URL
//! (Converse takes image bytes only), a tool that is not a function.

use serde_json::{json, Value};

use super::super::{as_array, as_object, as_str, err, parse_data_url, Converted, Dropped, Map};
use crate::conversion::ConversionError;

const HINTS: [&str; 9] = [
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
    "seed",
    "reasoning_effort",
];

/// Translates a Chat Completions request (the model is named in the URL, not the body).
pub fn convert(request: &Value) -> Result<Converted, ConversionError> {
    let body = as_object(request, "")?;
    let mut dropped = Dropped::default();
    let mut out = Map::new();
    let mut config = Map::new();
    let mut tool_config = Map::new();
    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "stream" | "stream_options" | "messages" => {}
            "max_completion_tokens" | "max_tokens" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| ConversionError::new(key, "must be a non-negative integer"))?;
                config.insert("maxTokens".into(), n.into());
            }
            "temperature" | "top_p" => {
                if !value.is_number() {
                    return err(key.as_str(), "must be a number");
                }
                let name = if key == "top_p" { "topP" } else { "temperature" };
                config.insert(name.into(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(a) => a.clone(),
                    _ => return err("stop", "must be a string or an array of strings"),
                };
                config.insert("stopSequences".into(), Value::Array(stops));
            }
            "n" => {
                if value.as_u64() != Some(1) {
                    return err("n", "Bedrock models answer one choice here; `n` must be 1");
                }
            }
            "logprobs" | "top_logprobs" => {
                if value != &Value::Bool(false) {
                    return err(
                        key.as_str(),
                        "log probabilities are not available from Bedrock's Converse API",
                    );
                }
            }
            "response_format" => {
                if value.get("type").and_then(Value::as_str) != Some("text") {
                    return err(
                        "response_format.type",
                        "Bedrock's Converse API has no JSON mode; only `text` can be sent",
                    );
                }
            }
            "tools" => {
                let tools = tools(value)?;
                if !tools.is_empty() {
                    tool_config.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => match tool_choice(value)? {
                Some(choice) => {
                    tool_config.insert("toolChoice".into(), choice);
                }
                None => dropped.push("tool_choice"),
            },
            hint if HINTS.contains(&hint) => dropped.push(hint),
            other => {
                return err(
                    other,
                    "this field has no equivalent in Bedrock's Converse API and cannot be sent to this model",
                )
            }
        }
    }
    let (system, messages) = messages(
        body.get("messages")
            .ok_or_else(|| ConversionError::new("messages", "is required"))?,
    )?;
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    if !config.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(config));
    }
    if tool_config.contains_key("tools") {
        out.insert("toolConfig".into(), Value::Object(tool_config));
    } else if tool_config.contains_key("toolChoice") {
        return err("tool_choice", "a tool choice needs `tools`");
    }
    Ok(Converted {
        body: Value::Object(out),
        dropped: dropped.0,
    })
}

/// The system blocks and the messages of a Chat Completions conversation.
fn messages(value: &Value) -> Result<(Vec<Value>, Vec<Value>), ConversionError> {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, message) in as_array(value, "messages")?.iter().enumerate() {
        let path = format!("messages[{i}]");
        let message = as_object(message, &path)?;
        let role = as_str(
            message
                .get("role")
                .ok_or_else(|| ConversionError::new(format!("{path}.role"), "is required"))?,
            &format!("{path}.role"),
        )?;
        let content = message.get("content").filter(|c| !c.is_null());
        let cpath = format!("{path}.content");
        match role {
            "system" | "developer" => {
                for block in content
                    .map(|c| blocks(c, &cpath))
                    .transpose()?
                    .unwrap_or_default()
                {
                    if block.get("text").is_none() {
                        return err(cpath, "a system message can hold only text");
                    }
                    system.push(block);
                }
            }
            "user" => {
                let content = content.ok_or_else(|| ConversionError::new(&cpath, "is required"))?;
                push(&mut out, "user", blocks(content, &cpath)?);
            }
            "assistant" => {
                let mut content = match content {
                    Some(c) => blocks(c, &cpath)?,
                    None => Vec::new(),
                };
                if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    for (j, call) in as_array(calls, &format!("{path}.tool_calls"))?
                        .iter()
                        .enumerate()
                    {
                        content.push(tool_use(call, &format!("{path}.tool_calls[{j}]"))?);
                    }
                }
                push(&mut out, "assistant", content);
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ConversionError::new(format!("{path}.tool_call_id"), "is required")
                    })?;
                let text = match content {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => String::new(),
                };
                let result = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => json!({"json": map}),
                    _ => json!({"text": text}),
                };
                push(
                    &mut out,
                    "user",
                    vec![
                        json!({"toolResult": {"toolUseId": id, "content": [result], "status": "success"}}),
                    ],
                );
            }
            other => return err(format!("{path}.role"), format!("unknown role '{other}'")),
        }
    }
    if out.is_empty() {
        return err(
            "messages",
            "must hold at least one user message for a Bedrock model",
        );
    }
    Ok((system, out))
}

/// Appends content to the last message when it has the same role (Converse alternates
/// turns); an empty content adds nothing.
fn push(messages: &mut Vec<Value>, role: &str, content: Vec<Value>) {
    if content.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(existing)) = last.get_mut("content") {
                existing.extend(content);
                return;
            }
        }
    }
    messages.push(json!({"role": role, "content": content}));
}

/// A `toolUse` block for a Chat Completions tool call.
fn tool_use(call: &Value, path: &str) -> Result<Value, ConversionError> {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ConversionError::new(format!("{path}.id"), "is required"))?;
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or_else(|| ConversionError::new(format!("{path}.function.name"), "is required"))?;
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    let input: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments).map_err(|_| {
            ConversionError::new(
                format!("{path}.function.arguments"),
                "must be a JSON object",
            )
        })?
    };
    if !input.is_object() {
        return err(
            format!("{path}.function.arguments"),
            "must be a JSON object",
        );
    }
    Ok(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}))
}

/// The content blocks of a message's content (empty text is left out: Converse refuses
/// blank text blocks).
fn blocks(content: &Value, path: &str) -> Result<Vec<Value>, ConversionError> {
    let items = match content {
        Value::String(text) if text.is_empty() => return Ok(Vec::new()),
        Value::String(text) => return Ok(vec![json!({"text": text})]),
        Value::Array(items) => items,
        _ => return err(path, "must be a string or an array of parts"),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        match item.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => {
                let text = as_str(
                    item.get("text").unwrap_or(&Value::Null),
                    &format!("{ipath}.text"),
                )?;
                if !text.is_empty() {
                    out.push(json!({"text": text}));
                }
            }
            "image_url" => {
                let upath = format!("{ipath}.image_url.url");
                let url = item
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ConversionError::new(&upath, "is required"))?;
                let Some((media, data)) = parse_data_url(url) else {
                    return err(upath, "Bedrock's Converse API takes images as base64 data URLs only (`data:image/png;base64,...`)");
                };
                let format = match media {
                    "image/png" => "png",
                    "image/jpeg" | "image/jpg" => "jpeg",
                    "image/gif" => "gif",
                    "image/webp" => "webp",
                    other => return err(upath, format!("the image type '{other}' cannot be sent to a Bedrock model (png, jpeg, gif, webp)")),
                };
                out.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
            }
            other => {
                return err(
                    format!("{ipath}.type"),
                    format!("the content part type '{other}' cannot be sent to a Bedrock model"),
                )
            }
        }
    }
    Ok(out)
}

fn tools(value: &Value) -> Result<Vec<Value>, ConversionError> {
    let mut out = Vec::new();
    for (i, tool) in as_array(value, "tools")?.iter().enumerate() {
        let path = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return err(
                format!("{path}.type"),
                "only function tools can be offered to a Bedrock model",
            );
        }
        let function = as_object(
            tool.get("function").unwrap_or(&Value::Null),
            &format!("{path}.function"),
        )?;
        let name = as_str(
            function.get("name").unwrap_or(&Value::Null),
            &format!("{path}.function.name"),
        )?;
        let mut spec = Map::new();
        spec.insert("name".into(), name.into());
        if let Some(description) = function.get("description").filter(|d| !d.is_null()) {
            spec.insert("description".into(), description.clone());
        }
        let schema = function
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        spec.insert("inputSchema".into(), json!({"json": schema}));
        out.push(json!({"toolSpec": spec}));
    }
    Ok(out)
}

/// Converse's `toolChoice`; `None` for `none`, which Converse cannot say.
fn tool_choice(value: &Value) -> Result<Option<Value>, ConversionError> {
    Ok(Some(match value {
        Value::String(mode) => match mode.as_str() {
            "none" => return Ok(None),
            "auto" => json!({"auto": {}}),
            "required" => json!({"any": {}}),
            other => return err("tool_choice", format!("unknown tool choice '{other}'")),
        },
        Value::Object(_) => {
            let name = value
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| ConversionError::new("tool_choice.function.name", "is required"))?;
            json!({"tool": {"name": name}})
        }
        _ => return err("tool_choice", "must be a string or an object"),
    }))
}
