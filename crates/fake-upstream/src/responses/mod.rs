//! `POST /v1/responses`: plain and streamed (typed events with sequence numbers),
//! hosted tool calls, background requests.

mod events;
mod hosted;
mod object;

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::content::{self, PlanInput, Reply, ToolSpec, Turn};
use crate::directives::Directives;
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::stream::Part;
use crate::{fast, misbehave, tier, Shared};

pub(crate) use events::{render_events, EventOpts};
pub(crate) use object::{render_response, Answer};

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    if let Some(canned) = s.canned.as_ref().filter(|c| c.fits(body)) {
        return Ok(fast::responses(s, canned, body).await);
    }
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = http::require_model(Flavor::OpenAi, &req)?;
    check_output_cap(req.get("max_output_tokens"))?;
    let tier = tier::openai(req.get("service_tier"))?;
    let input = req.get("input").unwrap_or(&Value::Null);
    let dirs = http::directives(Flavor::OpenAi, last_user_texts(input))?;
    let streamed = http::flag(req.get("stream"));
    misbehave::check_streamed(&dirs, streamed, Flavor::OpenAi)?;
    let last_is_tool_result = input
        .as_array()
        .and_then(|a| a.last())
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        == Some("function_call_output");
    let tool_choice_none = req.get("tool_choice").and_then(Value::as_str) == Some("none");
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            want_tool: dirs.tool && !tool_choice_none,
            max_tokens: dirs.max_tokens(req.get("max_output_tokens").and_then(Value::as_u64)),
            stop: Vec::new(),
            tool: first_tool(req.get("tools"), dirs.tool_name.as_deref()),
            last_is_tool_result,
        },
        || s.id("call_", 24),
    );
    let usage = dirs.usage(
        input_tokens(req.get("instructions"), input),
        plan.output_tokens(),
        0,
    );
    let item_prefix = match plan.reply {
        Reply::Text(_) => "msg_",
        Reply::Tool(_) => "fc_",
    };
    let answer = Answer {
        turn: Turn {
            id: s.id("resp_", 48),
            created: content::now(),
            model: model.to_string(),
            plan,
            usage,
            tier,
        },
        item_id: s.id(item_prefix, 48),
        echo: Echo::from_request(&req),
        hosted: hosted::calls(req.get("tools"), |prefix| s.id(prefix, 48)),
        background: http::flag(req.get("background")),
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(misbehave::finish(&dirs, r));
    }
    let opts = streamed.then(|| EventOpts {
        obfuscate: req
            .get("stream_options")
            .and_then(|o| o.get("include_obfuscation"))
            .and_then(Value::as_bool)
            .unwrap_or(true),
        malformed: dirs.malformed,
        comments: dirs.comments,
    });
    Ok(misbehave::finish(
        &dirs,
        answer_with(s, &dirs, answer, opts),
    ))
}

/// The smallest `max_output_tokens` the Responses API takes.
pub(crate) const MIN_OUTPUT_TOKENS: u64 = 16;

/// Refuses a `max_output_tokens` below the API's minimum, as OpenAI does (its 400 is
/// quoted in other gateways' issues: "Invalid 'max_output_tokens': integer below minimum
/// value. Expected a value >= 16, but got 10 instead.", `integer_below_min_value`).
fn check_output_cap(cap: Option<&Value>) -> Result<(), Response> {
    match cap.and_then(Value::as_i64) {
        Some(n) if n < MIN_OUTPUT_TOKENS as i64 => Err(error::openai(
            axum::http::StatusCode::BAD_REQUEST,
            &format!(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= {MIN_OUTPUT_TOKENS}, but got {n} instead."
            ),
            Some("max_output_tokens"),
            Some("integer_below_min_value"),
        )),
        _ => Ok(()),
    }
}

