//! OpenAI Chat Completions client, Anthropic Messages upstream.
//!
//! # Request
//! | Chat Completions | Messages |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | `system`, in order (a string if there is one text, else text blocks) |
//! | user content `text` / `image_url` (data: URL or http URL) | `text` / `image` blocks (base64 or url source) |
//! | assistant `content` / `refusal` / `tool_calls` | `text` blocks / `tool_use` blocks (arguments parsed into `input`) |
//! | `role: tool` messages | `tool_result` blocks in the next user turn (consecutive same-role turns are merged, tool results first) |
//! | `tools[].function{name, description, parameters}` | `tools[]{name, description, input_schema}` |
//! | `tool_choice` auto / none / required / named, `parallel_tool_calls: false` | `tool_choice` auto / none / any / tool, `disable_parallel_tool_use: true` |
//! | `max_completion_tokens`, else `max_tokens`, else the caller's default | `max_tokens` (required by Anthropic) |
//! | `stop` (string or array) | `stop_sequences` |
//! | `temperature` (0–1 only; Anthropic's range ends at 1), `top_p` | same |
//! | `user` | `metadata.user_id` |
//! | `stream` | `stream` (`stream_options.include_usage` is the stream converter's `include_usage`) |
//!
//! Dropped as hints (and reported: `seed`, `service_tier`, `metadata`, `prompt_cache_key`,
//! `safety_identifier`, `tool_choice` without tools; the per-message and per-part hints below
//! are not): `tool_choice` and `parallel_tool_calls` without tools, `name` on messages, `detail` on images, `strict` on tools, `seed`,
//! `service_tier`, `metadata` and `store: false` (stored completions), `prompt_cache_key`,
//! `safety_identifier`, `stream_options`, and the neutral values `n: 1`, `logprobs: false`,
//! `presence_penalty`/`frequency_penalty: 0`, empty `logit_bias`, `response_format: text`,
//! `modalities: ["text"]`. Empty text parts are skipped (Anthropic rejects them).
//! Errors: `n` > 1, `logprobs`, `top_logprobs`, non-zero penalties, `logit_bias`, JSON
//! `response_format`, audio (`modalities`, `audio`, `input_audio` parts), `file` parts,
//! `prediction`, `reasoning_effort`, `verbosity`, `web_search_options`, `store: true`, the
//! legacy `functions`/`function_call`, temperature above 1, and unknown fields.
//!
//! # Response
//! Text blocks are concatenated into `content`, `tool_use` blocks become `tool_calls`, thinking
//! blocks are left out (thinking cannot be requested through this API), other block types are
//! errors. `stop_reason` end_turn / stop_sequence / max_tokens / tool_use / refusal maps to
//! stop / stop / length / tool_calls / content_filter. `created` is supplied by the caller since
//! Anthropic sends no timestamp.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{
    anthropic_stop_to_chat, as_array, as_bool, as_count, as_number, as_object, as_str, block_type,
    chat_text_content, chat_usage_json, err, field_path, frame, id_suffix, index_path,
    parse_data_url, parse_event, present, required_str, upstream_error_message, ConversionError,
    Converted, Dropped, Map, StreamConverter,
};
use crate::frames::StreamFailure;
use crate::sse::{self, SseEvent};
use crate::usage::{self, UsageTracker};
use crate::Format;

