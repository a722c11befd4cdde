//! The Messages answer as JSON and as its event stream, with the web search server
//! tool's blocks before the reply when the request offers that tool.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::content::{self, Finish, Reply, Turn, Usage};
use crate::http;
use crate::stream::{ContentGen, Frame, Part};

/// The query the web search server tool reports.
const QUERY: &str = "deterministic words for tests";

/// One Messages answer.
pub(crate) struct Answer {
    pub(crate) turn: Turn,
    /// The `server_tool_use` id when the request offers the web search server tool.
    pub(crate) search: Option<String>,
}

impl Answer {
    /// Where the reply's block sits: after the two web search blocks, if any.
    fn reply_index(&self) -> u32 {
        if self.search.is_some() {
            2
        } else {
            0
        }
    }

    fn server_tool_use(&self) -> Option<ServerToolUse> {
        self.search.as_ref().map(|_| ServerToolUse {
            web_search_requests: 1,
        })
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<MessageUsage>,
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
    ServerToolUse {
        id: &'a str,
        name: &'static str,
        input: Value,
    },
    WebSearchToolResult {
        tool_use_id: &'a str,
        content: Value,
    },
}

#[derive(Serialize, Clone, Copy)]
struct ServerToolUse {
    web_search_requests: u64,
}

#[derive(Serialize)]
struct MessageUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation: CacheCreation,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_tool_use: Option<ServerToolUse>,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

impl MessageUsage {
    fn new(
        u: &Usage,
        output_tokens: u64,
        tools: Option<ServerToolUse>,
        tier: &'static str,
    ) -> Self {
        Self {
            input_tokens: u.uncached(),
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cache_read,
            cache_creation: CacheCreation {
                ephemeral_5m_input_tokens: u.cache_write,
                ephemeral_1h_input_tokens: 0,
            },
            output_tokens,
            server_tool_use: tools,
            service_tier: tier,
        }
    }
}

fn parse_args(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::Object(serde_json::Map::new()))
}

/// The web search result the server tool returns.
fn search_results() -> Value {
    json!([{"type": "web_search_result", "title": "Deterministic words for tests",
        "url": "https://example.com/fake-upstream", "encrypted_content": "RmFrZSB1cHN0cmVhbQ==",
        "page_age": "April 1, 2025"}])
}

/// The non-streamed message (compact JSON, as Anthropic sends).
pub(crate) fn render_message(a: &Answer) -> Bytes {
    let turn = &a.turn;
    let text = turn.plan.text();
    let mut content = Vec::new();
    if let Some(id) = &a.search {
        content.push(Block::ServerToolUse {
            id,
            name: "web_search",
            input: json!({"query": QUERY}),
        });
        content.push(Block::WebSearchToolResult {
            tool_use_id: id,
            content: search_results(),
        });
    }
    content.push(match &turn.plan.reply {
        Reply::Text(_) => Block::Text { text: &text },
        Reply::Tool(t) => Block::ToolUse {
            id: &t.id,
            name: &t.name,
            input: parse_args(&t.arguments),
        },
    });
    let (reason, sequence) = stop_reason(&turn.plan.finish);
    http::compact(&MessageObj {
        id: &turn.id,
        kind: "message",
        role: "assistant",
        model: &turn.model,
        content,
        stop_reason: Some(reason),
        stop_sequence: sequence,
        usage: turn
            .usage
            .as_ref()
            .map(|u| MessageUsage::new(u, u.output, a.server_tool_use(), turn.tier)),
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
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<DeltaUsage>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    server_tool_use: Option<ServerToolUse>,
}

/// Anthropic's ping event, with the space its JSON really has.
const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// `message_start`, the web search blocks (if any), the reply's
/// `content_block_start`, `ping` (after the first block start), one delta per word or
/// argument fragment, `content_block_stop`, `message_delta` (stop reason and usage),
/// `message_stop`.
pub(crate) fn render_events(a: &Answer, malformed: bool, comments: bool) -> Vec<Frame> {
    let turn = &a.turn;
    let at = a.reply_index();
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
                usage: turn
                    .usage
                    .as_ref()
                    .map(|u| MessageUsage::new(u, 1, None, turn.tier)),
            },
        }
        .sse(),
    )];
    if let Some(id) = &a.search {
        let input = json!({});
        block_start(
            &mut frames,
            0,
            Block::ServerToolUse {
                id,
                name: "web_search",
                input,
            },
        );
        let query = json!({"query": QUERY}).to_string();
        frames.push(Frame::aside(
            Event::ContentBlockDelta {
                index: 0,
                delta: Delta::InputJsonDelta {
                    partial_json: &query,
                },
            }
            .sse(),
        ));
        frames.push(Frame::aside(Event::ContentBlockStop { index: 0 }.sse()));
        let content = search_results();
        block_start(
            &mut frames,
            1,
            Block::WebSearchToolResult {
                tool_use_id: id,
                content,
            },
        );
        frames.push(Frame::aside(Event::ContentBlockStop { index: 1 }.sse()));
    }
    let content = |e: Event<'_>| Frame::content(http::with_comment(comments, e.sse()));
    match &turn.plan.reply {
        Reply::Text(chunks) => {
            block_start(&mut frames, at, Block::Text { text: "" });
            for c in chunks {
                frames.push(content(Event::ContentBlockDelta {
                    index: at,
                    delta: Delta::TextDelta { text: c },
                }));
            }
        }
        Reply::Tool(t) => {
            let input = Value::Object(serde_json::Map::new());
            block_start(
                &mut frames,
                at,
                Block::ToolUse {
                    id: &t.id,
                    name: &t.name,
                    input,
                },
            );
            frames.push(Frame::aside(
                Event::ContentBlockDelta {
                    index: at,
                    delta: Delta::InputJsonDelta { partial_json: "" },
                }
                .sse(),
            ));
            for f in &t.fragments {
                frames.push(content(Event::ContentBlockDelta {
                    index: at,
                    delta: Delta::InputJsonDelta { partial_json: f },
                }));
            }
        }
    }
    frames.push(Frame::tail(Event::ContentBlockStop { index: at }.sse()));
    let (reason, sequence) = stop_reason(&turn.plan.finish);
    frames.push(Frame::terminal(
        Event::MessageDelta {
            delta: StopDelta {
                stop_reason: reason,
                stop_sequence: sequence,
            },
            usage: turn.usage.as_ref().map(|u| DeltaUsage {
                input_tokens: u.uncached(),
                cache_creation_input_tokens: u.cache_write,
                cache_read_input_tokens: u.cache_read,
                output_tokens: u.output,
                server_tool_use: a.server_tool_use(),
            }),
        }
        .sse(),
    ));
    frames.push(Frame::terminal(Event::MessageStop.sse()));
    if malformed {
        let at = frames
            .iter()
            .position(|f| f.part == Part::Content)
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

/// A `content_block_start`, and the `ping` after the first one.
fn block_start(frames: &mut Vec<Frame>, index: u32, block: Block<'_>) {
    frames.push(Frame::aside(
        Event::ContentBlockStart {
            index,
            content_block: block,
        }
        .sse(),
    ));
    if index == 0 {
        frames.push(Frame::aside(Bytes::from_static(PING)));
    }
}

/// Text deltas for ever (the `endless` directive).
pub(crate) fn endless_deltas(a: &Answer, comments: bool) -> ContentGen {
    let index = a.reply_index();
    Box::new(move |i| {
        let word = content::word_chunk(i);
        let event = Event::ContentBlockDelta {
            index,
            delta: Delta::TextDelta { text: &word },
        };
        http::with_comment(comments, event.sse())
    })
}