/// The answer: JSON, or the event stream when `opts` is set.
fn answer_with(
    s: &Arc<Shared>,
    dirs: &Directives,
    mut a: Answer,
    opts: Option<EventOpts>,
) -> Response {
    let Some(o) = opts else {
        if dirs.malformed {
            return http::malformed();
        }
        if !a.background {
            misbehave::mark(dirs, &mut a.turn.plan);
        }
        return misbehave::json(dirs, s.opts.chunk_delay, render_response(&a));
    };
    let frames = render_events(&a, &o);
    // The events before the first content event; the error event of `error_after`
    // takes the sequence number after the content events sent before it.
    let before = frames
        .iter()
        .position(|f| f.part == Part::Content)
        .unwrap_or(frames.len()) as u64;
    if dirs.endless {
        let next = events::endless_deltas(&a, &o, before);
        return http::sse_endless(s, dirs, frames, next);
    }
    let count = match &a.turn.plan.reply {
        Reply::Text(c) => c.len(),
        Reply::Tool(t) => t.fragments.len(),
    };
    let n = dirs.error_after.unwrap_or(0).min(count) as u64;
    http::sse_stream(s, dirs, frames, || {
        error::responses_stream_event(before + n)
    })
}

/// `input` as a string, or the text of the last user item that has text.
fn last_user_texts(input: &Value) -> Vec<&str> {
    match input {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .rev()
            .filter(|i| i.get("role").and_then(Value::as_str) == Some("user"))
            .map(|i| {
                i.get("content")
                    .map(content::content_texts)
                    .unwrap_or_default()
            })
            .find(|t| !t.is_empty())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Σ (4 + words) over the instructions and the input items.
fn input_tokens(instructions: Option<&Value>, input: &Value) -> u64 {
    let instructions = match instructions {
        Some(Value::String(s)) => 4 + content::count_words(s),
        _ => 0,
    };
    let items = match input {
        Value::String(s) => 4 + content::count_words(s),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let text = i.get("content").map(content::content_words).unwrap_or(0);
                let output = i.get("output").map(content::content_words).unwrap_or(0);
                4 + text + output
            })
            .sum(),
        _ => 0,
    };
    instructions + items
}

fn first_tool<'a>(tools: Option<&'a Value>, wanted: Option<&str>) -> Option<ToolSpec<'a>> {
    let specs = tools?.as_array()?.iter().filter_map(|t| {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return None;
        }
        Some(ToolSpec {
            name: t.get("name")?.as_str()?,
            schema: t.get("parameters"),
        })
    });
    crate::content::pick_tool(specs, wanted)
}

/// Request fields the response object echoes.
pub(crate) struct Echo {
    instructions: Value,
    max_output_tokens: Value,
    previous_response_id: Value,
    tool_choice: Value,
    tools: Value,
    metadata: Value,
    temperature: f64,
    top_p: f64,
    store: bool,
    parallel_tool_calls: bool,
}

impl Default for Echo {
    fn default() -> Self {
        Self {
            instructions: Value::Null,
            max_output_tokens: Value::Null,
            previous_response_id: Value::Null,
            tool_choice: Value::from("auto"),
            tools: Value::Array(Vec::new()),
            metadata: Value::Object(serde_json::Map::new()),
            temperature: 1.0,
            top_p: 1.0,
            store: true,
            parallel_tool_calls: true,
        }
    }
}

impl Echo {
    fn from_request(req: &Value) -> Self {
        let d = Self::default();
        let take = |k: &str, default: Value| req.get(k).cloned().unwrap_or(default);
        Self {
            instructions: take("instructions", d.instructions),
            max_output_tokens: take("max_output_tokens", d.max_output_tokens),
            previous_response_id: take("previous_response_id", d.previous_response_id),
            tool_choice: take("tool_choice", d.tool_choice),
            tools: take("tools", d.tools),
            metadata: take("metadata", d.metadata),
            temperature: req
                .get("temperature")
                .and_then(Value::as_f64)
                .unwrap_or(d.temperature),
            top_p: req.get("top_p").and_then(Value::as_f64).unwrap_or(d.top_p),
            store: req.get("store").and_then(Value::as_bool).unwrap_or(d.store),
            parallel_tool_calls: req
                .get("parallel_tool_calls")
                .and_then(Value::as_bool)
                .unwrap_or(d.parallel_tool_calls),
        }
    }
}