/// Converts a Chat Completions request into an Anthropic Messages request for `upstream_model`,
/// with `default_max_tokens` when the client set no limit.
pub fn convert_request(
    request: &Value,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Converted, ConversionError> {
    let mut dropped = Dropped::default();
    let request = request
        .as_object()
        .ok_or_else(|| ConversionError::new("", "the request body must be a JSON object"))?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let Some(input) = present(request, "messages") else {
        return err("messages", "is required");
    };
    let (system, messages) = convert_messages(as_array(input, "messages")?)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));

    let max_tokens = match (
        present(request, "max_completion_tokens"),
        present(request, "max_tokens"),
    ) {
        (Some(value), _) => as_count(value, "max_completion_tokens")?,
        (None, Some(value)) => as_count(value, "max_tokens")?,
        (None, None) => default_max_tokens,
    };
    out.insert("max_tokens".into(), max_tokens.into());

    for (key, value) in request {
        if value.is_null() {
            continue;
        }
        let param = key.as_str();
        match param {
            "model"
            | "messages"
            | "max_tokens"
            | "max_completion_tokens"
            | "tools"
            | "tool_choice"
            | "parallel_tool_calls" => {}
            "stream" => {
                if as_bool(value, param)? {
                    out.insert("stream".into(), true.into());
                }
            }
            "stream_options" => {
                as_object(value, param)?;
            }
            "temperature" => {
                let temperature = as_number(value, param)?;
                if temperature > 1.0 {
                    return err(
                        param,
                        format!("{temperature} is above 1, the highest temperature this model's provider accepts"),
                    );
                }
                out.insert(key.clone(), value.clone());
            }
            "top_p" => {
                as_number(value, param)?;
                out.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(stop) => vec![Value::String(stop.clone())],
                    Value::Array(stops) => {
                        for (index, stop) in stops.iter().enumerate() {
                            as_str(stop, &index_path(param, index))?;
                        }
                        stops.clone()
                    }
                    _ => return err(param, "must be a string or an array of strings"),
                };
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(stops));
                }
            }
            "user" => {
                out.insert("metadata".into(), json!({"user_id": as_str(value, param)?}));
            }
            "n" => {
                if as_count(value, param)? != 1 {
                    return err(
                        param,
                        "only one choice (n = 1) can be generated by this model's provider",
                    );
                }
            }
            "logprobs" => {
                if as_bool(value, param)? {
                    return err(
                        param,
                        "log probabilities are not available from this model's provider",
                    );
                }
            }
            "top_logprobs" => {
                return err(
                    param,
                    "log probabilities are not available from this model's provider",
                )
            }
            "presence_penalty" | "frequency_penalty" => {
                if as_number(value, param)? != 0.0 {
                    return err(
                        param,
                        "penalties are not supported by this model's provider",
                    );
                }
            }
            "logit_bias" => {
                if !as_object(value, param)?.is_empty() {
                    return err(
                        param,
                        "logit bias is not supported by this model's provider",
                    );
                }
            }
            "response_format" => {
                let format = as_object(value, param)?;
                if block_type(format, param)? != "text" {
                    return err(
                        "response_format.type",
                        "structured output formats cannot be translated for this model's provider",
                    );
                }
            }
            "modalities" => {
                for (index, modality) in as_array(value, param)?.iter().enumerate() {
                    let modality_param = index_path(param, index);
                    if as_str(modality, &modality_param)? != "text" {
                        return err(
                            modality_param,
                            "only text output is available from this model's provider",
                        );
                    }
                }
            }
            "store" => {
                if as_bool(value, param)? {
                    return err(param, "stored completions are not available for this model");
                }
            }
            "seed" | "service_tier" | "metadata" | "prompt_cache_key" | "safety_identifier" => {
                dropped.push(param)
            }
            other => {
                return err(
                    other,
                    "is not supported for this model: its provider speaks another API",
                )
            }
        }
    }
    convert_tools(request, &mut out)?;
    if present(request, "tool_choice").is_some() && !out.contains_key("tool_choice") {
        dropped.push("tool_choice");
    }
    Ok(dropped.finish(out))
}

