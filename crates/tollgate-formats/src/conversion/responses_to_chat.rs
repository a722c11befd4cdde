//! OpenAI Responses client, OpenAI Chat Completions upstream.
//!
//! # Request
//! | Responses | Chat Completions |
//! |---|---|
//! | `instructions` | first message, `role: system` |
//! | `input` string | one user message |
//! | `message` items (user / assistant / system / developer) | messages (`developer` becomes `system`, which every compatible server knows) |
//! | `input_text` / `output_text` / `refusal` parts, `input_image` (URL or data: URL), `input_file` (`file_data`) | `text` parts / assistant text / `image_url` parts / `file` parts |
//! | `function_call` items (`namespace` + `name`) | `tool_calls` of the preceding assistant message (or a new one), named `namespace__name` |
//! | `custom_tool_call` items | `tool_calls` whose arguments are `{"input": ...}` |
//! | `function_call_output` / `custom_tool_call_output` items | `role: tool` messages; their images follow in a user message |
//! | `tools[]` function tools, `namespace` tools (flattened to `namespace__name`), `custom` tools (one string argument `input`) | `tools[]{type: function, function{...}}` |
//! | `tool_choice` auto / none / required / `{type: function, name}` | same values, named as `{type: function, function{name}}` |
//! | `parallel_tool_calls` | same (only with tools: OpenAI rejects it otherwise) |
//! | `max_output_tokens` | `max_completion_tokens` |
//! | `temperature`, `top_p`, `user` | same |
//! | `text.format` json_schema / json_object, `text.verbosity` | `response_format`, `verbosity` |
//! | `reasoning.effort` | `reasoning_effort` |
//! | `stream: true` | `stream: true`, `stream_options.include_usage: true` |
//!
//! Dropped and reported: `tool_choice` and `parallel_tool_calls` without tools, `reasoning`
//! and `web_search_call` items in `input` (the upstream cannot read them), `reasoning.summary`
//! (Chat returns no summaries, which a client must accept anyway), built-in tools offered
//! (`web_search`, `local_shell`, `tool_search`, `image_generation`, ...: see the module rules),
//! `defer_loading` on tools, a namespace's `description`, a custom tool's `format` (its grammar),
//! `client_metadata`, `metadata`, `store: true` (nothing is stored; responses say `store:
//! false`), `service_tier`, `prompt_cache_key`, `safety_identifier`, `stream_options`.
//! Honoured as neutral: `include: ["reasoning.encrypted_content"]` (no reasoning items come
//! back), `truncation: "disabled"`, `background: false`.
//! Errors: a `tool_choice` that forces a built-in tool, `previous_response_id`,
//! `conversation`, `item_reference` and other item types, `file_id`s and `file_url`s,
//! `background: true`, `truncation: "auto"`, `prompt`, `max_tool_calls`, `top_logprobs`, other
//! `include` values, unknown fields.
//!
//! # Response
//! One `message` output item (text, or a refusal part) and one `function_call` item per tool
//! call (with its `namespace` again, or a `custom_tool_call` for a custom tool);
//! `reasoning_content` is not returned. The response object echoes the request's
//! settings (`instructions`, `tools`, `tool_choice`, `temperature`, ...) as OpenAI does.
//! `finish_reason: length` gives `status: incomplete` with reason `max_output_tokens`,
//! `content_filter` gives `incomplete` with reason `content_filter`.

use bytes::Bytes;
use serde_json::{json, Value};

use super::responses_common::{
    call_item, call_name, custom_input, drop_hint, echo_fields, origin_in, output_text_part,
    response_object, tool_names, Choice, Origin, ResponseParts, Tools,
};
use super::{
    as_array, as_bool, as_count, as_number, as_object, as_str, block_type, err, field_path, frame,
    id_suffix, index_path, parse_event, present, required_str, responses_usage_json,
    upstream_error_message, ConversionError, Converted, Dropped, Map, StreamConverter,
};
use crate::frames::StreamFailure;
use crate::sse::SseEvent;
use crate::usage::{self, Usage};
use crate::Format;

