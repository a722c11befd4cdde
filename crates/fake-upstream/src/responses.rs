//! `POST /v1/responses`: plain and streamed (typed events with sequence numbers).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::content::{self, Finish, PlanInput, Reply, ToolSpec, Turn, Usage};
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::stream::Frame;
use crate::{fast, Shared};

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    if let Some(canned) = &s.canned {
        return Ok(fast::responses(s, canned, body).await);
    }
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = http::require_model(Flavor::OpenAi, &req)?;
    let input = req.get("input").unwrap_or(&Value::Null);
    let dirs = http::directives(Flavor::OpenAi, last_user_texts(input))?;
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
            max_tokens: req.get("max_output_tokens").and_then(Value::as_u64),
            stop: Vec::new(),
            tool: first_tool(req.get("tools")),
            last_is_tool_result,
        },
        || s.id("call_", 24),
    );
    let usage = Usage::new(
        input_tokens(req.get("instructions"), input),
        plan.output_tokens(),
        dirs.cached,
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
        },
        item_id: s.id(item_prefix, 48),
        echo: Echo::from_request(&req),
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if !http::flag(req.get("stream")) {
        if dirs.malformed {
            return Ok(http::malformed());
        }
        return Ok(http::json_bytes(render_response(&answer)));
    }
    let obfuscate = req
        .get("stream_options")
        .and_then(|o| o.get("include_obfuscation"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let frames = render_events(&answer, obfuscate, dirs.malformed, dirs.comments);
    // Sequence number the error event takes: the events before the content, plus the
    // content events sent before it.
    let (before, count) = match &answer.turn.plan.reply {
        Reply::Text(c) => (4, c.len()),
        Reply::Tool(t) => (3, t.fragments.len()),
    };
    let n = dirs.error_after.unwrap_or(0).min(count) as u64;
    Ok(http::sse_stream(s, &dirs, frames, || {
        error::responses_stream_event(before + n)
    }))
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

fn first_tool(tools: Option<&Value>) -> Option<ToolSpec<'_>> {
    tools?.as_array()?.iter().find_map(|t| {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return None;
        }
        Some(ToolSpec {
            name: t.get("name")?.as_str()?,
            schema: t.get("parameters"),
        })
    })
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

/// One Responses answer.
pub(crate) struct Answer {
    pub(crate) turn: Turn,
    pub(crate) item_id: String,
    pub(crate) echo: Echo,
}

#[derive(Serialize)]
struct ResponseObj<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    background: bool,
    completed_at: Option<u64>,
    error: Option<()>,
    incomplete_details: Option<Incomplete>,
    instructions: &'a Value,
    max_output_tokens: &'a Value,
    max_tool_calls: Option<()>,
    model: &'a str,
    output: Vec<Item<'a>>,
    parallel_tool_calls: bool,
    previous_response_id: &'a Value,
    prompt_cache_key: Option<()>,
    reasoning: Reasoning,
    safety_identifier: Option<()>,
    service_tier: &'static str,
    store: bool,
    temperature: f64,
    text: TextConfig,
    tool_choice: &'a Value,
    tools: &'a Value,
    top_logprobs: u32,
    top_p: f64,
    truncation: &'static str,
    usage: Option<RespUsage>,
    user: Option<()>,
    metadata: &'a Value,
}

#[derive(Serialize)]
struct Incomplete {
    reason: &'static str,
}

#[derive(Serialize)]
struct Reasoning {
    effort: Option<()>,
    summary: Option<()>,
}

#[derive(Serialize)]
struct TextConfig {
    format: TextFormat,
    verbosity: &'static str,
}

#[derive(Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Message {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        status: &'static str,
        content: Vec<OutputText<'a>>,
        role: &'static str,
    },
    FunctionCall {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        status: &'static str,
        arguments: &'a str,
        call_id: &'a str,
        name: &'a str,
    },
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    annotations: [(); 0],
    logprobs: [(); 0],
    text: &'a str,
}

