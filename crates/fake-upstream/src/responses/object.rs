//! The Responses object and its output items, finished, in progress or queued.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::hosted::Call;
use super::Echo;
use crate::content::{Finish, Reply, Turn};
use crate::http;

/// One Responses answer.
pub(crate) struct Answer {
    pub(crate) turn: Turn,
    pub(crate) item_id: String,
    pub(crate) echo: Echo,
    /// One call per hosted tool type in the request, answered before the reply.
    pub(crate) hosted: Vec<Call>,
    /// `"background": true` was asked for.
    pub(crate) background: bool,
}

/// How far along the response object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Accepted for background processing: no output, `usage: null`.
    Queued,
    InProgress,
    Done,
}

#[derive(Serialize)]
pub(super) struct ResponseObj<'a> {
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
    /// Absent when the answer reports no usage; `null` before the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<RespUsage>>,
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
pub(super) enum Item<'a> {
    /// A hosted tool call (web search, file search, code interpreter, image).
    Hosted(Value),
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
pub(super) struct OutputText<'a> {
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

pub(super) fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        annotations: [],
        logprobs: [],
        text,
    }
}

impl Answer {
    pub(super) fn incomplete(&self) -> bool {
        self.turn.plan.finish == Finish::Length
    }

    /// Where the reply's item sits in `output`: after the hosted tool calls.
    pub(super) fn reply_index(&self) -> u32 {
        self.hosted.len() as u32
    }

    /// The reply's item, finished (`done`) or just begun.
    pub(super) fn item<'a>(&'a self, text: &'a str, done: bool) -> Item<'a> {
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

    /// The response object at this stage.
    pub(super) fn object<'a>(&'a self, text: &'a str, stage: Stage) -> ResponseObj<'a> {
        let e = &self.echo;
        let done = stage == Stage::Done;
        let incomplete = done && self.incomplete();
        ResponseObj {
            id: &self.turn.id,
            object: "response",
            created_at: self.turn.created,
            status: match (stage, incomplete) {
                (Stage::Queued, _) => "queued",
                (Stage::InProgress, _) => "in_progress",
                (Stage::Done, true) => "incomplete",
                (Stage::Done, false) => "completed",
            },
            background: self.background,
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
                let hosted = self.hosted.iter().map(|c| Item::Hosted(c.item(true)));
                hosted.chain([self.item(text, true)]).collect()
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
            service_tier: self.turn.tier,
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
            usage: if done {
                self.turn.usage.as_ref().map(|u| {
                    Some(RespUsage {
                        input_tokens: u.input,
                        input_tokens_details: InputDetails {
                            cached_tokens: u.cache_read,
                        },
                        output_tokens: u.output,
                        output_tokens_details: OutputDetails {
                            reasoning_tokens: 0,
                        },
                        total_tokens: u.total(),
                    })
                })
            } else {
                Some(None)
            },
            user: None,
            metadata: &e.metadata,
        }
    }
}

/// The non-streamed response object: queued for a background request, else done.
pub(crate) fn render_response(a: &Answer) -> Bytes {
    let text = a.turn.plan.text();
    let stage = if a.background {
        Stage::Queued
    } else {
        Stage::Done
    };
    http::pretty(&a.object(&text, stage))
}
