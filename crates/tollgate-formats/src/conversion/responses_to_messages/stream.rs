//! An Anthropic Messages event stream as Responses events.

use bytes::Bytes;
use serde_json::{json, Value};

use super::answer::{
    reasoning_item, reasoning_tokens, status_for, tool_item, wants_summary, web_search_item,
};
use crate::conversion::responses_common::{
    custom_input, echo_fields, origin_in, output_text_part, response_object, tool_names, Origin,
    ResponseParts,
};
use crate::conversion::{
    err, frame, id_suffix, parse_event, responses_usage_json, upstream_error_message,
    ConversionError, Map, StreamConverter,
};
use crate::frames::StreamFailure;
use crate::sse::SseEvent;
use crate::usage::UsageTracker;
use crate::Format;

#[derive(Debug, Clone)]
enum Kind {
    /// Text parts, one per `text` block.
    Message(Vec<String>),
    /// A thinking block being built (`thinking`, `signature`) or a redacted one.
    Reasoning(Value),
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
    WebSearch {
        call_id: String,
        input: String,
    },
}

#[derive(Debug, Clone)]
struct Item {
    id: String,
    kind: Kind,
    open: bool,
}

/// Converts an Anthropic Messages stream into Responses events: `response.created`,
/// `response.in_progress`; per output item `response.output_item.added` … `.done` with, for a
/// message, `response.content_part.added`, `response.output_text.delta` / `.done`,
/// `response.content_part.done`; for reasoning (when the request asked for summaries)
/// `response.reasoning_summary_part.added`, `response.reasoning_summary_text.delta` / `.done`,
/// `response.reasoning_summary_part.done`; for a call `response.function_call_arguments.delta`
/// / `.done` (or `response.custom_tool_call_input.done`); for a web search
/// `response.web_search_call.in_progress` / `.searching` / `.completed`; then
/// `response.completed` (or `response.incomplete`) with the whole response and its usage.
/// Every event carries a `sequence_number` counting from 0.
#[derive(Debug, Clone)]
pub struct ResponseStream {
    echo: Map,
    names: Vec<(String, Origin)>,
    summary: bool,
    public_model: String,
    created_at: u64,
    sequence_number: u64,
    id: Option<String>,
    suffix: String,
    items: Vec<Item>,
    /// Anthropic block index → (item index, content index within a message).
    blocks: Vec<(u64, usize, usize)>,
    messages: u64,
    reasoning: u64,
    stop_reason: Option<String>,
    reasoning_tokens: u64,
    tracker: UsageTracker,
    done: bool,
}

