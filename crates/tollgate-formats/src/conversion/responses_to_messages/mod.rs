//! OpenAI Responses client, Anthropic Messages upstream: Codex (and every Responses client)
//! with a Claude model.
//!
//! # Request
//! | Responses | Messages |
//! |---|---|
//! | `instructions`, `system` / `developer` message items (anywhere) | `system` text blocks, in order (Anthropic reads the system prompt before the conversation, so a later instruction moves to the front) |
//! | `input` string, user `message` items | user turns; `input_text` → `text`, `input_image` (data: URL or http URL) → `image`, `input_file` (PDF as data: URL or URL) → `document` |
//! | assistant `message` items | assistant turns (`output_text` / `refusal` → `text`) |
//! | `reasoning` items whose `encrypted_content` Tollgate made from a `thinking` block | that `thinking` (with its `signature`) or `redacted_thinking` block, first in its assistant turn |
//! | `function_call` / `custom_tool_call` items | `tool_use` blocks (`id` = `call_id`; `namespace__name`; a custom call's input is `{"input": ...}`) |
//! | `function_call_output` / `custom_tool_call_output` items | `tool_result` blocks (text and images), first in the next user turn |
//! | function tools, `namespace` tools (flattened), `custom` tools (one string argument `input`) | `tools[]{name, description, input_schema}` |
//! | `web_search` tool (`filters.allowed_domains`, `user_location`) | the `web_search_20250305` server tool (`allowed_domains`, `user_location`) |
//! | `tool_choice` auto / none / required / function / custom / web_search, `parallel_tool_calls: false` | `tool_choice` auto / none / any / tool, `disable_parallel_tool_use: true` |
//! | `reasoning.effort` | `thinking: {type: enabled, budget_tokens}`, see [`thinking_budget`] |
//! | `max_output_tokens`, else the caller's default | `max_tokens` (required by Anthropic) |
//! | `temperature` (0–1), `top_p` | same |
//! | `safety_identifier`, else `user` (256 characters at most) | `metadata.user_id` |
//! | `stream` | `stream` |
//!
//! Dropped and reported: built-in tools offered (`local_shell`, `tool_search`,
//! `image_generation`, ...), `strict` and `defer_loading` on tools, a namespace's
//! `description`, a custom tool's `format` (its grammar), `web_search`'s
//! `external_web_access`, `search_context_size` and `search_content_types`, `reasoning` items
//! Tollgate did not make (another provider's encrypted reasoning), `web_search_call` items,
//! `reasoning.effort` when it gives no thinking (a forced tool call, which Anthropic refuses
//! with thinking, or a `max_tokens` too small for the 1,024-token minimum budget),
//! `text.verbosity`, `client_metadata`, `metadata`, `prompt_cache_key`, `service_tier`,
//! `stream_options`, `store: true`, a `user` longer than 256 characters.
//! Neutral: `reasoning.summary` (it decides whether reasoning items show the thinking text),
//! `include: ["reasoning.encrypted_content"]` (always given: it is where the signature
//! travels), `truncation: "disabled"`, `background: false`.
//! Errors: `tool_choice` forcing a built-in tool, structured output (`text.format`
//! json_schema / json_object), `temperature` or `top_p` with reasoning (Anthropic refuses
//! sampling settings with thinking), `previous_response_id`, `conversation`, `item_reference`,
//! `compaction`, `local_shell_call` and other item types, `file_id`s, non-PDF files,
//! `background: true`, `truncation: "auto"`, `prompt`, `max_tool_calls`, `top_logprobs`, other
//! `include` values, unknown fields.
//!
//! # Thinking across turns
//! Anthropic wants every `thinking` block of the current tool-use turn sent back byte for
//! byte with its signature. A thinking block becomes a `reasoning` item whose
//! `encrypted_content` is `tollgate.anthropic.v1:` followed by JSON holding the thinking text
//! and signature (or a redacted block's data); Codex sends reasoning items back with their
//! `encrypted_content`, and they become the same blocks again. The thinking text also shows in
//! `summary` when the request asked for `reasoning.summary`.
//!
//! # Response
//! See [`convert_response`] and [`ResponseStream`].

