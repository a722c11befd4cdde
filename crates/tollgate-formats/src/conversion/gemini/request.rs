//! A Chat Completions request as a Gemini `GenerateContentRequest`.
//!
//! | Chat Completions | Gemini |
//! |---|---|
//! | `system` / `developer` messages | `systemInstruction.parts` |
//! | `user` text, `image_url` (data URL / URL), `input_audio` | `contents[].parts`: `text`, `inlineData` / `fileData`, `inlineData` |
//! | `assistant` text and `tool_calls` | `role: "model"`, `text` and `functionCall {name, args}` parts |
//! | `tool` messages | `functionResponse {name, response}` parts (the name from the call with that id) |
//! | `tools[].function` | `tools[0].functionDeclarations[]` (`parametersJsonSchema`) |
//! | `tool_choice` `none` / `auto` / `required` / one function | `toolConfig.functionCallingConfig.mode` `NONE` / `AUTO` / `ANY` (+ `allowedFunctionNames`) |
//! | `max_completion_tokens` / `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, penalties | `generationConfig` |
//! | `response_format` `json_object` / `json_schema` | `responseMimeType` / `responseJsonSchema` |
//! | `reasoning_effort` | `thinkingConfig.thinkingBudget` (`minimal` 0… `high` 24576), `includeThoughts` |
//!
//! `stream_options` is ignored (Gemini always reports usage). Dropped as hints (reported): `user`, `store`, `metadata`, `service_tier`,
//! `parallel_tool_calls`, `prompt_cache_key`, `safety_identifier`.
//! Refused: `n` above 1, `logprobs`, `audio` output, a tool that is not a function, a
//! content part Gemini cannot take.

use serde_json::{json, Value};

use super::super::{as_array, as_object, as_str, err, Converted, Dropped, Map};
use crate::conversion::ConversionError;

const HINTS: [&str; 7] = [
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
];

/// Translates a Chat Completions request (the model is named in the URL, not the body).
pub fn convert(request: &Value) -> Result<Converted, ConversionError> {
    let body = as_object(request, "")?;
    let mut dropped = Dropped::default();
    let mut out = Map::new();
    let mut config = Map::new();
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "stream" | "stream_options" => {}
            "messages" => {}
            "max_completion_tokens" | "max_tokens" => {
                config.insert("maxOutputTokens".into(), uint(value, key)?);
            }
            "temperature" => {
                config.insert("temperature".into(), number(value, key)?);
            }
            "top_p" => {
                config.insert("topP".into(), number(value, key)?);
            }
            "presence_penalty" => {
                config.insert("presencePenalty".into(), number(value, key)?);
            }
            "frequency_penalty" => {
                config.insert("frequencyPenalty".into(), number(value, key)?);
            }
            "seed" => {
                config.insert("seed".into(), value.clone());
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
                    return err("n", "Gemini models answer one choice here; `n` must be 1");
                }
            }
            "logprobs" | "top_logprobs" => {
                if value != &Value::Bool(false) {
                    return err(
                        key.as_str(),
                        "log probabilities are not available from Gemini here",
                    );
                }
            }
            "response_format" => response_format(value, &mut config)?,
            "reasoning_effort" => {
                let budget = match as_str(value, key)? {
                    "none" | "minimal" => 0,
                    "low" => 1024,
                    "medium" => 8192,
                    "high" | "xhigh" => 24576,
                    other => return err(key.as_str(), format!("unknown effort '{other}'")),
                };
                config.insert(
                    "thinkingConfig".into(),
                    json!({"thinkingBudget": budget, "includeThoughts": budget > 0}),
                );
            }
            "tools" => {
                let tools = tools(value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), json!([{"functionDeclarations": tools}]));
                }
            }
            "tool_choice" => {
                out.insert("toolConfig".into(), tool_choice(value)?);
            }
            hint if HINTS.contains(&hint) => dropped.push(hint),
            other => return err(
                other,
                "this field has no equivalent in Gemini's API and cannot be sent to a Gemini model",
            ),
        }
    }
    let messages = as_array(
        body.get("messages")
            .ok_or_else(|| ConversionError::new("messages", "is required"))?,
        "messages",
    )?;
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let message = as_object(message, &path)?;
        let role = as_str(
            message
                .get("role")
                .ok_or_else(|| ConversionError::new(format!("{path}.role"), "is required"))?,
            &format!("{path}.role"),
        )?;
        let content = message.get("content").filter(|c| !c.is_null());
        match role {
            "system" | "developer" => {
                if let Some(content) = content {
                    system.extend(parts(content, &format!("{path}.content"))?);
                }
            }
            "user" => {
                let parts = match content {
                    Some(content) => parts(content, &format!("{path}.content"))?,
                    None => return err(format!("{path}.content"), "is required"),
                };
                push(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut out = match content {
                    Some(content) => parts(content, &format!("{path}.content"))?,
                    None => Vec::new(),
                };
                if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    for (j, call) in as_array(calls, &format!("{path}.tool_calls"))?
                        .iter()
                        .enumerate()
                    {
                        let cpath = format!("{path}.tool_calls[{j}]");
                        let name = call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                ConversionError::new(
                                    format!("{cpath}.function.name"),
                                    "is required",
                                )
                            })?;
                        let arguments = call
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}");
                        let args: Value = if arguments.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(arguments).map_err(|_| {
                                ConversionError::new(
                                    format!("{cpath}.function.arguments"),
                                    "must be a JSON object",
                                )
                            })?
                        };
                        if !args.is_object() {
                            return err(
                                format!("{cpath}.function.arguments"),
                                "must be a JSON object",
                            );
                        }
                        if let Some(id) = call.get("id").and_then(Value::as_str) {
                            call_names.push((id.to_string(), name.to_string()));
                        }
                        out.push(json!({"functionCall": {"name": name, "args": args}}));
                    }
                }
                if out.is_empty() {
                    continue;
                }
                push(&mut contents, "model", out);
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ConversionError::new(format!("{path}.tool_call_id"), "is required")
                    })?;
                let Some((_, name)) = call_names.iter().rev().find(|(c, _)| c == id) else {
                    return err(
                        format!("{path}.tool_call_id"),
                        format!("no earlier assistant message called a tool with the id '{id}'"),
                    );
                };
                let text = match content {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => String::new(),
                };
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => Value::Object(map),
                    _ => json!({"result": text}),
                };
                push(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => return err(format!("{path}.role"), format!("unknown role '{other}'")),
        }
    }
    if contents.is_empty() {
        return err(
            "messages",
            "must hold at least one user message for a Gemini model",
        );
    }
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Converted {
        body: Value::Object(out),
        dropped: dropped.0,
    })
}