type Turn = (&'static str, Vec<Value>);

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

fn convert_messages(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), ConversionError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let param = index_path("messages", index);
        let message = as_object(message, &param)?;
        let content_param = field_path(&param, "content");
        let content = present(message, "content").unwrap_or(&Value::Null);
        match required_str(message, "role", &param)? {
            "system" | "developer" => {
                for text in chat_text_content(content, &content_param, false)? {
                    if !text.is_empty() {
                        system.push(text_block(&text));
                    }
                }
            }
            "user" => {
                let blocks = user_blocks(content, &content_param)?;
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let blocks = assistant_blocks(message, &param)?;
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let tool_use_id = required_str(message, "tool_call_id", &param)?;
                let text = chat_text_content(content, &content_param, false)?.join("\n");
                let mut block = json!({"type": "tool_result", "tool_use_id": tool_use_id});
                if !text.is_empty() {
                    block["content"] = Value::String(text);
                }
                push_turn(&mut turns, "user", vec![block]);
            }
            other => {
                return err(
                    field_path(&param, "role"),
                    format!("messages with role \"{other}\" cannot be translated"),
                )
            }
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == "user" {
                // Anthropic wants the tool results first in the turn that answers tool calls.
                blocks.sort_by_key(|block| {
                    block.get("type").and_then(Value::as_str) != Some("tool_result")
                });
            }
            let content = match blocks.as_slice() {
                [only] if only.get("type").and_then(Value::as_str) == Some("text") => {
                    only["text"].clone()
                }
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    let system = match system.as_slice() {
        [] => None,
        [only] => Some(only["text"].clone()),
        _ => Some(Value::Array(system)),
    };
    Ok((system, messages))
}

fn user_blocks(content: &Value, param: &str) -> Result<Vec<Value>, ConversionError> {
    let parts = match content {
        Value::String(text) if text.is_empty() => return Ok(Vec::new()),
        Value::String(text) => return Ok(vec![text_block(text)]),
        Value::Array(parts) => parts,
        _ => return err(param, "must be a string or an array of content parts"),
    };
    let mut blocks = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let part_param = index_path(param, index);
        let part = as_object(part, &part_param)?;
        match block_type(part, &part_param)? {
            "text" => {
                let text = required_str(part, "text", &part_param)?;
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
            "image_url" => blocks.push(image_block(part, &part_param)?),
            other => {
                return err(
                    field_path(&part_param, "type"),
                    format!("content parts of type \"{other}\" cannot be translated for this model's provider"),
                )
            }
        }
    }
    Ok(blocks)
}

fn image_block(part: &Map, param: &str) -> Result<Value, ConversionError> {
    let url_param = field_path(param, "image_url");
    let url = match present(part, "image_url") {
        Some(Value::String(url)) => url.as_str(),
        Some(Value::Object(image)) => required_str(image, "url", &url_param)?,
        _ => return err(url_param, "must be an object with a url"),
    };
    let source = if let Some((media_type, data)) = parse_data_url(url) {
        json!({"type": "base64", "media_type": media_type, "data": data})
    } else if url.starts_with("https://") || url.starts_with("http://") {
        json!({"type": "url", "url": url})
    } else {
        return err(
            field_path(&url_param, "url"),
            "must be an http(s) URL or a base64 data: URL",
        );
    };
    Ok(json!({"type": "image", "source": source}))
}

fn assistant_blocks(message: &Map, param: &str) -> Result<Vec<Value>, ConversionError> {
    for key in ["function_call", "audio"] {
        if present(message, key).is_some() {
            return err(
                field_path(param, key),
                "cannot be translated for this model's provider",
            );
        }
    }
    let mut blocks = Vec::new();
    let content = present(message, "content").unwrap_or(&Value::Null);
    for text in chat_text_content(content, &field_path(param, "content"), true)? {
        if !text.is_empty() {
            blocks.push(text_block(&text));
        }
    }
    if let Some(refusal) = present(message, "refusal") {
        let refusal = as_str(refusal, &field_path(param, "refusal"))?;
        if !refusal.is_empty() {
            blocks.push(text_block(refusal));
        }
    }
    if let Some(calls) = present(message, "tool_calls") {
        let calls_param = field_path(param, "tool_calls");
        for (index, call) in as_array(calls, &calls_param)?.iter().enumerate() {
            let call_param = index_path(&calls_param, index);
            let call = as_object(call, &call_param)?;
            if let Some(kind) = present(call, "type") {
                if as_str(kind, &field_path(&call_param, "type"))? != "function" {
                    return err(
                        field_path(&call_param, "type"),
                        "only function tool calls can be translated",
                    );
                }
            }
            let function_param = field_path(&call_param, "function");
            let Some(function) = present(call, "function") else {
                return err(function_param, "is required");
            };
            let function = as_object(function, &function_param)?;
            let arguments_param = field_path(&function_param, "arguments");
            let arguments = present(function, "arguments")
                .map(|a| as_str(a, &arguments_param))
                .transpose()?
                .unwrap_or("");
            let input = if arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str::<Value>(arguments)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        ConversionError::new(&arguments_param, "must be a JSON object")
                    })?
            };
            blocks.push(json!({
                "type": "tool_use",
                "id": required_str(call, "id", &call_param)?,
                "name": required_str(function, "name", &function_param)?,
                "input": input,
            }));
        }
    }
    Ok(blocks)
}

