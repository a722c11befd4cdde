//! Bedrock's Converse and ConverseStream (see the module docs of [`super`]).
//!
//! Refused as Bedrock refuses (`ValidationException`): no `messages`, a first message that
//! is not the user's, roles that do not alternate, an empty content or a blank text block,
//! `toolUse` / `toolResult` blocks without `toolConfig`, `maxTokens` below 1, and (the
//! fake's own strictness) any top-level field Converse does not define.
//!
//! Input tokens `T` = Σ over messages of (4 + words of their `text` blocks), where every
//! `toolResult` block counts as its own message (4 + words of its text or JSON), plus
//! (4 + words) for `system`. Output tokens as the other formats.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{event_stream, frames, injected, invalid};
use crate::content::{self, Finish, PlanInput, Reply, ToolSpec};
use crate::directives::Directives;
use crate::http::{self, Ctx};
use crate::stream::{self, Frame};
use crate::Shared;

const FIELDS: [&str; 10] = [
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];

/// The text a block counts: its `text`, a tool result's text or JSON.
fn block_texts(block: &Value) -> Vec<String> {
    if let Some(t) = block.get("text").and_then(Value::as_str) {
        return vec![t.to_string()];
    }
    let mut out = Vec::new();
    for c in block
        .pointer("/toolResult/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = c.get("text").and_then(Value::as_str) {
            out.push(t.to_string());
        } else if let Some(j) = c.get("json") {
            out.push(j.to_string());
        }
    }
    out
}

fn words(texts: &[String]) -> u64 {
    texts.iter().map(|t| content::count_words(t)).sum()
}

fn validate(req: &Value) -> Result<&Vec<Value>, Response> {
    let Some(map) = req.as_object() else {
        return Err(invalid(
            "Malformed input request, please reformat your input and try again.",
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(&format!(
            "Malformed input request: extraneous key [{unknown}] is not permitted, please reformat your input and try again."
        )));
    }
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err(invalid("1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null"));
    };
    let mut uses_tools = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if i == 0 && role != "user" {
            return Err(invalid("A conversation must start with a user message. Try again with a conversation that starts with a user message."));
        }
        if role != want {
            return Err(invalid("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again."));
        }
        let Some(blocks) = m
            .get("content")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        else {
            return Err(invalid(&format!("The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again.")));
        };
        for (j, b) in blocks.iter().enumerate() {
            if b.get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| t.trim().is_empty())
            {
                return Err(invalid(&format!("The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text field, and try again.")));
            }
            uses_tools |= b.get("toolUse").is_some() || b.get("toolResult").is_some();
        }
    }
    if uses_tools && req.get("toolConfig").is_none() {
        return Err(invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks."));
    }
    if req
        .pointer("/inferenceConfig/maxTokens")
        .is_some_and(|n| n.as_u64().is_none_or(|n| n < 1))
    {
        return Err(invalid("1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1"));
    }
    Ok(messages)
}