mod answer;
mod stream;

use serde_json::{json, Value};

use super::responses_common::{call_name, drop_hint, Choice, Tools};
use super::{
    as_array, as_bool, as_count, as_number, as_object, as_str, block_type, err, field_path,
    index_path, parse_data_url, present, required_str, ConversionError, Converted, Dropped, Map,
};

pub use answer::convert_response;
pub use stream::ResponseStream;

/// The prefix of the `encrypted_content` of reasoning items that carry an Anthropic thinking
/// block.
pub const REASONING_ENVELOPE_PREFIX: &str = "tollgate.anthropic.v1:";

/// The smallest thinking budget Anthropic accepts.
const MIN_THINKING_BUDGET: u64 = 1024;

/// The longest `metadata.user_id` passed on.
const MAX_USER_ID: usize = 256;

/// The thinking budget for a `reasoning.effort`, given the request's `max_tokens`: `none` and
/// `minimal` ask for no thinking; `low` 2,048 tokens, `medium` 8,192, `high` 16,384, `xhigh`
/// 32,768, each at most half of `max_tokens` (the answer keeps the other half); `None` when
/// that leaves less than Anthropic's minimum of 1,024.
pub fn thinking_budget(effort: &str, max_tokens: u64) -> Option<u64> {
    let budget: u64 = match effort {
        "low" => 2048,
        "medium" => 8192,
        "high" => 16384,
        "xhigh" | "max" => 32768,
        _ => return None,
    };
    Some(budget.min(max_tokens / 2)).filter(|&b| b >= MIN_THINKING_BUDGET)
}

/// Converts a Responses request into an Anthropic Messages request for `upstream_model`, with
/// `default_max_tokens` when the client set no limit.
pub fn convert_request(
    request: &Value,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Converted, ConversionError> {
    let request = request
        .as_object()
        .ok_or_else(|| ConversionError::new("", "the request body must be a JSON object"))?;
    let mut dropped = Dropped::default();
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let mut conversation = Conversation::default();
    if let Some(instructions) = present(request, "instructions") {
        conversation.system(as_str(instructions, "instructions")?);
    }
    match present(request, "input") {
        None => return err("input", "is required"),
        Some(Value::String(text)) => conversation.push("user", vec![text_block(text)]),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                conversation.item(item, &index_path("input", index), &mut dropped)?;
            }
        }
        Some(_) => return err("input", "must be a string or an array of items"),
    }
    let (system, messages) = conversation.finish();
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));

    let max_tokens = match present(request, "max_output_tokens") {
        Some(value) => as_count(value, "max_output_tokens")?,
        None => default_max_tokens,
    };
    out.insert("max_tokens".into(), max_tokens.into());

    let mut user_id = None;
    for (key, value) in request {
        if value.is_null() || drop_hint(key, value, &mut dropped) {
            continue;
        }
        let param = key.as_str();
        match param {
            "model"
            | "input"
            | "instructions"
            | "tools"
            | "tool_choice"
            | "parallel_tool_calls"
            | "max_output_tokens"
            | "reasoning" => {}
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
            "stream" => {
                if as_bool(value, param)? {
                    out.insert("stream".into(), true.into());
                }
            }
            "user" | "safety_identifier" => {
                let id = as_str(value, param)?;
                if id.chars().count() > MAX_USER_ID {
                    dropped.push(param);
                } else if param == "safety_identifier" || user_id.is_none() {
                    user_id = Some(id.to_owned());
                }
            }
            "text" => {
                for (text_key, text_value) in as_object(value, param)? {
                    let text_param = field_path(param, text_key);
                    match text_key.as_str() {
                        _ if text_value.is_null() => {}
                        "format" => {
                            let format = as_object(text_value, &text_param)?;
                            if block_type(format, &text_param)? != "text" {
                                return err(
                                    field_path(&text_param, "type"),
                                    "structured output cannot be translated for this model's provider",
                                );
                            }
                        }
                        "verbosity" => dropped.push(text_param),
                        _ => return err(text_param, "is not a known text setting"),
                    }
                }
            }
            "truncation" => {
                if as_str(value, param)? != "disabled" {
                    return err(
                        param,
                        "automatic truncation is not available for this model",
                    );
                }
            }
            "background" => {
                if as_bool(value, param)? {
                    return err(
                        param,
                        "background responses are not available for this model",
                    );
                }
            }
            "include" => {
                for (index, include) in as_array(value, param)?.iter().enumerate() {
                    let include_param = index_path(param, index);
                    if as_str(include, &include_param)? != "reasoning.encrypted_content" {
                        return err(
                            include_param,
                            "this output cannot be included for this model",
                        );
                    }
                }
            }
            "previous_response_id" | "conversation" => return err(
                param,
                "this model is served without stored conversations; send the whole input instead",
            ),
            other => {
                return err(
                    other,
                    "is not supported for this model: its provider speaks another API",
                )
            }
        }
    }
    if let Some(user_id) = user_id {
        out.insert("metadata".into(), json!({"user_id": user_id}));
    }
    let forced = convert_tools(request, &mut out, &mut dropped)?;
    convert_reasoning(request, max_tokens, forced, &mut out, &mut dropped)?;
    Ok(dropped.finish(out))
}

