//! `POST /v1/chat/completions`: plain and streamed, text and tool calls.

mod chunks;

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::content::{self, Finish, PlanInput, Reply, ToolSpec, Turn, Usage};
use crate::directives::Directives;
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::{fast, misbehave, tier, Shared};

use chunks::Chunker;
pub(crate) use chunks::{render_chunks, StreamOpts};

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    if let Some(canned) = s.canned.as_ref().filter(|c| c.fits(body)) {
        return Ok(fast::chat(s, canned, body).await);
    }
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = http::require_model(Flavor::OpenAi, &req)?;
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err(error::openai(
            axum::http::StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'.",
            Some("messages"),
            Some("missing_required_parameter"),
        ));
    };
    let tier = tier::openai(req.get("service_tier"))?;
    let dirs = http::directives(Flavor::OpenAi, last_user_texts(messages))?;
    let streamed = http::flag(req.get("stream"));
    misbehave::check_streamed(&dirs, streamed, Flavor::OpenAi)?;
    let last_is_tool_result = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    let tool_choice_none = req.get("tool_choice").and_then(Value::as_str) == Some("none");
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            want_tool: dirs.tool && !tool_choice_none,
            max_tokens: dirs.max_tokens(
                req.get("max_completion_tokens")
                    .and_then(Value::as_u64)
                    .or_else(|| req.get("max_tokens").and_then(Value::as_u64)),
            ),
            stop: stop_list(req.get("stop")),
            tool: first_tool(req.get("tools"), dirs.tool_name.as_deref()),
            last_is_tool_result,
        },
        || s.id("call_", 24),
    );
    let usage = dirs.usage(input_tokens(messages), plan.output_tokens(), 0);
    let turn = Turn {
        id: s.id("chatcmpl-", 29),
        created: content::now(),
        model: model.to_string(),
        plan,
        usage,
        tier,
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(misbehave::finish(&dirs, r));
    }
    let opts = req.get("stream_options");
    let stream_opts = StreamOpts {
        include_usage: http::flag(opts.and_then(|o| o.get("include_usage"))),
        obfuscate: opts
            .and_then(|o| o.get("include_obfuscation"))
            .and_then(Value::as_bool)
            .unwrap_or(true),
        malformed: dirs.malformed,
        comments: dirs.comments,
    };
    let resp = answer(s, &dirs, turn, streamed.then_some(stream_opts));
    Ok(misbehave::finish(&dirs, resp))
}

/// The answer: JSON, or a stream when `stream` is set.
fn answer(
    s: &Arc<Shared>,
    dirs: &Directives,
    mut turn: Turn,
    stream: Option<StreamOpts>,
) -> Response {
    let Some(o) = stream else {
        if dirs.malformed {
            return http::malformed();
        }
        misbehave::mark(dirs, &mut turn.plan);
        return misbehave::json(dirs, s.opts.chunk_delay, render_completion(&turn));
    };
    let frames = render_chunks(&turn, &o);
    if dirs.endless {
        let mut chunker = Chunker::new(&turn, &o);
        let next = Box::new(move |i| chunker.text(&content::word_chunk(i)));
        return http::sse_endless(s, dirs, frames, next);
    }
    http::sse_stream(s, dirs, frames, error::chat_stream_event)
}

/// The texts of the last user message that has text.
fn last_user_texts(messages: &[Value]) -> Vec<&str> {
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

/// Σ (4 + words of the message's text).
fn input_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|m| 4 + m.get("content").map(content::content_words).unwrap_or(0))
        .sum()
}

fn stop_list(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn first_tool<'a>(tools: Option<&'a Value>, wanted: Option<&str>) -> Option<ToolSpec<'a>> {
    let specs = tools?.as_array()?.iter().filter_map(|t| {
        let f = t.get("function")?;
        Some(ToolSpec {
            name: f.get("name")?.as_str()?,
            schema: f.get("parameters"),
        })
    });
    crate::content::pick_tool(specs, wanted)
}

pub(super) fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::StopSequence(_) => "stop",
        Finish::Length => "length",
        Finish::ToolCall => "tool_calls",
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
    service_tier: &'static str,
    system_fingerprint: Option<&'static str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize, Clone, Copy)]
pub(super) struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize, Clone, Copy)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl ChatUsage {
    pub(super) fn new(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.total(),
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cache_read,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

/// The non-streamed completion, pretty-printed as OpenAI does.
pub(crate) fn render_completion(turn: &Turn) -> Bytes {
    let text = turn.plan.text();
    let (content, tool_calls) = match &turn.plan.reply {
        Reply::Text(_) => (Some(text.as_str()), None),
        Reply::Tool(t) => (
            None,
            Some([ToolCallOut {
                id: &t.id,
                kind: "function",
                function: FunctionOut {
                    name: &t.name,
                    arguments: &t.arguments,
                },
            }]),
        ),
    };
    let body = Completion {
        id: &turn.id,
        object: "chat.completion",
        created: turn.created,
        model: &turn.model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content,
                tool_calls,
                refusal: None,
                annotations: [],
            },
            logprobs: None,
            finish_reason: finish_reason(&turn.plan.finish),
        }],
        usage: turn.usage.as_ref().map(ChatUsage::new),
        service_tier: turn.tier,
        system_fingerprint: None,
    };
    http::pretty(&body)
}
