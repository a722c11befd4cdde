//! `POST /v1/messages` (Anthropic): plain and streamed, text and `tool_use`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
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
    http::check_anthropic(s, ctx)?;
    if let Some(canned) = &s.canned {
        return Ok(fast::messages(s, canned, body).await);
    }
    let req = http::parse_json(Flavor::Anthropic, body)?;
    let model = http::require_model(Flavor::Anthropic, &req)?;
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
    let dirs = http::directives(Flavor::Anthropic, last_user_texts(messages))?;
    let tool_choice_none = req.pointer("/tool_choice/type").and_then(Value::as_str) == Some("none");
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            want_tool: dirs.tool && !tool_choice_none,
            max_tokens: Some(max_tokens),
            stop: req
                .get("stop_sequences")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
            tool: first_tool(req.get("tools")),
            last_is_tool_result: last_is_tool_result(messages),
        },
        || s.id("toolu_01", 22),
    );
    let usage = Usage::new(
        input_tokens(req.get("system"), messages),
        plan.output_tokens(),
        dirs.cached,
        dirs.cache_write,
    );
    let turn = Turn {
        id: s.id("msg_01", 22),
        created: content::now(),
        model: model.to_string(),
        plan,
        usage,
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::Anthropic).await {
        return Ok(r);
    }
    if !http::flag(req.get("stream")) {
        if dirs.malformed {
            return Ok(http::malformed());
        }
        return Ok(http::json_bytes(render_message(&turn)));
    }
    let frames = render_events(&turn, dirs.malformed, dirs.comments);
    Ok(http::sse_stream(
        s,
        &dirs,
        frames,
        error::anthropic_stream_event,
    ))
}

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

fn first_tool(tools: Option<&Value>) -> Option<ToolSpec<'_>> {
    tools?.as_array()?.iter().find_map(|t| {
        // Server tools (web search, code execution…) carry a versioned `type`.
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(_) => return None,
        }
        Some(ToolSpec {
            name: t.get("name")?.as_str()?,
            schema: t.get("input_schema"),
        })
    })
}

fn stop_reason(f: &Finish) -> (&'static str, Option<&str>) {
    match f {
        Finish::Stop => ("end_turn", None),
        Finish::Length => ("max_tokens", None),
        Finish::StopSequence(s) => ("stop_sequence", Some(s.as_str())),
        Finish::ToolCall => ("tool_use", None),
    }
}

#[derive(Serialize)]
struct MessageObj<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'a str>,
    usage: MessageUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
}

#[derive(Serialize)]
struct MessageUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation: CacheCreation,
    output_tokens: u64,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

impl MessageUsage {
    fn new(u: &Usage, output_tokens: u64) -> Self {
        Self {
            input_tokens: u.uncached(),
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cache_read,
            cache_creation: CacheCreation {
                ephemeral_5m_input_tokens: u.cache_write,
                ephemeral_1h_input_tokens: 0,
            },
            output_tokens,
            service_tier: "standard",
        }
    }
}

fn parse_args(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::Object(serde_json::Map::new()))
}

/// The non-streamed message (compact JSON, as Anthropic sends).
pub(crate) fn render_message(turn: &Turn) -> Bytes {
    let text = turn.plan.text();
    let content = match &turn.plan.reply {
        Reply::Text(_) => vec![Block::Text { text: &text }],
        Reply::Tool(t) => vec![Block::ToolUse {
            id: &t.id,
            name: &t.name,
            input: parse_args(&t.arguments),
        }],
    };
    let (reason, sequence) = stop_reason(&turn.plan.finish);
    http::compact(&MessageObj {
        id: &turn.id,
        kind: "message",
        role: "assistant",
        model: &turn.model,
        content,
        stop_reason: Some(reason),
        stop_sequence: sequence,
        usage: MessageUsage::new(&turn.usage, turn.usage.output),
    })
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: MessageObj<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block<'a>,
    },
    ContentBlockDelta {
        index: u32,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta<'a>,
        usage: DeltaUsage,
    },
    MessageStop,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
        }
    }

    fn sse(&self) -> Bytes {
        http::sse(Some(self.name()), self)
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct DeltaUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

/// Anthropic's ping event, with the space its JSON really has.
const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// `message_start`, `content_block_start`, `ping`, one delta per word or argument
/// fragment, `content_block_stop`, `message_delta` (stop reason and usage),
/// `message_stop`.
pub(crate) fn render_events(turn: &Turn, malformed: bool, comments: bool) -> Vec<Frame> {
    let u = &turn.usage;
    let mut frames = vec![Frame::aside(
        Event::MessageStart {
            message: MessageObj {
                id: &turn.id,
                kind: "message",
                role: "assistant",
                model: &turn.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: MessageUsage::new(u, 1),
            },
        }
        .sse(),
    )];
    let content = |e: Event<'_>| Frame::content(http::with_comment(comments, e.sse()));
    match &turn.plan.reply {
        Reply::Text(chunks) => {
            frames.push(Frame::aside(
                Event::ContentBlockStart {
                    index: 0,
                    content_block: Block::Text { text: "" },
                }
                .sse(),
            ));
            frames.push(Frame::aside(Bytes::from_static(PING)));
            for c in chunks {
                frames.push(content(Event::ContentBlockDelta {
                    index: 0,
                    delta: Delta::TextDelta { text: c },
                }));
            }
        }
        Reply::Tool(t) => {
            frames.push(Frame::aside(
                Event::ContentBlockStart {
                    index: 0,
                    content_block: Block::ToolUse {
                        id: &t.id,
                        name: &t.name,
                        input: Value::Object(serde_json::Map::new()),
                    },
                }
                .sse(),
            ));
            frames.push(Frame::aside(Bytes::from_static(PING)));
            frames.push(Frame::aside(
                Event::ContentBlockDelta {
                    index: 0,
                    delta: Delta::InputJsonDelta { partial_json: "" },
                }
                .sse(),
            ));
            for f in &t.fragments {
                frames.push(content(Event::ContentBlockDelta {
                    index: 0,
                    delta: Delta::InputJsonDelta { partial_json: f },
                }));
            }
        }
    }
    frames.push(Frame::tail(Event::ContentBlockStop { index: 0 }.sse()));
    let (reason, sequence) = stop_reason(&turn.plan.finish);
    frames.push(Frame::tail(
        Event::MessageDelta {
            delta: StopDelta {
                stop_reason: reason,
                stop_sequence: sequence,
            },
            usage: DeltaUsage {
                input_tokens: u.uncached(),
                cache_creation_input_tokens: u.cache_write,
                cache_read_input_tokens: u.cache_read,
                output_tokens: u.output,
            },
        }
        .sse(),
    ));
    frames.push(Frame::tail(Event::MessageStop.sse()));
    if malformed {
        let at = frames
            .iter()
            .position(|f| f.part == crate::stream::Part::Content)
            .map_or(frames.len(), |i| i + 1);
        frames.insert(
            at,
            Frame::aside(
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\n\n",
            ),
        );
    }
    frames
}