/// Converts a Responses request into a Chat Completions request for `upstream_model`.
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

    let mut messages = Messages::default();
    if let Some(instructions) = present(request, "instructions") {
        messages.push(json!({"role": "system", "content": as_str(instructions, "instructions")?}));
    }
    match present(request, "input") {
        None => return err("input", "is required"),
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                convert_item(
                    item,
                    &index_path("input", index),
                    &mut messages,
                    &mut dropped,
                )?;
            }
        }
        Some(_) => return err("input", "must be a string or an array of items"),
    }
    out.insert("messages".into(), Value::Array(messages.finish()));

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
            | "parallel_tool_calls" => {}
            "max_output_tokens" => {
                out.insert(
                    "max_completion_tokens".into(),
                    as_count(value, param)?.into(),
                );
            }
            "temperature" | "top_p" => {
                as_number(value, param)?;
                out.insert(key.clone(), value.clone());
            }
            "user" => {
                out.insert(key.clone(), as_str(value, param)?.into());
            }
            "stream" => {
                if as_bool(value, param)? {
                    out.insert("stream".into(), true.into());
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "text" => convert_text_options(as_object(value, param)?, &mut out)?,
            "reasoning" => {
                let reasoning = as_object(value, param)?;
                for (reasoning_key, reasoning_value) in reasoning {
                    match reasoning_key.as_str() {
                        _ if reasoning_value.is_null() => {}
                        "effort" => {
                            let effort = as_str(reasoning_value, "reasoning.effort")?;
                            out.insert("reasoning_effort".into(), effort.into());
                        }
                        "summary" | "generate_summary" => {
                            dropped.push(field_path(param, reasoning_key));
                        }
                        other => {
                            return err(
                                field_path(param, other),
                                "is not a known reasoning setting",
                            )
                        }
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
            "safety_identifier" => dropped.push(param),
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
    convert_tools(request, &mut out, &mut dropped)?;
    Ok(dropped.finish(out))
}

fn convert_tools(
    request: &Map,
    out: &mut Map,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let tools = Tools::read(request, false, false, dropped)?;
    let choice = tools.choice(request)?;
    let has_tools = tools.any();
    if has_tools {
        let converted = tools
            .flat
            .iter()
            .map(|tool| {
                let mut function = Map::new();
                function.insert("name".into(), tool.name.as_str().into());
                if let Some(description) = &tool.description {
                    function.insert("description".into(), description.as_str().into());
                }
                function.insert("parameters".into(), tool.parameters.clone());
                if tool.strict {
                    function.insert("strict".into(), true.into());
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        out.insert("tools".into(), Value::Array(converted));
        if let Some(parallel) = present(request, "parallel_tool_calls") {
            out.insert(
                "parallel_tool_calls".into(),
                as_bool(parallel, "parallel_tool_calls")?.into(),
            );
        }
    } else if present(request, "parallel_tool_calls").is_some() {
        dropped.push("parallel_tool_calls");
    }
    let converted = match choice {
        None => None,
        Some(Choice::Auto) => Some(json!("auto")),
        Some(Choice::None) => Some(json!("none")),
        Some(Choice::Required) => Some(json!("required")),
        Some(Choice::Named(name)) => Some(json!({"type": "function", "function": {"name": name}})),
        Some(Choice::WebSearch) => {
            return err(
                "tool_choice.type",
                "web search cannot be run by this model's provider",
            )
        }
    };
    // Without tools a tool_choice means nothing, and OpenAI rejects it.
    match converted {
        Some(choice) if has_tools => {
            out.insert("tool_choice".into(), choice);
        }
        Some(_) => dropped.push("tool_choice"),
        None => {}
    }
    Ok(())
}

/// The Chat messages being built, with the images of tool outputs waiting for the tool
/// messages of their turn to end (a user message may not sit between tool messages).
#[derive(Debug, Default)]
struct Messages {
    messages: Vec<Value>,
    pending_images: Vec<Value>,
}

impl Messages {
    fn push(&mut self, message: Value) {
        if message.get("role").and_then(Value::as_str) != Some("tool") {
            self.flush_images();
        }
        self.messages.push(message);
    }

    fn flush_images(&mut self) {
        if !self.pending_images.is_empty() {
            let parts = std::mem::take(&mut self.pending_images);
            self.messages
                .push(json!({"role": "user", "content": parts}));
        }
    }

    fn last_mut(&mut self) -> Option<&mut Value> {
        self.messages.last_mut()
    }

    fn finish(mut self) -> Vec<Value> {
        self.flush_images();
        self.messages
    }

    /// Adds a tool call to the preceding assistant message, or to a new one.
    fn push_call(&mut self, call: Value) {
        let previous_assistant = self
            .last_mut()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
        match previous_assistant {
            Some(message) => match message.get_mut("tool_calls").and_then(Value::as_array_mut) {
                Some(calls) => calls.push(call),
                None => message["tool_calls"] = json!([call]),
            },
            None => self.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
        }
    }
}

fn convert_text_options(text: &Map, out: &mut Map) -> Result<(), ConversionError> {
    if let Some(format) = present(text, "format") {
        let format = as_object(format, "text.format")?;
        match block_type(format, "text.format")? {
            "text" => {}
            "json_object" => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            "json_schema" => {
                let mut schema = Map::new();
                schema.insert(
                    "name".into(),
                    required_str(format, "name", "text.format")?.into(),
                );
                for key in ["schema", "description", "strict"] {
                    if let Some(value) = present(format, key) {
                        schema.insert(key.into(), value.clone());
                    }
                }
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            other => {
                return err(
                    "text.format.type",
                    format!("the \"{other}\" text format cannot be translated"),
                )
            }
        }
    }
    if let Some(verbosity) = present(text, "verbosity") {
        out.insert(
            "verbosity".into(),
            as_str(verbosity, "text.verbosity")?.into(),
        );
    }
    Ok(())
}

fn convert_item(
    item: &Value,
    param: &str,
    out: &mut Messages,
    dropped: &mut Dropped,
) -> Result<(), ConversionError> {
    let item = as_object(item, param)?;
    let kind = match present(item, "type") {
        Some(kind) => as_str(kind, &field_path(param, "type"))?,
        None if item.contains_key("role") => "message",
        None => return err(field_path(param, "type"), "is required"),
    };
    match kind {
        "message" => convert_message_item(item, param, out),
        "function_call" => {
            out.push_call(json!({
                "id": required_str(item, "call_id", param)?,
                "type": "function",
                "function": {
                    "name": call_name(item, param)?,
                    "arguments": required_str(item, "arguments", param)?,
                },
            }));
            Ok(())
        }
        "custom_tool_call" => {
            let input = required_str(item, "input", param)?;
            out.push_call(json!({
                "id": required_str(item, "call_id", param)?,
                "type": "function",
                "function": {
                    "name": required_str(item, "name", param)?,
                    "arguments": json!({"input": input}).to_string(),
                },
            }));
            Ok(())
        }
        "function_call_output" | "custom_tool_call_output" => {
            let output_param = field_path(param, "output");
            let output = match present(item, "output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => {
                    let mut texts = Vec::new();
                    for (index, part) in parts.iter().enumerate() {
                        let part_param = index_path(&output_param, index);
                        let part = as_object(part, &part_param)?;
                        match block_type(part, &part_param)? {
                            "input_text" | "output_text" => {
                                texts.push(required_str(part, "text", &part_param)?)
                            }
                            "input_image" => {
                                out.pending_images.push(image_part(part, &part_param)?)
                            }
                            other => {
                                return err(
                                    field_path(&part_param, "type"),
                                    format!("tool outputs containing \"{other}\" parts cannot be translated; only text and images are supported"),
                                )
                            }
                        }
                    }
                    texts.join("\n")
                }
                _ => {
                    return err(
                        output_param,
                        "must be a string or an array of content parts",
                    )
                }
            };
            out.push(json!({
                "role": "tool",
                "tool_call_id": required_str(item, "call_id", param)?,
                "content": output,
            }));
            Ok(())
        }
        "reasoning" | "web_search_call" => {
            dropped.push(param);
            Ok(())
        }
        other => err(
            field_path(param, "type"),
            format!(
                "input items of type \"{other}\" cannot be translated for this model's provider"
            ),
        ),
    }
}

fn convert_message_item(
    item: &Map,
    param: &str,
    out: &mut Messages,
) -> Result<(), ConversionError> {
    let role = required_str(item, "role", param)?;
    let content_param = field_path(param, "content");
    let parts = match present(item, "content") {
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        Some(Value::Array(parts)) => {
            let mut converted = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                let part_param = index_path(&content_param, index);
                let part = as_object(part, &part_param)?;
                converted.push(match block_type(part, &part_param)? {
                    "input_text" | "output_text" => {
                        json!({"type": "text", "text": required_str(part, "text", &part_param)?})
                    }
                    "refusal" => {
                        json!({"type": "text", "text": required_str(part, "refusal", &part_param)?})
                    }
                    "input_image" => image_part(part, &part_param)?,
                    "input_file" => file_part(part, &part_param)?,
                    other => {
                        return err(
                            field_path(&part_param, "type"),
                            format!("content parts of type \"{other}\" cannot be translated for this model's provider"),
                        )
                    }
                });
            }
            converted
        }
        _ => {
            return err(
                content_param,
                "must be a string or an array of content parts",
            )
        }
    };
    let texts = || -> Vec<&str> {
        parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect()
    };
    let all_text = parts
        .iter()
        .all(|p| p.get("type").and_then(Value::as_str) == Some("text"));
    let message = match role {
        "system" | "developer" | "assistant" if !all_text => {
            return err(
                content_param,
                format!("{role} messages can only contain text"),
            )
        }
        "system" | "developer" => json!({"role": "system", "content": texts().join("\n")}),
        "assistant" => json!({"role": "assistant", "content": texts().concat()}),
        "user" => {
            let content = match parts.as_slice() {
                [only] if all_text => only["text"].clone(),
                _ => Value::Array(parts),
            };
            json!({"role": "user", "content": content})
        }
        other => {
            return err(
                field_path(param, "role"),
                format!("messages with role \"{other}\" cannot be translated"),
            )
        }
    };
    out.push(message);
    Ok(())
}

/// An `input_file` with inline data as a Chat `file` part (`file_data` is a data: URL).
fn file_part(part: &Map, param: &str) -> Result<Value, ConversionError> {
    let Some(data) = present(part, "file_data") else {
        return err(
            field_path(param, "file_data"),
            "is required: uploaded files and file URLs are not available for this model",
        );
    };
    let mut file = Map::new();
    file.insert(
        "file_data".into(),
        as_str(data, &field_path(param, "file_data"))?.into(),
    );
    if let Some(name) = present(part, "filename") {
        file.insert(
            "filename".into(),
            as_str(name, &field_path(param, "filename"))?.into(),
        );
    }
    Ok(json!({"type": "file", "file": file}))
}

fn image_part(part: &Map, param: &str) -> Result<Value, ConversionError> {
    if present(part, "file_id").is_some() {
        return err(
            field_path(param, "file_id"),
            "uploaded files are not available for this model; send the image as a URL or data: URL",
        );
    }
    let mut image = Map::new();
    image.insert("url".into(), required_str(part, "image_url", param)?.into());
    if let Some(detail) = present(part, "detail") {
        image.insert(
            "detail".into(),
            as_str(detail, &field_path(param, "detail"))?.into(),
        );
    }
    Ok(json!({"type": "image_url", "image_url": image}))
}

/// `status` and `incomplete_details` for a Chat `finish_reason`.
fn status_for(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn reasoning_tokens(usage_object: Option<&Value>) -> u64 {
    usage::count(
        usage_object.and_then(|u| u.pointer("/completion_tokens_details/reasoning_tokens")),
    )
    .unwrap_or(0)
}

/// Converts a Chat Completions response into a Responses response; `request` is the client's
/// original Responses request, whose settings the response repeats.
pub fn convert_response(
    response: &Value,
    request: &Value,
    public_model: &str,
) -> Result<Value, ConversionError> {
    let choice = response
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| ConversionError::new("choices", "the upstream response has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let suffix = id_suffix(response.get("id").and_then(Value::as_str));
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str);
    let (status, incomplete_details) = status_for(finish_reason);
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };

    let mut output = Vec::new();
    let text: String = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(output_text_part(&text));
    }
    if let Some(refusal) = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(json!({"type": "refusal", "refusal": refusal}));
    }
    if !content.is_empty() {
        output.push(json!({
            "id": format!("msg_{suffix}"),
            "type": "message",
            "status": item_status,
            "role": "assistant",
            "content": content,
        }));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        let names = tool_names(request);
        for call in calls {
            let call_id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let function = call.get("function").unwrap_or(&Value::Null);
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = function
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            output.push(call_item(
                &origin_in(&names, name),
                call_id,
                arguments,
                "completed",
            ));
        }
    }
    let usage = usage::from_chat_response(response).unwrap_or_default();
    let mut echo = echo_fields(request);
    echo.insert("incomplete_details".into(), incomplete_details);
    Ok(response_object(
        &echo,
        ResponseParts {
            id: &format!("resp_{suffix}"),
            created_at: response.get("created").and_then(Value::as_u64).unwrap_or(0),
            model: public_model,
            status,
            output,
            usage: responses_usage_json(&usage, reasoning_tokens(response.get("usage"))),
        },
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemKind {
    Text,
    Refusal,
    FunctionCall {
        chat_index: u64,
        call_id: String,
        origin: Origin,
    },
}

/// One output item of the streamed response.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    kind: ItemKind,
    /// The text, refusal or arguments streamed so far.
    content: String,
    open: bool,
    status: &'static str,
}

impl Item {
    fn part(&self) -> Value {
        match self.kind {
            ItemKind::Refusal => json!({"type": "refusal", "refusal": self.content}),
            _ => output_text_part(&self.content),
        }
    }

    fn to_json(&self) -> Value {
        match &self.kind {
            ItemKind::Text | ItemKind::Refusal => {
                let content = if self.open && self.content.is_empty() {
                    json!([])
                } else {
                    json!([self.part()])
                };
                json!({"id": self.id, "type": "message", "status": self.status,
                    "content": content, "role": "assistant"})
            }
            ItemKind::FunctionCall {
                call_id, origin, ..
            } => call_item(origin, call_id, &self.content, self.status),
        }
    }
}

/// Converts a Chat Completions stream into Responses events: `response.created`,
/// `response.in_progress`, per output item `response.output_item.added`, content-part and delta
/// events and their `.done` events, `response.output_item.done`, then `response.completed` (or
/// `response.incomplete`) with the whole response and its usage. Every event carries a
/// `sequence_number` counting from 0.
#[derive(Debug, Clone)]
pub struct ResponseStream {
    echo: Map,
    names: Vec<(String, Origin)>,
    public_model: String,
    sequence_number: u64,
    id: Option<String>,
    suffix: String,
    created_at: u64,
    items: Vec<Item>,
    message_items: u64,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    reasoning_tokens: u64,
    content_deltas: u64,
    done: bool,
}

impl ResponseStream {
    /// A converter for the answer to `request` (the client's Responses request, whose settings
    /// the response objects repeat), showing `public_model`.
    pub fn new(request: &Value, public_model: &str) -> Self {
        Self {
            echo: echo_fields(request),
            names: tool_names(request),
            public_model: public_model.to_owned(),
            sequence_number: 0,
            id: None,
            suffix: String::new(),
            created_at: 0,
            items: Vec::new(),
            message_items: 0,
            finish_reason: None,
            usage: None,
            reasoning_tokens: 0,
            content_deltas: 0,
            done: false,
        }
    }

    fn event(&mut self, kind: &str, payload: Value) -> Bytes {
        let mut event = Map::new();
        event.insert("type".into(), kind.into());
        event.insert("sequence_number".into(), self.sequence_number.into());
        if let Value::Object(payload) = payload {
            event.extend(payload);
        }
        self.sequence_number += 1;
        frame(Some(kind), &Value::Object(event))
    }

    fn response(&self, status: &str, usage: Value) -> Value {
        let output = self.items.iter().map(Item::to_json).collect();
        response_object(
            &self.echo,
            ResponseParts {
                id: self.id.as_deref().unwrap_or_default(),
                created_at: self.created_at,
                model: &self.public_model,
                status,
                output,
                usage,
            },
        )
    }

    fn start(&mut self, chunk: &Value, frames: &mut Vec<Bytes>) {
        if self.id.is_some() {
            return;
        }
        self.suffix = id_suffix(chunk.get("id").and_then(Value::as_str));
        self.id = Some(format!("resp_{}", self.suffix));
        self.created_at = chunk.get("created").and_then(Value::as_u64).unwrap_or(0);
        let response = self.response("in_progress", Value::Null);
        frames.push(self.event("response.created", json!({"response": response})));
        let response = self.response("in_progress", Value::Null);
        frames.push(self.event("response.in_progress", json!({"response": response})));
    }

    fn open_item(&mut self) -> Option<usize> {
        self.items.iter().rposition(|item| item.open)
    }

    fn close_open_item(&mut self, frames: &mut Vec<Bytes>) {
        let Some(index) = self.open_item() else {
            return;
        };
        let status = match self.finish_reason.as_deref() {
            Some("length" | "content_filter") => "incomplete",
            _ => "completed",
        };
        let item = &mut self.items[index];
        item.open = false;
        item.status = if matches!(item.kind, ItemKind::FunctionCall { .. }) {
            "completed"
        } else {
            status
        };
        let item = item.clone();
        let (item_id, output_index) = (item.id.clone(), index);
        match &item.kind {
            ItemKind::Text | ItemKind::Refusal => {
                let (done_kind, done_payload) = if item.kind == ItemKind::Text {
                    (
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                            "text": item.content, "logprobs": []}),
                    )
                } else {
                    (
                        "response.refusal.done",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                            "refusal": item.content}),
                    )
                };
                frames.push(self.event(done_kind, done_payload));
                frames.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                        "part": item.part()}),
                ));
            }
            ItemKind::FunctionCall {
                origin: Origin::Function { name, .. },
                ..
            } => {
                frames.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": output_index, "name": name,
                        "arguments": item.content}),
                ));
            }
            ItemKind::FunctionCall {
                origin: Origin::Custom { .. },
                ..
            } => {
                frames.push(self.event(
                    "response.custom_tool_call_input.done",
                    json!({"item_id": item_id, "output_index": output_index,
                        "input": custom_input(&item.content)}),
                ));
            }
        }
        frames.push(self.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item.to_json()}),
        ));
    }

    /// Text or refusal delta: continue the open message item of that kind or open a new one.
    fn message_delta(&mut self, kind: ItemKind, delta: &str, frames: &mut Vec<Bytes>) {
        let current = self
            .open_item()
            .filter(|&index| self.items[index].kind == kind);
        let index = match current {
            Some(index) => index,
            None => {
                self.close_open_item(frames);
                let id = match self.message_items {
                    0 => format!("msg_{}", self.suffix),
                    n => format!("msg_{}_{n}", self.suffix),
                };
                self.message_items += 1;
                let item = Item {
                    id,
                    kind,
                    content: String::new(),
                    open: true,
                    status: "in_progress",
                };
                let index = self.items.len();
                let (item_json, part, item_id) = (item.to_json(), item.part(), item.id.clone());
                self.items.push(item);
                frames.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item_json}),
                ));
                frames.push(self.event(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
                ));
                index
            }
        };
        self.content_deltas += 1;
        let item = &mut self.items[index];
        item.content.push_str(delta);
        let (item_id, is_text) = (item.id.clone(), item.kind == ItemKind::Text);
        let (kind, payload) = if is_text {
            (
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
            )
        } else {
            (
                "response.refusal.delta",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta}),
            )
        };
        frames.push(self.event(kind, payload));
    }

    fn tool_call(&mut self, position: usize, call: &Value, frames: &mut Vec<Bytes>) {
        let chat_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let function = call.get("function").unwrap_or(&Value::Null);
        let known = self.items.iter().position(|item| {
            matches!(&item.kind, ItemKind::FunctionCall { chat_index: i, .. } if *i == chat_index)
        });
        let index = match known {
            Some(index) => index,
            None => {
                self.close_open_item(frames);
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("call_{}_{chat_index}", self.suffix));
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let origin = origin_in(&self.names, name);
                let id = call_item(&origin, &call_id, "", "in_progress")
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let item = Item {
                    id,
                    kind: ItemKind::FunctionCall {
                        chat_index,
                        call_id,
                        origin,
                    },
                    content: String::new(),
                    open: true,
                    status: "in_progress",
                };
                let index = self.items.len();
                let item_json = item.to_json();
                self.items.push(item);
                frames.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item_json}),
                ));
                index
            }
        };
        if let Some(arguments) = function
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            self.content_deltas += 1;
            self.items[index].content.push_str(arguments);
            let item_id = self.items[index].id.clone();
            // A custom tool's input is known once its JSON arguments are whole.
            let custom = matches!(
                self.items[index].kind,
                ItemKind::FunctionCall {
                    origin: Origin::Custom { .. },
                    ..
                }
            );
            if !custom {
                frames.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": index, "delta": arguments}),
                ));
            }
        }
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        self.start(&Value::Null, &mut frames);
        self.close_open_item(&mut frames);
        let (status, incomplete_details) = status_for(self.finish_reason.as_deref());
        // Without a usage report (a server that ignores include_usage), estimate the output.
        let usage = self.usage.unwrap_or(Usage {
            output_tokens: self.content_deltas,
            ..Usage::default()
        });
        let mut response =
            self.response(status, responses_usage_json(&usage, self.reasoning_tokens));
        response["incomplete_details"] = incomplete_details;
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        frames.push(self.event(kind, json!({"response": response})));
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
        self.start(&chunk, &mut frames);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage::from_chat_usage(usage));
            self.reasoning_tokens = reasoning_tokens(Some(usage));
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
            let piece = |key: &str| {
                delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            if let Some(text) = piece("content") {
                self.message_delta(ItemKind::Text, text, &mut frames);
            }
            if let Some(refusal) = piece("refusal") {
                self.message_delta(ItemKind::Refusal, refusal, &mut frames);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (position, call) in calls.iter().enumerate() {
                    self.tool_call(position, call, &mut frames);
                }
            }
        }
        if let Some(finish_reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(finish_reason.to_owned());
            self.close_open_item(&mut frames);
        }
        Ok(frames)
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
        crate::frames::error_frame(Format::Responses, StreamFailure::Upstream, message)
    }
}