#[derive(Serialize)]
struct RespUsage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutputDetails {
    reasoning_tokens: u64,
}

fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        annotations: [],
        logprobs: [],
        text,
    }
}

impl Answer {
    fn incomplete(&self) -> bool {
        self.turn.plan.finish == Finish::Length
    }

    /// The item, finished (`done`) or just begun.
    fn item<'a>(&'a self, text: &'a str, done: bool) -> Item<'a> {
        let status = match (done, self.incomplete()) {
            (false, _) => "in_progress",
            (true, true) => "incomplete",
            (true, false) => "completed",
        };
        match &self.turn.plan.reply {
            Reply::Text(_) => Item::Message {
                id: &self.item_id,
                kind: "message",
                status,
                content: if done {
                    vec![output_text(text)]
                } else {
                    Vec::new()
                },
                role: "assistant",
            },
            Reply::Tool(t) => Item::FunctionCall {
                id: &self.item_id,
                kind: "function_call",
                status,
                arguments: if done { &t.arguments } else { "" },
                call_id: &t.id,
                name: &t.name,
            },
        }
    }

    /// The response object, finished (`done`) or in progress.
    fn object<'a>(&'a self, text: &'a str, done: bool) -> ResponseObj<'a> {
        let u = &self.turn.usage;
        let e = &self.echo;
        let incomplete = done && self.incomplete();
        ResponseObj {
            id: &self.turn.id,
            object: "response",
            created_at: self.turn.created,
            status: match (done, incomplete) {
                (false, _) => "in_progress",
                (true, true) => "incomplete",
                (true, false) => "completed",
            },
            background: false,
            completed_at: (done && !incomplete).then_some(self.turn.created),
            error: None,
            incomplete_details: incomplete.then_some(Incomplete {
                reason: "max_output_tokens",
            }),
            instructions: &e.instructions,
            max_output_tokens: &e.max_output_tokens,
            max_tool_calls: None,
            model: &self.turn.model,
            output: if done {
                vec![self.item(text, true)]
            } else {
                Vec::new()
            },
            parallel_tool_calls: e.parallel_tool_calls,
            previous_response_id: &e.previous_response_id,
            prompt_cache_key: None,
            reasoning: Reasoning {
                effort: None,
                summary: None,
            },
            safety_identifier: None,
            service_tier: "default",
            store: e.store,
            temperature: e.temperature,
            text: TextConfig {
                format: TextFormat { kind: "text" },
                verbosity: "medium",
            },
            tool_choice: &e.tool_choice,
            tools: &e.tools,
            top_logprobs: 0,
            top_p: e.top_p,
            truncation: "disabled",
            usage: done.then_some(RespUsage {
                input_tokens: u.input,
                input_tokens_details: InputDetails {
                    cached_tokens: u.cache_read,
                },
                output_tokens: u.output,
                output_tokens_details: OutputDetails {
                    reasoning_tokens: 0,
                },
                total_tokens: u.input + u.output,
            }),
            user: None,
            metadata: &e.metadata,
        }
    }
}

/// The non-streamed response object.
pub(crate) fn render_response(a: &Answer) -> Bytes {
    let text = a.turn.plan.text();
    http::pretty(&a.object(&text, true))
}

#[derive(Serialize)]
struct Event<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct ResponseBody<'a> {
    response: &'a ResponseObj<'a>,
}

#[derive(Serialize)]
struct ItemBody<'a> {
    output_index: u32,
    item: &'a Item<'a>,
}

#[derive(Serialize)]
struct PartBody<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: &'a OutputText<'a>,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    obfuscation: Option<String>,
}

#[derive(Serialize)]
struct TextDone<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    text: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct ArgsDelta<'a> {
    item_id: &'a str,
    output_index: u32,
    delta: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    obfuscation: Option<String>,
}

#[derive(Serialize)]
struct ArgsDone<'a> {
    item_id: &'a str,
    output_index: u32,
    arguments: &'a str,
}