/// `reasoning.effort` → `thinking`.
fn convert_reasoning(
    request: &Map,
    max_tokens: u64,
    forced_tool: bool,
    out: &mut Map,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let Some(reasoning) = present(request, "reasoning") else {
        return Ok(());
    };
    let reasoning = as_object(reasoning, "reasoning")?;
    let mut effort = None;
    for (key, value) in reasoning {
        let param = field_path("reasoning", key);
        match key.as_str() {
            _ if value.is_null() => {}
            "effort" => effort = Some(as_str(value, &param)?),
            "summary" | "generate_summary" => {
                as_str(value, &param)?;
            }
            _ => return err(param, "is not a known reasoning setting"),
        }
    }
    let Some(effort) = effort else {
        return Ok(());
    };
    if !matches!(
        effort,
        "none" | "minimal" | "low" | "medium" | "high" | "xhigh" | "max"
    ) {
        return err(
            "reasoning.effort",
            format!("\"{effort}\" is not a known effort"),
        );
    }
    let budget = thinking_budget(effort, max_tokens);
    match budget {
        Some(budget) if !forced_tool => {
            for key in ["temperature", "top_p"] {
                if out.contains_key(key) {
                    return err(
                        key,
                        "cannot be combined with reasoning at this model's provider; leave it out or set reasoning.effort to \"none\"",
                    );
                }
            }
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
        Some(_) => dropped.push("reasoning.effort"),
        None if matches!(effort, "none" | "minimal") => {}
        None => dropped.push("reasoning.effort"),
    }
    Ok(())
}

/// Tools and `tool_choice`; true when the choice forces a tool call.
fn convert_tools(
    request: &Map,
    out: &mut Map,
    dropped: &mut Dropped,
) -> Result<bool, ConversionError> {
    let tools = Tools::read(request, true, true, dropped)?;
    let choice = tools.choice(request)?;
    let mut converted: Vec<Value> = tools
        .flat
        .iter()
        .map(|tool| {
            let mut object = Map::new();
            object.insert("name".into(), tool.name.as_str().into());
            if let Some(description) = &tool.description {
                object.insert("description".into(), description.as_str().into());
            }
            object.insert("input_schema".into(), tool.parameters.clone());
            Value::Object(object)
        })
        .collect();
    if let Some((param, web_search)) = &tools.web_search {
        converted.push(web_search_tool(web_search, param, dropped)?);
    }
    let has_tools = !converted.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(converted));
    }
    let mut choice = match choice {
        None => None,
        Some(Choice::Auto) => Some(json!({"type": "auto"})),
        Some(Choice::None) => Some(json!({"type": "none"})),
        Some(Choice::Required) => Some(json!({"type": "any"})),
        Some(Choice::Named(name)) => Some(json!({"type": "tool", "name": name})),
        Some(Choice::WebSearch) => Some(json!({"type": "tool", "name": "web_search"})),
    };
    if let Some(parallel) = present(request, "parallel_tool_calls") {
        if !as_bool(parallel, "parallel_tool_calls")? && has_tools {
            let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if choice.get("type").and_then(Value::as_str) != Some("none") {
                choice["disable_parallel_tool_use"] = Value::Bool(true);
            }
        }
    }
    let forced = matches!(
        choice
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str),
        Some("any" | "tool")
    );
    match choice {
        Some(choice) if has_tools => {
            out.insert("tool_choice".into(), choice);
        }
        Some(_) => dropped.push("tool_choice"),
        None => {}
    }
    Ok(forced && has_tools)
}