/// Converse (`stream` false) or ConverseStream.
pub(super) async fn run(
    s: &Arc<Shared>,
    ctx: &Ctx,
    _model: &str,
    body: &Bytes,
    streamed: bool,
) -> Result<Response, Response> {
    let req: Value = serde_json::from_slice(body).map_err(|_| {
        super::error(
            400,
            "SerializationException",
            "Unexpected character: the body is not JSON.",
        )
    })?;
    let messages = validate(&req)?;
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let last_blocks: Vec<Value> = last_user
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last_texts: Vec<String> = last_blocks.iter().flat_map(block_texts).collect();
    let dirs = Directives::parse(last_texts.iter().map(String::as_str)).map_err(|m| invalid(&m))?;
    let mut input: u64 = 0;
    for m in messages {
        let blocks = m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let (results, others): (Vec<&Value>, Vec<&Value>) =
            blocks.partition(|b| b.get("toolResult").is_some());
        for r in results {
            input += 4 + words(&block_texts(r));
        }
        if !others.is_empty() {
            input += 4 + words(
                &others
                    .iter()
                    .flat_map(|b| block_texts(b))
                    .collect::<Vec<_>>(),
            );
        }
    }
    if let Some(system) = req.get("system").and_then(Value::as_array) {
        input += 4 + words(&system.iter().flat_map(block_texts).collect::<Vec<_>>());
    }
    if dirs.status.is_some() || dirs.reset || dirs.first_byte.is_some() {
        if let Some(r) = http::prelude(s, ctx, &dirs, crate::error::Flavor::OpenAi).await {
            if let Some(code) = dirs.status {
                return Err(injected(code, dirs.retry_after));
            }
            return Ok(r);
        }
    }
    let tools = req.pointer("/toolConfig/tools").and_then(Value::as_array);
    let tool = tools.and_then(|tools| {
        let specs = tools.iter().filter_map(|t| t.get("toolSpec"));
        let pick = match &dirs.tool_name {
            Some(name) => specs
                .clone()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name)),
            None => specs.clone().next(),
        }?;
        Some(ToolSpec {
            name: pick.get("name").and_then(Value::as_str)?,
            schema: pick.pointer("/inputSchema/json"),
        })
    });
    let stops: Vec<&str> = req
        .pointer("/inferenceConfig/stopSequences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            want_tool: dirs.tool,
            max_tokens: dirs.max_tokens(
                req.pointer("/inferenceConfig/maxTokens")
                    .and_then(Value::as_u64),
            ),
            stop: stops,
            tool,
            last_is_tool_result: last_blocks.iter().any(|b| b.get("toolResult").is_some()),
        },
        || s.id("tooluse_", 22),
    );
    let usage = dirs
        .usage(input, plan.output_tokens(), dirs.cache_write)
        .map(|u| {
            json!({"inputTokens": u.uncached(), "outputTokens": u.output,
            "totalTokens": u.input.saturating_add(u.output),
            "cacheReadInputTokens": u.cache_read, "cacheWriteInputTokens": u.cache_write})
        });
    let stop_reason = match plan.finish {
        Finish::Length => "max_tokens",
        Finish::StopSequence(_) => "stop_sequence",
        Finish::ToolCall => "tool_use",
        _ => "end_turn",
    };
    if !streamed {
        if dirs.malformed {
            return Ok(http::malformed());
        }
        let block = match &plan.reply {
            Reply::Text(_) => json!({"text": plan.text()}),
            Reply::Tool(call) => json!({"toolUse": {"toolUseId": call.id, "name": call.name,
                "input": serde_json::from_str::<Value>(&call.arguments).unwrap_or(json!({}))}}),
        };
        let mut answer = json!({
            "output": {"message": {"role": "assistant", "content": [block]}},
            "stopReason": stop_reason,
            "metrics": {"latencyMs": 41},
        });
        if let Some(u) = usage {
            answer["usage"] = u;
        }
        return Ok(axum::Json(answer).into_response());
    }
    let mut out = vec![Frame::aside(frames::event(
        "messageStart",
        json!({"role": "assistant"}),
        0,
    ))];
    match &plan.reply {
        Reply::Text(words) => {
            for (i, w) in words.iter().enumerate() {
                out.push(Frame::content(frames::event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": w}}),
                    i + 1,
                )));
            }
            out.push(Frame::tail(frames::event(
                "contentBlockStop",
                json!({"contentBlockIndex": 0}),
                3,
            )));
        }
        Reply::Tool(call) => {
            out.push(Frame::aside(frames::event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}),
                1,
            )));
            for (i, f) in call.fragments.iter().enumerate() {
                out.push(Frame::content(frames::event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": f}}}),
                    i + 2,
                )));
            }
            out.push(Frame::tail(frames::event(
                "contentBlockStop",
                json!({"contentBlockIndex": 0}),
                3,
            )));
        }
    }
    out.push(Frame::terminal(frames::event(
        "messageStop",
        json!({"stopReason": stop_reason}),
        4,
    )));
    let mut metadata = json!({"metrics": {"latencyMs": 41}});
    if let Some(u) = usage {
        metadata["usage"] = u;
    }
    out.push(Frame::terminal(frames::event("metadata", metadata, 5)));
    if dirs.bad_crc {
        if let Some(second) = out.get_mut(1) {
            second.bytes = frames::corrupt(&second.bytes);
        }
    }
    let fault = http::fault(&dirs, || {
        frames::exception(
            "internalServerException",
            "The server encountered an error processing your request.",
        )
    });
    let delay = dirs.chunk_delay(s.opts.chunk_delay);
    Ok(event_stream(stream::body(s.clone(), out, delay, fault)))
}
