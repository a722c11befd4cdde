//! `POST /v1/chat/completions`: plain and streamed, text and tool calls.

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
    let dirs = http::directives(Flavor::OpenAi, last_user_texts(messages))?;
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
            max_tokens: req
                .get("max_completion_tokens")
                .and_then(Value::as_u64)
                .or_else(|| req.get("max_tokens").and_then(Value::as_u64)),
            stop: stop_list(req.get("stop")),
            tool: first_tool(req.get("tools")),
            last_is_tool_result,
        },
        || s.id("call_", 24),
    );
    let usage = Usage::new(input_tokens(messages), plan.output_tokens(), dirs.cached, 0);
    let turn = Turn {
        id: s.id("chatcmpl-", 29),
        created: content::now(),
        model: model.to_string(),
        plan,
        usage,
    };
    let streamed = http::flag(req.get("stream"));
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if !streamed {
        if dirs.malformed {
            return Ok(http::malformed());
        }
        return Ok(http::json_bytes(render_completion(&turn)));
    }
    let opts = req.get("stream_options");
    let frames = render_chunks(
        &turn,
        &StreamOpts {
            include_usage: http::flag(opts.and_then(|o| o.get("include_usage"))),
            obfuscate: opts
                .and_then(|o| o.get("include_obfuscation"))
                .and_then(Value::as_bool)
                .unwrap_or(true),
            malformed: dirs.malformed,
            comments: dirs.comments,
        },
    );
    Ok(http::sse_stream(s, &dirs, frames, error::chat_stream_event))
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

fn first_tool(tools: Option<&Value>) -> Option<ToolSpec<'_>> {
    tools?.as_array()?.iter().find_map(|t| {
        let f = t.get("function")?;
        Some(ToolSpec {
            name: f.get("name")?.as_str()?,
            schema: f.get("parameters"),
        })
    })
}

fn finish_reason(f: &Finish) -> &'static str {
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
    usage: ChatUsage,
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
struct ChatUsage {
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
    fn new(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.input + u.output,
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
        usage: ChatUsage::new(&turn.usage),
        service_tier: "default",
        system_fingerprint: None,
    };
    http::pretty(&body)
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: Option<()>,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<ChatUsage>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    obfuscation: Option<String>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ChunkToolCall<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

#[derive(Serialize)]
struct ChunkToolCall<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: ChunkFunction<'a>,
}

#[derive(Serialize)]
struct ChunkFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// How to render a chat stream.
pub(crate) struct StreamOpts {
    pub(crate) include_usage: bool,
    pub(crate) obfuscate: bool,
    pub(crate) malformed: bool,
    pub(crate) comments: bool,
}

/// The chat stream: role chunk, one chunk per word or argument fragment, the finish
/// chunk, the usage chunk (with `include_usage`), then `data: [DONE]`.
pub(crate) fn render_chunks(turn: &Turn, o: &StreamOpts) -> Vec<Frame> {
    let seed = content::fnv1a(turn.id.as_bytes());
    let mut index = 0u64;
    let mut event =
        |delta: Option<Delta<'_>>, finish: Option<&'static str>, usage: Option<ChatUsage>| {
            index += 1;
            let chunk = Chunk {
                id: &turn.id,
                object: "chat.completion.chunk",
                created: turn.created,
                model: &turn.model,
                service_tier: "default",
                system_fingerprint: None,
                choices: delta
                    .map(|delta| {
                        vec![ChunkChoice {
                            index: 0,
                            delta,
                            finish_reason: finish,
                        }]
                    })
                    .unwrap_or_default(),
                usage: o.include_usage.then_some(usage),
                obfuscation: o.obfuscate.then(|| content::obfuscation(seed ^ index)),
            };
            http::sse(None, &chunk)
        };
    let mut frames = Vec::new();
    let content = |b: Bytes| Frame::content(http::with_comment(o.comments, b));
    match &turn.plan.reply {
        Reply::Text(chunks) => {
            frames.push(Frame::aside(event(
                Some(Delta {
                    role: Some("assistant"),
                    content: Some(Some("")),
                    refusal: Some(None),
                    ..Delta::default()
                }),
                None,
                None,
            )));
            for c in chunks {
                frames.push(content(event(
                    Some(Delta {
                        content: Some(Some(c)),
                        ..Delta::default()
                    }),
                    None,
                    None,
                )));
            }
        }
        Reply::Tool(t) => {
            frames.push(Frame::aside(event(
                Some(Delta {
                    role: Some("assistant"),
                    content: Some(None),
                    tool_calls: Some([ChunkToolCall {
                        index: 0,
                        id: Some(&t.id),
                        kind: Some("function"),
                        function: ChunkFunction {
                            name: Some(&t.name),
                            arguments: "",
                        },
                    }]),
                    refusal: Some(None),
                }),
                None,
                None,
            )));
            for f in &t.fragments {
                frames.push(content(event(
                    Some(Delta {
                        tool_calls: Some([ChunkToolCall {
                            index: 0,
                            id: None,
                            kind: None,
                            function: ChunkFunction {
                                name: None,
                                arguments: f,
                            },
                        }]),
                        ..Delta::default()
                    }),
                    None,
                    None,
                )));
            }
        }
    }
    frames.push(Frame::tail(event(
        Some(Delta::default()),
        Some(finish_reason(&turn.plan.finish)),
        None,
    )));
    if o.include_usage {
        frames.push(Frame::tail(event(
            None,
            None,
            Some(ChatUsage::new(&turn.usage)),
        )));
    }
    frames.push(Frame::tail(Bytes::from_static(b"data: [DONE]\n\n")));
    if o.malformed {
        let broken = format!(
            "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\n\n",
            turn.id
        );
        let at = frames.len().min(2);
        frames.insert(at, Frame::aside(broken));
    }
    frames
}