/// The Responses `web_search` tool as Anthropic's web search server tool.
fn web_search_tool(
    tool: &Map,
    param: &str,
    dropped: &mut Dropped,
) -> Result<Value, ConversionError> {
    let mut out = Map::new();
    out.insert("type".into(), "web_search_20250305".into());
    out.insert("name".into(), "web_search".into());
    for (key, value) in tool {
        let key_param = field_path(param, key);
        match key.as_str() {
            _ if value.is_null() => {}
            "type" => {}
            "filters" => {
                for (filter, filter_value) in as_object(value, &key_param)? {
                    let filter_param = field_path(&key_param, filter);
                    match filter.as_str() {
                        _ if filter_value.is_null() => {}
                        "allowed_domains" => {
                            as_array(filter_value, &filter_param)?;
                            out.insert("allowed_domains".into(), filter_value.clone());
                        }
                        _ => {
                            return err(filter_param, "is not a filter this model's provider knows")
                        }
                    }
                }
            }
            "user_location" => {
                let location = as_object(value, &key_param)?;
                let mut converted = Map::new();
                converted.insert("type".into(), "approximate".into());
                for field in ["city", "region", "country", "timezone"] {
                    if let Some(v) = present(location, field) {
                        converted.insert(
                            field.into(),
                            as_str(v, &field_path(&key_param, field))?.into(),
                        );
                    }
                }
                out.insert("user_location".into(), Value::Object(converted));
            }
            "external_web_access" | "search_context_size" | "search_content_types" => {
                dropped.push(key_param)
            }
            _ => {
                return err(
                    key_param,
                    "is not a web search setting this model's provider knows",
                )
            }
        }
    }
    Ok(Value::Object(out))
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// The system prompt and the turns being built; consecutive items of one role merge into one
/// turn, with tool results first in a user turn, as Anthropic wants.
#[derive(Debug, Default)]
struct Conversation {
    system: Vec<Value>,
    turns: Vec<(&'static str, Vec<Value>)>,
}

impl Conversation {
    fn system(&mut self, text: &str) {
        if !text.is_empty() {
            self.system.push(text_block(text));
        }
    }

    fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        if blocks.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some((last, last_blocks)) if *last == role => last_blocks.extend(blocks),
            _ => self.turns.push((role, blocks)),
        }
    }

    fn finish(self) -> (Option<Value>, Vec<Value>) {
        let messages = self
            .turns
            .into_iter()
            .map(|(role, mut blocks)| {
                if role == "user" {
                    blocks.sort_by_key(|b| {
                        b.get("type").and_then(Value::as_str) != Some("tool_result")
                    });
                }
                json!({"role": role, "content": blocks})
            })
            .collect();
        let system = match self.system.as_slice() {
            [] => None,
            [only] => Some(only["text"].clone()),
            _ => Some(Value::Array(self.system)),
        };
        (system, messages)
    }

    fn item(
        &mut self,
        item: &Value,
        param: &str,
        dropped: &mut Dropped,
    ) -> Result<(), ConversionError> {
        let item = as_object(item, param)?;
        let kind = match present(item, "type") {
            Some(kind) => as_str(kind, &field_path(param, "type"))?,
            None if item.contains_key("role") => "message",
            None => return err(field_path(param, "type"), "is required"),
        };
        match kind {
            "message" => self.message(item, param),
            "function_call" | "custom_tool_call" => {
                let (name, input) = if kind == "function_call" {
                    let arguments = required_str(item, "arguments", param)?;
                    let input = serde_json::from_str::<Value>(arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    (call_name(item, param)?, input)
                } else {
                    let input = required_str(item, "input", param)?;
                    (required_str(item, "name", param)?.to_owned(), json!({"input": input}))
                };
                let block = json!({
                    "type": "tool_use",
                    "id": required_str(item, "call_id", param)?,
                    "name": name,
                    "input": input,
                });
                self.push("assistant", vec![block]);
                Ok(())
            }
            "function_call_output" | "custom_tool_call_output" => {
                let block = tool_result(item, param)?;
                self.push("user", vec![block]);
                Ok(())
            }
            "reasoning" => {
                match present(item, "encrypted_content")
                    .and_then(Value::as_str)
                    .and_then(decode_envelope)
                {
                    Some(block) => self.push("assistant", vec![block]),
                    None => dropped.push(param),
                }
                Ok(())
            }
            "web_search_call" => {
                dropped.push(param);
                Ok(())
            }
            other => err(
                field_path(param, "type"),
                format!("input items of type \"{other}\" cannot be translated for this model's provider"),
            ),
        }
    }

    fn message(&mut self, item: &Map, param: &str) -> Result<(), ConversionError> {
        let role = required_str(item, "role", param)?;
        let content_param = field_path(param, "content");
        let parts: Vec<Value> = match present(item, "content") {
            Some(Value::String(text)) => vec![json!({"type": "input_text", "text": text})],
            Some(Value::Array(parts)) => parts.clone(),
            _ => {
                return err(
                    content_param,
                    "must be a string or an array of content parts",
                )
            }
        };
        let mut blocks = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let part_param = index_path(&content_param, index);
            let part = as_object(part, &part_param)?;
            let block = match block_type(part, &part_param)? {
                "input_text" | "output_text" => text_block(required_str(part, "text", &part_param)?),
                "refusal" => text_block(required_str(part, "refusal", &part_param)?),
                "input_image" if role == "user" => image_block(part, &part_param)?,
                "input_file" if role == "user" => document_block(part, &part_param)?,
                other => {
                    return err(
                        field_path(&part_param, "type"),
                        format!("content parts of type \"{other}\" cannot be translated in {role} messages for this model's provider"),
                    )
                }
            };
            // Anthropic refuses empty text blocks.
            if block.get("text").and_then(Value::as_str) != Some("") {
                blocks.push(block);
            }
        }
        match role {
            "system" | "developer" => {
                for block in blocks {
                    if let Some(text) = block.get("text").and_then(Value::as_str) {
                        self.system(text);
                    }
                }
                Ok(())
            }
            "user" => {
                self.push("user", blocks);
                Ok(())
            }
            "assistant" => {
                self.push("assistant", blocks);
                Ok(())
            }
            other => err(
                field_path(param, "role"),
                format!("messages with role \"{other}\" cannot be translated"),
            ),
        }
    }
}