/// Appends parts to the last content when it has the same role (Gemini alternates turns).
fn push(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if let Some(last) = contents.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(existing)) = last.get_mut("parts") {
                existing.extend(parts);
                return;
            }
        }
    }
    contents.push(json!({"role": role, "parts": parts}));
}

fn uint(value: &Value, key: &str) -> Result<Value, ConversionError> {
    value
        .as_u64()
        .map(Value::from)
        .ok_or_else(|| ConversionError::new(key, "must be a non-negative integer"))
}

fn number(value: &Value, key: &str) -> Result<Value, ConversionError> {
    if value.is_number() {
        Ok(value.clone())
    } else {
        err(key, "must be a number")
    }
}

/// The parts of a message's content.
fn parts(content: &Value, path: &str) -> Result<Vec<Value>, ConversionError> {
    let items = match content {
        Value::String(text) => return Ok(vec![json!({"text": text})]),
        Value::Array(items) => items,
        _ => return err(path, "must be a string or an array of parts"),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" => {
                let text = as_str(
                    item.get("text").unwrap_or(&Value::Null),
                    &format!("{ipath}.text"),
                )?;
                out.push(json!({"text": text}));
            }
            "image_url" => {
                let url = item
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ConversionError::new(format!("{ipath}.image_url.url"), "is required")
                    })?;
                out.push(media(url, &format!("{ipath}.image_url.url"))?);
            }
            "input_audio" => {
                let data = item.pointer("/input_audio/data").and_then(Value::as_str);
                let format = item.pointer("/input_audio/format").and_then(Value::as_str);
                let (Some(data), Some(format)) = (data, format) else {
                    return err(format!("{ipath}.input_audio"), "needs `data` and `format`");
                };
                out.push(
                    json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}),
                );
            }
            other => {
                return err(
                    format!("{ipath}.type"),
                    format!("the content part type '{other}' cannot be sent to a Gemini model"),
                )
            }
        }
    }
    Ok(out)
}

/// An image given as a data URL (inline) or a URL (a file reference).
fn media(url: &str, path: &str) -> Result<Value, ConversionError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((mime, data)) = rest.split_once(";base64,") else {
            return err(
                path,
                "a data URL must be base64 (`data:image/png;base64,...`)",
            );
        };
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let lower = url.to_ascii_lowercase();
    let mime = if lower.ends_with(".png") {
        "image/png"
    } else if lower.ends_with(".webp") {
        "image/webp"
    } else if lower.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    };
    Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
}

fn response_format(value: &Value, config: &mut Map) -> Result<(), ConversionError> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            let schema = value.pointer("/json_schema/schema").ok_or_else(|| {
                ConversionError::new("response_format.json_schema.schema", "is required")
            })?;
            config.insert("responseMimeType".into(), "application/json".into());
            config.insert("responseJsonSchema".into(), schema.clone());
        }
        _ => {
            return err(
                "response_format.type",
                "must be text, json_object or json_schema",
            )
        }
    }
    Ok(())
}

fn tools(value: &Value) -> Result<Vec<Value>, ConversionError> {
    let mut out = Vec::new();
    for (i, tool) in as_array(value, "tools")?.iter().enumerate() {
        let path = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return err(
                format!("{path}.type"),
                "only function tools can be offered to a Gemini model",
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
        let mut declaration = Map::new();
        declaration.insert("name".into(), name.into());
        if let Some(description) = function.get("description").filter(|d| !d.is_null()) {
            declaration.insert("description".into(), description.clone());
        }
        if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
            declaration.insert("parametersJsonSchema".into(), parameters.clone());
        }
        out.push(Value::Object(declaration));
    }
    Ok(out)
}

fn tool_choice(value: &Value) -> Result<Value, ConversionError> {
    let config = match value {
        Value::String(mode) => match mode.as_str() {
            "none" => json!({"mode": "NONE"}),
            "auto" => json!({"mode": "AUTO"}),
            "required" => json!({"mode": "ANY"}),
            other => return err("tool_choice", format!("unknown tool choice '{other}'")),
        },
        Value::Object(_) => {
            let name = value
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| ConversionError::new("tool_choice.function.name", "is required"))?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
        _ => return err("tool_choice", "must be a string or an object"),
    };
    Ok(json!({"functionCallingConfig": config}))
}
