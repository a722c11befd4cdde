//! `POST /v1/messages` (Anthropic): plain and streamed, text and `tool_use`, the web
//! search server tool.

mod checks;
mod render;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::content::{self, PlanInput, ToolSpec, Turn};
use crate::directives::Directives;
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::{fast, misbehave, tier, Shared};

pub(crate) use render::{render_events, render_message, Answer};

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

/// The Messages API's answer to a request (Bedrock's and Vertex's Claude reuse it).
pub(crate) async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_anthropic(s, ctx)?;
    if let Some(canned) = s.canned.as_ref().filter(|c| c.fits(body)) {
        return Ok(fast::messages(s, canned, body).await);
    }
    let req = http::parse_json(Flavor::Anthropic, body)?;
    let model = http::require_model(Flavor::Anthropic, &req)?;
    checks::check(ctx, model, &req)?;
    let Some(max_tokens) = req.get("max_tokens").and_then(Value::as_u64) else {
        return Err(error::anthropic(
            StatusCode::BAD_REQUEST,
            "max_tokens: Field required",
        ));
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err(error::anthropic(
            StatusCode::BAD_REQUEST,
            "messages: Field required",
        ));
    };
    let tier = tier::anthropic(req.get("service_tier"))?;
    let dirs = http::directives(Flavor::Anthropic, last_user_texts(messages))?;
    let streamed = http::flag(req.get("stream"));
    misbehave::check_streamed(&dirs, streamed, Flavor::Anthropic)?;
    let tool_choice_none = req.pointer("/tool_choice/type").and_then(Value::as_str) == Some("none");
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            want_tool: dirs.tool && !tool_choice_none,
            max_tokens: dirs.max_tokens(Some(max_tokens)),
            stop: req
                .get("stop_sequences")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
            tool: first_tool(req.get("tools"), dirs.tool_name.as_deref()),
            last_is_tool_result: last_is_tool_result(messages),
        },
        || s.id("toolu_01", 22),
    );
    let usage = dirs.usage(
        input_tokens(req.get("system"), messages),
        plan.output_tokens(),
        dirs.cache_write,
    );
    let answer = Answer {
        turn: Turn {
            id: s.id("msg_01", 22),
            created: content::now(),
            model: model.to_string(),
            plan,
            usage,
            tier,
        },
        search: offers_web_search(req.get("tools")).then(|| s.id("srvtoolu_01", 22)),
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::Anthropic).await {
        return Ok(misbehave::finish(&dirs, r));
    }
    Ok(misbehave::finish(
        &dirs,
        answer_with(s, &dirs, answer, streamed),
    ))
}

/// The answer: JSON, or the event stream.
fn answer_with(s: &Arc<Shared>, dirs: &Directives, mut a: Answer, streamed: bool) -> Response {
    if !streamed {
        if dirs.malformed {
            return http::malformed();
        }
        misbehave::mark(dirs, &mut a.turn.plan);
        return misbehave::json(dirs, s.opts.chunk_delay, render_message(&a));
    }
    let frames = render_events(&a, dirs.malformed, dirs.comments);
    if dirs.endless {
        let next = render::endless_deltas(&a, dirs.comments);
        return http::sse_endless(s, dirs, frames, next);
    }
    http::sse_stream(s, dirs, frames, error::anthropic_stream_event)
}

/// True when `tools` holds the web search server tool (`web_search_20250305`…).
fn offers_web_search(tools: Option<&Value>) -> bool {
    tools.and_then(Value::as_array).is_some_and(|t| {
        t.iter().any(|t| {
            t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|ty| ty.starts_with("web_search_"))
        })
    })
}

pub(crate) fn last_user_texts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| {
            m.get("content")
                .map(content::content_texts)
                .unwrap_or_default()
        })
        .find(|t| !t.is_empty())
        .unwrap_or_default()
}

fn is_tool_result(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("tool_result")
}

fn last_is_tool_result(messages: &[Value]) -> bool {
    messages.last().is_some_and(|m| {
        m.get("role").and_then(Value::as_str) == Some("user")
            && m.get("content")
                .and_then(Value::as_array)
                .is_some_and(|blocks| blocks.iter().any(is_tool_result))
    })
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}` by the fake's input formula,
/// after the same checks as `/v1/messages` (auth, betas, `model`, `messages`).
pub(crate) async fn count_tokens(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run_count(&s, &ctx, &body) {
        Ok(r) | Err(r) => r,
    }
}

fn run_count(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_anthropic(s, ctx)?;
    let req = http::parse_json(Flavor::Anthropic, body)?;
    let model = http::require_model(Flavor::Anthropic, &req)?;
    checks::check(ctx, model, &req)?;
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err(error::anthropic(
            StatusCode::BAD_REQUEST,
            "messages: Field required",
        ));
    };
    let tokens = input_tokens(req.get("system"), messages);
    Ok(http::json_bytes(Bytes::from(format!(
        "{{\"input_tokens\":{tokens}}}"
    ))))
}

/// Σ (4 + words): the system prompt is one message, each `tool_result` block is one
/// message, the other blocks of a message are one message together.
fn input_tokens(system: Option<&Value>, messages: &[Value]) -> u64 {
    let system = match system {
        Some(v @ (Value::String(_) | Value::Array(_))) => 4 + content::content_words(v),
        _ => 0,
    };
    let messages: u64 = messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::Array(blocks)) => {
                let (results, others): (Vec<&Value>, Vec<&Value>) =
                    blocks.iter().partition(|b| is_tool_result(b));
                let results: u64 = results
                    .iter()
                    .map(|b| 4 + b.get("content").map(content::content_words).unwrap_or(0))
                    .sum();
                let others = if others.is_empty() {
                    0
                } else {
                    4 + others
                        .iter()
                        .map(|b| match b.get("text") {
                            Some(Value::String(t)) => content::count_words(t),
                            _ => 0,
                        })
                        .sum::<u64>()
                };
                results + others
            }
            Some(v) => 4 + content::content_words(v),
            None => 4,
        })
        .sum();
    system + messages
}

fn first_tool<'a>(tools: Option<&'a Value>, wanted: Option<&str>) -> Option<ToolSpec<'a>> {
    let specs = tools?.as_array()?.iter().filter_map(|t| {
        // Server tools (web search, code execution…) carry a versioned `type`.
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(_) => return None,
        }
        Some(ToolSpec {
            name: t.get("name")?.as_str()?,
            schema: t.get("input_schema"),
        })
    });
    crate::content::pick_tool(specs, wanted)
}