fn tool_result(item: &Map, param: &str) -> Result<Value, ConversionError> {
    let output_param = field_path(param, "output");
    let content = match present(item, "output") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                let part_param = index_path(&output_param, index);
                let part = as_object(part, &part_param)?;
                let block = match block_type(part, &part_param)? {
                    "input_text" | "output_text" => {
                        text_block(required_str(part, "text", &part_param)?)
                    }
                    "input_image" => image_block(part, &part_param)?,
                    "input_file" => document_block(part, &part_param)?,
                    other => {
                        return err(
                            field_path(&part_param, "type"),
                            format!(
                                "tool outputs containing \"{other}\" parts cannot be translated"
                            ),
                        )
                    }
                };
                if block.get("text").and_then(Value::as_str) != Some("") {
                    blocks.push(block);
                }
            }
            Value::Array(blocks)
        }
        _ => {
            return err(
                output_param,
                "must be a string or an array of content parts",
            )
        }
    };
    let mut block = json!({
        "type": "tool_result",
        "tool_use_id": required_str(item, "call_id", param)?,
    });
    let empty = content.as_str() == Some("") || content.as_array().is_some_and(Vec::is_empty);
    if !empty {
        block["content"] = content;
    }
    Ok(block)
}

fn image_block(part: &Map, param: &str) -> Result<Value, ConversionError> {
    if present(part, "file_id").is_some() {
        return err(
            field_path(param, "file_id"),
            "uploaded files are not available for this model; send the image as a URL or data: URL",
        );
    }
    let url_param = field_path(param, "image_url");
    let url = required_str(part, "image_url", param)?;
    let source = if let Some((media_type, data)) = parse_data_url(url) {
        json!({"type": "base64", "media_type": media_type, "data": data})
    } else if url.starts_with("https://") || url.starts_with("http://") {
        json!({"type": "url", "url": url})
    } else {
        return err(url_param, "must be an http(s) URL or a base64 data: URL");
    };
    Ok(json!({"type": "image", "source": source}))
}