impl ResponseStream {
    /// A converter for the answer to `request` (the client's Responses request), showing
    /// `public_model` and `created_at` (Unix seconds).
    pub fn new(request: &Value, public_model: &str, created_at: u64) -> Self {
        Self {
            echo: echo_fields(request),
            names: tool_names(request),
            summary: wants_summary(request),
            public_model: public_model.to_owned(),
            created_at,
            sequence_number: 0,
            id: None,
            suffix: String::new(),
            items: Vec::new(),
            blocks: Vec::new(),
            messages: 0,
            reasoning: 0,
            stop_reason: None,
            reasoning_tokens: 0,
            tracker: UsageTracker::new(Format::AnthropicMessages),
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

    fn item_status(&self) -> &'static str {
        match status_for(self.stop_reason.as_deref()).0 {
            "completed" => "completed",
            _ => "incomplete",
        }
    }

    fn item_json(&self, index: usize) -> Value {
        let item = &self.items[index];
        let status = if item.open {
            "in_progress"
        } else {
            "completed"
        };
        match &item.kind {
            Kind::Message(parts) => {
                let status = if item.open {
                    "in_progress"
                } else {
                    self.item_status()
                };
                let content: Vec<Value> = parts.iter().map(|t| output_text_part(t)).collect();
                json!({"id": item.id, "type": "message", "status": status, "role": "assistant", "content": content})
            }
            Kind::Reasoning(block) => {
                let mut value = reasoning_item(&item.id, block, self.summary && !item.open, status);
                if item.open {
                    value["summary"] = json!([]);
                    if let Some(object) = value.as_object_mut() {
                        object.remove("encrypted_content");
                    }
                }
                value
            }
            Kind::Call {
                call_id,
                name,
                arguments,
            } => {
                let arguments = if !item.open && arguments.is_empty() {
                    "{}"
                } else {
                    arguments
                };
                tool_item(&self.names, call_id, name, arguments, status)
            }
            Kind::WebSearch { call_id, input } => {
                let query: Option<String> = serde_json::from_str::<Value>(input)
                    .ok()
                    .and_then(|v| v.get("query").and_then(Value::as_str).map(str::to_owned));
                web_search_item(call_id, query.as_deref(), status)
            }
        }
    }

    fn response(&self, status: &str, usage: Value) -> Value {
        let output = (0..self.items.len()).map(|i| self.item_json(i)).collect();
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

    fn start(&mut self, upstream_id: Option<&str>, frames: &mut Vec<Bytes>) {
        if self.id.is_some() {
            return;
        }
        self.suffix = id_suffix(upstream_id);
        self.id = Some(format!("resp_{}", self.suffix));
        let response = self.response("in_progress", Value::Null);
        frames.push(self.event("response.created", json!({"response": response})));
        let response = self.response("in_progress", Value::Null);
        frames.push(self.event("response.in_progress", json!({"response": response})));
    }

    fn add_item(&mut self, id: String, kind: Kind, frames: &mut Vec<Bytes>) -> usize {
        let index = self.items.len();
        self.items.push(Item {
            id,
            kind,
            open: true,
        });
        let item = self.item_json(index);
        frames.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        index
    }

    fn done_item(&mut self, index: usize, frames: &mut Vec<Bytes>) {
        if !self.items[index].open {
            return;
        }
        self.items[index].open = false;
        let item = self.item_json(index);
        frames.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
    }

    /// Closes the message item that text blocks are being added to, if any.
    fn close_message(&mut self, frames: &mut Vec<Bytes>) {
        if let Some(index) = self.open_message() {
            self.done_item(index, frames);
        }
    }

    fn open_message(&self) -> Option<usize> {
        self.items
            .iter()
            .rposition(|item| item.open && matches!(item.kind, Kind::Message(_)))
    }

    fn block(&self, index: u64) -> Option<(usize, usize)> {
        self.blocks
            .iter()
            .find(|(block, _, _)| *block == index)
            .map(|(_, item, part)| (*item, *part))
    }

    fn block_start(
        &mut self,
        data: &Value,
        frames: &mut Vec<Bytes>,
    ) -> Result<(), ConversionError> {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = data.get("content_block").unwrap_or(&Value::Null);
        let text = |key: &str| {
            block
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (item, part) = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let item = match self.open_message() {
                    Some(item) => item,
                    None => {
                        let id = match self.messages {
                            0 => format!("msg_{}", self.suffix),
                            n => format!("msg_{}_{n}", self.suffix),
                        };
                        self.messages += 1;
                        self.add_item(id, Kind::Message(Vec::new()), frames)
                    }
                };
                let part = match &mut self.items[item].kind {
                    Kind::Message(parts) => {
                        parts.push(String::new());
                        parts.len() - 1
                    }
                    _ => 0,
                };
                let item_id = self.items[item].id.clone();
                frames.push(self.event(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": item, "content_index": part,
                        "part": output_text_part("")}),
                ));
                let initial = text("text");
                if !initial.is_empty() {
                    self.text_delta(item, part, &initial, frames);
                }
                (item, part)
            }
            Some(kind @ ("thinking" | "redacted_thinking")) => {
                self.close_message(frames);
                let id = format!("rs_{}_{}", self.suffix, self.reasoning);
                self.reasoning += 1;
                let item = self.add_item(id, Kind::Reasoning(block.clone()), frames);
                if kind == "redacted_thinking" {
                    self.done_item(item, frames);
                } else if self.summary {
                    let item_id = self.items[item].id.clone();
                    frames.push(self.event(
                        "response.reasoning_summary_part.added",
                        json!({"item_id": item_id, "output_index": item, "summary_index": 0,
                            "part": {"type": "summary_text", "text": ""}}),
                    ));
                }
                (item, 0)
            }
            Some("tool_use") => {
                self.close_message(frames);
                let call_id = text("id");
                let name = text("name");
                let probe = tool_item(&self.names, &call_id, &name, "", "in_progress");
                let id = probe
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let arguments = block
                    .get("input")
                    .filter(|input| input.as_object().is_some_and(|o| !o.is_empty()))
                    .map(Value::to_string)
                    .unwrap_or_default();
                (
                    self.add_item(
                        id,
                        Kind::Call {
                            call_id,
                            name,
                            arguments,
                        },
                        frames,
                    ),
                    0,
                )
            }
            Some("server_tool_use") if text("name") == "web_search" => {
                self.close_message(frames);
                let call_id = text("id");
                let probe = web_search_item(&call_id, None, "in_progress");
                let id = probe
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let item = self.add_item(
                    id.clone(),
                    Kind::WebSearch {
                        call_id,
                        input: String::new(),
                    },
                    frames,
                );
                frames.push(self.event(
                    "response.web_search_call.in_progress",
                    json!({"item_id": id, "output_index": item}),
                ));
                (item, 0)
            }
            Some("web_search_tool_result") => {
                let call_id = text("tool_use_id");
                let found = self.items.iter().position(|item| {
                    matches!(&item.kind, Kind::WebSearch { call_id: id, .. } if *id == call_id)
                });
                if let Some(item) = found {
                    let item_id = self.items[item].id.clone();
                    for kind in [
                        "response.web_search_call.searching",
                        "response.web_search_call.completed",
                    ] {
                        frames.push(
                            self.event(kind, json!({"item_id": item_id, "output_index": item})),
                        );
                    }
                    self.done_item(item, frames);
                }
                return Ok(());
            }
            other => {
                return err(
                    "content_block.type",
                    format!(
                        "the upstream streamed a \"{}\" block, which has no Responses equivalent",
                        other.unwrap_or("untyped")
                    ),
                )
            }
        };
        self.blocks.push((index, item, part));
        Ok(())
    }

    fn text_delta(&mut self, item: usize, part: usize, delta: &str, frames: &mut Vec<Bytes>) {
        if let Kind::Message(parts) = &mut self.items[item].kind {
            if let Some(text) = parts.get_mut(part) {
                text.push_str(delta);
            }
        }
        let item_id = self.items[item].id.clone();
        frames.push(self.event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": item, "content_index": part,
                "delta": delta, "logprobs": []}),
        ));
    }

    fn block_delta(&mut self, data: &Value, frames: &mut Vec<Bytes>) {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some((item, part)) = self.block(index) else {
            return;
        };
        let delta = data.get("delta").unwrap_or(&Value::Null);
        let piece = |key: &str| {
            delta
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let item_id = self.items[item].id.clone();
        match (
            delta.get("type").and_then(Value::as_str),
            &mut self.items[item].kind,
        ) {
            (Some("text_delta"), Kind::Message(_)) => {
                let text = piece("text");
                if !text.is_empty() {
                    self.text_delta(item, part, &text, frames);
                }
            }
            (Some("thinking_delta"), Kind::Reasoning(block)) => {
                let text = piece("thinking");
                let whole = format!(
                    "{}{text}",
                    block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                );
                block["thinking"] = Value::String(whole);
                if self.summary && !text.is_empty() {
                    frames.push(self.event(
                        "response.reasoning_summary_text.delta",
                        json!({"item_id": item_id, "output_index": item, "summary_index": 0, "delta": text}),
                    ));
                }
            }
            (Some("signature_delta"), Kind::Reasoning(block)) => {
                let whole = format!(
                    "{}{}",
                    block
                        .get("signature")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    piece("signature")
                );
                block["signature"] = Value::String(whole);
            }
            (
                Some("input_json_delta"),
                Kind::Call {
                    arguments, name, ..
                },
            ) => {
                let fragment = piece("partial_json");
                arguments.push_str(&fragment);
                let custom = matches!(origin_in(&self.names, name), Origin::Custom { .. });
                if !custom && !fragment.is_empty() {
                    frames.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": item, "delta": fragment}),
                    ));
                }
            }
            (Some("input_json_delta"), Kind::WebSearch { input, .. }) => {
                input.push_str(&piece("partial_json"));
            }
            _ => {}
        }
    }

    fn block_stop(&mut self, data: &Value, frames: &mut Vec<Bytes>) {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some((item, part)) = self.block(index) else {
            return;
        };
        if !self.items[item].open {
            return;
        }
        let item_id = self.items[item].id.clone();
        match self.items[item].kind.clone() {
            Kind::Message(parts) => {
                let text = parts.get(part).cloned().unwrap_or_default();
                frames.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": item, "content_index": part,
                        "text": text, "logprobs": []}),
                ));
                frames.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": item, "content_index": part,
                        "part": output_text_part(&text)}),
                ));
            }
            Kind::Reasoning(block) => {
                if self.summary {
                    let text = block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    frames.push(self.event(
                        "response.reasoning_summary_text.done",
                        json!({"item_id": item_id, "output_index": item, "summary_index": 0, "text": text}),
                    ));
                    frames.push(self.event(
                        "response.reasoning_summary_part.done",
                        json!({"item_id": item_id, "output_index": item, "summary_index": 0,
                            "part": {"type": "summary_text", "text": text}}),
                    ));
                }
                self.done_item(item, frames);
            }
            Kind::Call {
                name, arguments, ..
            } => {
                let arguments = if arguments.is_empty() {
                    "{}".to_owned()
                } else {
                    arguments
                };
                match origin_in(&self.names, &name) {
                    Origin::Function { name, .. } => frames.push(self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": item_id, "output_index": item, "name": name, "arguments": arguments}),
                    )),
                    Origin::Custom { .. } => frames.push(self.event(
                        "response.custom_tool_call_input.done",
                        json!({"item_id": item_id, "output_index": item, "input": custom_input(&arguments)}),
                    )),
                }
                self.done_item(item, frames);
            }
            Kind::WebSearch { .. } => {}
        }
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        self.start(None, &mut frames);
        for index in 0..self.items.len() {
            self.done_item(index, &mut frames);
        }
        let (status, incomplete_details) = status_for(self.stop_reason.as_deref());
        let usage = self.tracker.usage_or_estimate();
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
        let data = parse_event(event)?;
        self.tracker.observe_value(event.event.as_deref(), &data);
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        let mut frames = Vec::new();
        match kind {
            "message_start" => {
                let upstream_id = data.pointer("/message/id").and_then(Value::as_str);
                self.start(upstream_id, &mut frames);
            }
            "content_block_start" => {
                self.start(None, &mut frames);
                self.block_start(&data, &mut frames)?;
            }
            "content_block_delta" => self.block_delta(&data, &mut frames),
            "content_block_stop" => self.block_stop(&data, &mut frames),
            "message_delta" => {
                if let Some(stop_reason) =
                    data.pointer("/delta/stop_reason").and_then(Value::as_str)
                {
                    self.stop_reason = Some(stop_reason.to_owned());
                }
                let tokens = reasoning_tokens(data.get("usage"));
                if tokens > 0 {
                    self.reasoning_tokens = tokens;
                }
            }
            "message_stop" => frames.extend(self.end()),
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                self.done = true;
                frames.push(crate::frames::error_frame(
                    Format::Responses,
                    crate::conversion::upstream_failure(error),
                    &upstream_error_message(error),
                ));
            }
            _ => {}
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
        crate::frames::error_frame(Format::Responses, StreamFailure::Upstream, message)
    }
}
