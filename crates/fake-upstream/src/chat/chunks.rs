//! The chat completion stream: one `chat.completion.chunk` per word or argument
//! fragment, the finish chunk, the usage chunk, `[DONE]`.

use bytes::Bytes;
use serde::Serialize;

use super::{finish_reason, ChatUsage};
use crate::content::{self, Reply, Turn};
use crate::http;
use crate::stream::Frame;

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

/// Writes the chunks of one chat stream (owned, so an endless stream can keep it).
pub(super) struct Chunker {
    id: String,
    created: u64,
    model: String,
    tier: &'static str,
    include_usage: bool,
    obfuscate: bool,
    comments: bool,
    seed: u64,
    index: u64,
}

impl Chunker {
    pub(super) fn new(turn: &Turn, o: &StreamOpts) -> Self {
        Self {
            id: turn.id.clone(),
            created: turn.created,
            model: turn.model.clone(),
            tier: turn.tier,
            include_usage: o.include_usage,
            obfuscate: o.obfuscate,
            comments: o.comments,
            seed: content::fnv1a(turn.id.as_bytes()),
            index: 0,
        }
    }

    fn event(
        &mut self,
        delta: Option<Delta<'_>>,
        finish: Option<&'static str>,
        usage: Option<ChatUsage>,
    ) -> Bytes {
        self.index += 1;
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            service_tier: self.tier,
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
            usage: self.include_usage.then_some(usage),
            obfuscation: self
                .obfuscate
                .then(|| content::obfuscation(self.seed ^ self.index)),
        };
        http::sse(None, &chunk)
    }

    /// One content chunk of text.
    pub(super) fn text(&mut self, text: &str) -> Bytes {
        let delta = Delta {
            content: Some(Some(text)),
            ..Delta::default()
        };
        let bytes = self.event(Some(delta), None, None);
        http::with_comment(self.comments, bytes)
    }
}

/// The chat stream: role chunk, one chunk per word or argument fragment, the finish
/// chunk, the usage chunk (with `include_usage` and a usage to report), then
/// `data: [DONE]`.
pub(crate) fn render_chunks(turn: &Turn, o: &StreamOpts) -> Vec<Frame> {
    let mut chunker = Chunker::new(turn, o);
    let mut event =
        |delta: Option<Delta<'_>>, finish: Option<&'static str>, usage: Option<ChatUsage>| {
            chunker.event(delta, finish, usage)
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
    if let (true, Some(u)) = (o.include_usage, &turn.usage) {
        frames.push(Frame::terminal(event(None, None, Some(ChatUsage::new(u)))));
    }
    frames.push(Frame::terminal(Bytes::from_static(b"data: [DONE]\n\n")));
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
