//! The Responses event stream: typed events with sequence numbers, hosted tool calls
//! first, then the reply.

use bytes::Bytes;
use serde::Serialize;

use super::hosted::{Call, Progress};
use super::object::{output_text, Answer, Item, OutputText, ResponseObj, Stage};
use crate::content::{self, Reply};
use crate::http;
use crate::stream::{ContentGen, Frame};

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

/// Stream options of one request.
pub(crate) struct EventOpts {
    pub(crate) obfuscate: bool,
    pub(crate) malformed: bool,
    pub(crate) comments: bool,
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

/// The event stream: `response.created`, `response.in_progress`, the hosted tool
/// calls (`output_item.added`, `<tool>_call.in_progress`, `.searching` /
/// `.interpreting` / `.generating`, `.completed`, `output_item.done` each), then the
/// reply's `output_item.added`, (`content_part.added`), deltas, done events, and
/// `response.completed` (or `response.incomplete`). Sequence numbers start at 0; no
/// `[DONE]`. A background response is created `queued`.
pub(crate) fn render_events(a: &Answer, o: &EventOpts) -> Vec<Frame> {
    let (obfuscate, malformed, comments) = (o.obfuscate, o.malformed, o.comments);
    let text = a.turn.plan.text();
    let at = a.reply_index();
    let seed = content::fnv1a(a.turn.id.as_bytes());
    let mut seq = 0u64;
    let mut ev = |kind: &str, body: &dyn erased::Body| {
        let bytes = body.event(kind, seq);
        seq += 1;
        bytes
    };
    let item_id = a.item_id.as_str();
    let mut frames = Vec::new();
    let in_progress = a.object("", Stage::InProgress);
    let created = if a.background {
        a.object("", Stage::Queued)
    } else {
        a.object("", Stage::InProgress)
    };
    frames.push(Frame::aside(ev(
        "response.created",
        &ResponseBody { response: &created },
    )));
    frames.push(Frame::aside(ev(
        "response.in_progress",
        &ResponseBody {
            response: &in_progress,
        },
    )));
    for (i, call) in a.hosted.iter().enumerate() {
        hosted_events(&mut frames, &mut ev, i as u32, call);
    }
    frames.push(Frame::aside(ev(
        "response.output_item.added",
        &ItemBody {
            output_index: at,
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
                    output_index: at,
                    content_index: 0,
                    part: &output_text(""),
                },
            )));
            for (i, c) in chunks.iter().enumerate() {
                frames.push(content(ev(
                    "response.output_text.delta",
                    &TextDelta {
                        item_id,
                        output_index: at,
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
                    output_index: at,
                    content_index: 0,
                    text: &text,
                    logprobs: [],
                },
            )));
            frames.push(Frame::tail(ev(
                "response.content_part.done",
                &PartBody {
                    item_id,
                    output_index: at,
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
                        output_index: at,
                        delta: f,
                        obfuscation: obfuscate.then(|| content::obfuscation(seed ^ i as u64)),
                    },
                )));
            }
            frames.push(Frame::tail(ev(
                "response.function_call_arguments.done",
                &ArgsDone {
                    item_id,
                    output_index: at,
                    arguments: &t.arguments,
                },
            )));
        }
    }
    frames.push(Frame::tail(ev(
        "response.output_item.done",
        &ItemBody {
            output_index: at,
            item: &a.item(&text, true),
        },
    )));
    let last = if a.incomplete() {
        "response.incomplete"
    } else {
        "response.completed"
    };
    frames.push(Frame::terminal(ev(
        last,
        &ResponseBody {
            response: &a.object(&text, Stage::Done),
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

/// The five events of one hosted tool call at `output_index`.
fn hosted_events(
    frames: &mut Vec<Frame>,
    ev: &mut impl FnMut(&str, &dyn erased::Body) -> Bytes,
    output_index: u32,
    call: &Call,
) {
    let stem = call.kind.item_type();
    let added = Item::Hosted(call.item(false));
    frames.push(Frame::aside(ev(
        "response.output_item.added",
        &ItemBody {
            output_index,
            item: &added,
        },
    )));
    for step in ["in_progress", call.kind.working(), "completed"] {
        frames.push(Frame::aside(ev(
            &format!("response.{stem}.{step}"),
            &Progress {
                output_index,
                item_id: &call.id,
            },
        )));
    }
    let done = Item::Hosted(call.item(true));
    frames.push(Frame::aside(ev(
        "response.output_item.done",
        &ItemBody {
            output_index,
            item: &done,
        },
    )));
}

/// Text deltas for ever (the `endless` directive), numbered after the `first_seq`
/// events before them.
pub(crate) fn endless_deltas(a: &Answer, o: &EventOpts, first_seq: u64) -> ContentGen {
    let item_id = a.item_id.clone();
    let at = a.reply_index();
    let seed = content::fnv1a(a.turn.id.as_bytes());
    let (obfuscate, comments) = (o.obfuscate, o.comments);
    Box::new(move |i| {
        let word = content::word_chunk(i);
        let body = TextDelta {
            item_id: &item_id,
            output_index: at,
            content_index: 0,
            delta: &word,
            logprobs: [],
            obfuscation: obfuscate.then(|| content::obfuscation(seed ^ i)),
        };
        let bytes = erased::Body::event(&body, "response.output_text.delta", first_seq + i);
        http::with_comment(comments, bytes)
    })
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