fn convert_tools(request: &Map, out: &mut Map) -> Result<(), ConversionError> {
    let mut tools = Vec::new();
    if let Some(input) = present(request, "tools") {
        for (index, tool) in as_array(input, "tools")?.iter().enumerate() {
            let param = index_path("tools", index);
            let tool = as_object(tool, &param)?;
            let kind = block_type(tool, &param)?;
            if kind != "function" {
                return err(
                    field_path(&param, "type"),
                    format!(
                        "tools of type \"{kind}\" cannot be translated for this model's provider"
                    ),
                );
            }
            let function_param = field_path(&param, "function");
            let Some(function) = present(tool, "function") else {
                return err(function_param, "is required");
            };
            let function = as_object(function, &function_param)?;
            let mut converted = Map::new();
            converted.insert(
                "name".into(),
                required_str(function, "name", &function_param)?.into(),
            );
            if let Some(description) = present(function, "description") {
                let description = as_str(description, &field_path(&function_param, "description"))?;
                converted.insert("description".into(), description.into());
            }
            let schema = present(function, "parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            converted.insert("input_schema".into(), schema);
            tools.push(Value::Object(converted));
        }
    }
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match present(request, "tool_choice") {
        None => None,
        Some(Value::String(choice)) => Some(match choice.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => {
                return err(
                    "tool_choice",
                    format!("\"{other}\" is not a known tool_choice"),
                )
            }
        }),
        Some(Value::Object(choice)) => {
            let kind = block_type(choice, "tool_choice")?;
            if kind != "function" {
                return err(
                    "tool_choice.type",
                    format!("tool_choice of type \"{kind}\" cannot be translated"),
                );
            }
            let Some(function) = present(choice, "function") else {
                return err("tool_choice.function", "is required");
            };
            let function = as_object(function, "tool_choice.function")?;
            Some(
                json!({"type": "tool", "name": required_str(function, "name", "tool_choice.function")?}),
            )
        }
        Some(_) => return err("tool_choice", "must be a string or an object"),
    };
    if let Some(parallel) = present(request, "parallel_tool_calls") {
        if !as_bool(parallel, "parallel_tool_calls")? && has_tools {
            let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if choice.get("type").and_then(Value::as_str) != Some("none") {
                choice["disable_parallel_tool_use"] = Value::Bool(true);
            }
        }
    }
    // Without tools a tool_choice means nothing.
    if let Some(choice) = choice.filter(|_| has_tools) {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

/// Converts an Anthropic Messages response into a Chat Completions response created at
/// `created` (Unix seconds).
pub fn convert_response(
    response: &Value,
    public_model: &str,
    created: u64,
) -> Result<Value, ConversionError> {
    let blocks = response
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ConversionError::new("content", "the upstream response has no content"))?;
    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let param = index_path("content", index);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default());
                has_text = true;
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "arguments": input.to_string(),
                    },
                }));
            }
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return err(
                    field_path(&param, "type"),
                    format!(
                        "the upstream returned a \"{}\" block, which has no Chat Completions equivalent",
                        other.unwrap_or("untyped")
                    ),
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
    message.insert("refusal".into(), Value::Null);
    message.insert("annotations".into(), json!([]));
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let stop_reason = response
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let usage = usage::from_anthropic_response(response).unwrap_or_default();
    Ok(json!({
        "id": format!("chatcmpl-{}", id_suffix(response.get("id").and_then(Value::as_str))),
        "object": "chat.completion",
        "created": created,
        "model": public_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": anthropic_stop_to_chat(stop_reason),
        }],
        "usage": chat_usage_json(&usage),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    /// A `tool_use` block and its position among the chat tool calls.
    Tool(u64),
    Ignored,
}

/// Converts an Anthropic Messages stream into a Chat Completions stream ending in
/// `data: [DONE]`. With `include_usage` (the client's `stream_options.include_usage`), every
/// chunk carries `"usage": null` and a last chunk with empty `choices` carries the usage, as
/// OpenAI does; without it no chunk has a `usage` key.
#[derive(Debug, Clone)]
pub struct ResponseStream {
    public_model: String,
    created: u64,
    include_usage: bool,
    id: Option<String>,
    blocks: Vec<(u64, BlockKind)>,
    next_tool: u64,
    finish_reason: Option<&'static str>,
    tracker: UsageTracker,
    done: bool,
}

impl ResponseStream {
    /// A converter whose chunks show `public_model` and `created` (Unix seconds).
    pub fn new(public_model: &str, created: u64, include_usage: bool) -> Self {
        Self {
            public_model: public_model.to_owned(),
            created,
            include_usage,
            id: None,
            blocks: Vec::new(),
            next_tool: 0,
            finish_reason: None,
            tracker: UsageTracker::new(Format::AnthropicMessages),
            done: false,
        }
    }

    fn id(&mut self) -> String {
        self.id
            .get_or_insert_with(|| format!("chatcmpl-{}", id_suffix(None)))
            .clone()
    }

    fn chunk(&mut self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        let mut chunk = json!({
            "id": self.id(),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.public_model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        frame(None, &chunk)
    }

    fn kind_of(&self, index: u64) -> Option<BlockKind> {
        self.blocks
            .iter()
            .find(|(block, _)| *block == index)
            .map(|(_, kind)| *kind)
    }

    fn block_start(&mut self, data: &Value) -> Result<Vec<Bytes>, ConversionError> {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = data.get("content_block").unwrap_or(&Value::Null);
        let mut frames = Vec::new();
        let kind = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    frames.push(self.chunk(json!({"content": text}), None));
                }
                BlockKind::Text
            }
            Some("tool_use") => {
                let position = self.next_tool;
                self.next_tool += 1;
                let input = block
                    .get("input")
                    .filter(|input| input.as_object().is_some_and(|o| !o.is_empty()));
                let arguments = input.map(Value::to_string).unwrap_or_default();
                let call = json!({"tool_calls": [{
                    "index": position,
                    "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "arguments": arguments,
                    },
                }]});
                frames.push(self.chunk(call, None));
                BlockKind::Tool(position)
            }
            Some("thinking" | "redacted_thinking") => BlockKind::Ignored,
            other => {
                return err(
                    "content_block.type",
                    format!(
                        "the upstream streamed a \"{}\" block, which has no Chat Completions equivalent",
                        other.unwrap_or("untyped")
                    ),
                )
            }
        };
        self.blocks.push((index, kind));
        Ok(frames)
    }

    fn block_delta(&mut self, data: &Value) -> Vec<Bytes> {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = data.get("delta").unwrap_or(&Value::Null);
        let piece = |key: &str| {
            delta
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match (
            self.kind_of(index),
            delta.get("type").and_then(Value::as_str),
        ) {
            (Some(BlockKind::Text), Some("text_delta")) => match piece("text") {
                Some(text) => vec![self.chunk(json!({"content": text}), None)],
                None => Vec::new(),
            },
            (Some(BlockKind::Tool(position)), Some("input_json_delta")) => {
                match piece("partial_json") {
                    Some(arguments) => vec![self.chunk(
                        json!({"tool_calls": [{"index": position, "function": {"arguments": arguments}}]}),
                        None,
                    )],
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Bytes> {
        let finish_reason = self.finish_reason.unwrap_or("stop");
        let mut frames = vec![self.chunk(json!({}), Some(finish_reason))];
        if self.include_usage {
            let usage = chat_usage_json(&self.tracker.usage_or_estimate());
            let chunk = json!({
                "id": self.id(),
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.public_model,
                "choices": [],
                "usage": usage,
            });
            frames.push(frame(None, &chunk));
        }
        frames.push(sse::encode_done());
        self.done = true;
        frames
    }
}

impl StreamConverter for ResponseStream {
    fn push(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, ConversionError> {
        if self.done {
            return Ok(Vec::new());
        }
        let data = parse_event(event)?;
        self.tracker.observe_value(event.event.as_deref(), &data);
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let upstream_id = data.pointer("/message/id").and_then(Value::as_str);
                self.id = Some(format!("chatcmpl-{}", id_suffix(upstream_id)));
                Ok(vec![
                    self.chunk(json!({"role": "assistant", "content": ""}), None)
                ])
            }
            "content_block_start" => self.block_start(&data),
            "content_block_delta" => Ok(self.block_delta(&data)),
            "message_delta" => {
                if let Some(stop_reason) =
                    data.pointer("/delta/stop_reason").and_then(Value::as_str)
                {
                    self.finish_reason = Some(anthropic_stop_to_chat(stop_reason));
                }
                Ok(Vec::new())
            }
            "message_stop" => Ok(self.end()),
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                self.done = true;
                Ok(vec![crate::frames::error_frame(
                    Format::ChatCompletions,
                    super::upstream_failure(error),
                    &upstream_error_message(error),
                )])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn finish(&mut self) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        if self.finish_reason.is_some() {
            return self.end();
        }
        vec![self.error_frame("the upstream stream ended before the response was complete")]
    }

    fn error_frame(&mut self, message: &str) -> Bytes {
        self.done = true;
        crate::frames::error_frame(Format::ChatCompletions, StreamFailure::Upstream, message)
    }
}