/// The event stream: `response.created`, `response.in_progress`, `output_item.added`,
/// (`content_part.added`), deltas, done events, `response.completed` (or
/// `response.incomplete`). Sequence numbers start at 0; no `[DONE]`.
pub(crate) fn render_events(
    a: &Answer,
    obfuscate: bool,
    malformed: bool,
    comments: bool,
) -> Vec<Frame> {
    let text = a.turn.plan.text();
    let seed = content::fnv1a(a.turn.id.as_bytes());
    let mut seq = 0u64;
    let mut ev = |kind: &str, body: &dyn erased::Body| {
        let bytes = body.event(kind, seq);
        seq += 1;
        bytes
    };
    let item_id = a.item_id.as_str();
    let mut frames = Vec::new();
    let in_progress = a.object("", false);
    frames.push(Frame::aside(ev(
        "response.created",
        &ResponseBody {
            response: &in_progress,
        },
    )));
    frames.push(Frame::aside(ev(
        "response.in_progress",
        &ResponseBody {
            response: &in_progress,
        },
    )));
    frames.push(Frame::aside(ev(
        "response.output_item.added",
        &ItemBody {
            output_index: 0,
            item: &a.item("", false),
        },
    )));
    let content = |b: Bytes| Frame::content(http::with_comment(comments, b));
    match &a.turn.plan.reply {
        Reply::Text(chunks) => {
            frames.push(Frame::aside(ev(
                "response.content_part.added",
                &PartBody {
                    item_id,
                    output_index: 0,
                    content_index: 0,
                    part: &output_text(""),
                },
            )));
            for (i, c) in chunks.iter().enumerate() {
                frames.push(content(ev(
                    "response.output_text.delta",
                    &TextDelta {
                        item_id,
                        output_index: 0,
                        content_index: 0,
                        delta: c,
                        logprobs: [],
                        obfuscation: obfuscate.then(|| content::obfuscation(seed ^ i as u64)),
                    },
                )));
            }
            frames.push(Frame::tail(ev(
                "response.output_text.done",
                &TextDone {
                    item_id,
                    output_index: 0,
                    content_index: 0,
                    text: &text,
                    logprobs: [],
                },
            )));
            frames.push(Frame::tail(ev(
                "response.content_part.done",
                &PartBody {
                    item_id,
                    output_index: 0,
                    content_index: 0,
                    part: &output_text(&text),
                },
            )));
        }
        Reply::Tool(t) => {
            for (i, f) in t.fragments.iter().enumerate() {
                frames.push(content(ev(
                    "response.function_call_arguments.delta",
                    &ArgsDelta {
                        item_id,
                        output_index: 0,
                        delta: f,
                        obfuscation: obfuscate.then(|| content::obfuscation(seed ^ i as u64)),
                    },
                )));
            }
            frames.push(Frame::tail(ev(
                "response.function_call_arguments.done",
                &ArgsDone {
                    item_id,
                    output_index: 0,
                    arguments: &t.arguments,
                },
            )));
        }
    }
    frames.push(Frame::tail(ev(
        "response.output_item.done",
        &ItemBody {
            output_index: 0,
            item: &a.item(&text, true),
        },
    )));
    let last = if a.incomplete() {
        "response.incomplete"
    } else {
        "response.completed"
    };
    frames.push(Frame::tail(ev(
        last,
        &ResponseBody {
            response: &a.object(&text, true),
        },
    )));
    if malformed {
        let at = frames.len().min(5);
        frames.insert(
            at,
            Frame::aside(
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":\n\n",
            ),
        );
    }
    frames
}

/// Lets one closure render events of different body types.
mod erased {
    use bytes::Bytes;
    use serde::Serialize;

    use super::Event;
    use crate::http;

    pub(super) trait Body {
        fn event(&self, kind: &str, seq: u64) -> Bytes;
    }

    impl<T: Serialize> Body for T {
        fn event(&self, kind: &str, seq: u64) -> Bytes {
            http::sse(
                Some(kind),
                &Event {
                    kind,
                    sequence_number: seq,
                    body: self,
                },
            )
        }
    }
}