fn document_block(part: &Map, param: &str) -> Result<Value, ConversionError> {
    if present(part, "file_id").is_some() {
        return err(
            field_path(param, "file_id"),
            "uploaded files are not available for this model; send the file as file_data",
        );
    }
    let mut block = Map::new();
    block.insert("type".into(), "document".into());
    if let Some(data) = present(part, "file_data") {
        let data_param = field_path(param, "file_data");
        let data = as_str(data, &data_param)?;
        match parse_data_url(data) {
            Some(("application/pdf", data)) => {
                block.insert(
                    "source".into(),
                    json!({"type": "base64", "media_type": "application/pdf", "data": data}),
                );
            }
            _ => {
                return err(
                    data_param,
                    "only PDF files (a data:application/pdf;base64 URL) can be translated for this model's provider",
                )
            }
        }
    } else if let Some(url) = present(part, "file_url") {
        let url = as_str(url, &field_path(param, "file_url"))?;
        block.insert("source".into(), json!({"type": "url", "url": url}));
    } else {
        return err(field_path(param, "file_data"), "is required");
    }
    if let Some(filename) = present(part, "filename") {
        block.insert(
            "title".into(),
            as_str(filename, &field_path(param, "filename"))?.into(),
        );
    }
    Ok(Value::Object(block))
}

/// The `encrypted_content` that carries an Anthropic thinking block.
pub(crate) fn encode_envelope(block: &Value) -> String {
    let inner = match block.get("type").and_then(Value::as_str) {
        Some("redacted_thinking") => {
            json!({"redacted": block.get("data").cloned().unwrap_or(Value::Null)})
        }
        _ => json!({
            "thinking": block.get("thinking").cloned().unwrap_or_else(|| json!("")),
            "signature": block.get("signature").cloned().unwrap_or_else(|| json!("")),
        }),
    };
    format!("{REASONING_ENVELOPE_PREFIX}{inner}")
}

/// The thinking block inside an `encrypted_content` Tollgate made; `None` for anything else.
pub(crate) fn decode_envelope(content: &str) -> Option<Value> {
    let inner: Value =
        serde_json::from_str(content.strip_prefix(REASONING_ENVELOPE_PREFIX)?).ok()?;
    if let Some(data) = inner.get("redacted").and_then(Value::as_str) {
        return Some(json!({"type": "redacted_thinking", "data": data}));
    }
    Some(json!({
        "type": "thinking",
        "thinking": inner.get("thinking")?.as_str()?,
        "signature": inner.get("signature")?.as_str()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_effort_and_max_tokens() {
        assert_eq!(thinking_budget("low", 32000), Some(2048));
        assert_eq!(thinking_budget("high", 32000), Some(16000));
        assert_eq!(thinking_budget("high", 100_000), Some(16384));
        assert_eq!(thinking_budget("medium", 1500), None);
        assert_eq!(thinking_budget("minimal", 100_000), None);
        assert_eq!(thinking_budget("none", 100_000), None);
    }

    #[test]
    fn envelopes_round_trip_and_reject_foreign_content() {
        let thinking = json!({"type": "thinking", "thinking": "Let me see", "signature": "EsgD"});
        assert_eq!(decode_envelope(&encode_envelope(&thinking)), Some(thinking));
        let redacted = json!({"type": "redacted_thinking", "data": "EmwK"});
        assert_eq!(decode_envelope(&encode_envelope(&redacted)), Some(redacted));
        assert_eq!(decode_envelope("gAAAAABo-openai-encrypted"), None);
        assert_eq!(decode_envelope("tollgate.anthropic.v1:{not json"), None);
    }
}
