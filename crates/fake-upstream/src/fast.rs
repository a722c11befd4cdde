//! Fast mode: answers serialized once at start, and a byte search instead of a JSON
//! parse, so the fake is never the bottleneck of a benchmark. A request whose output cap
//! (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) is below the canned
//! answer's length gets the full path instead, which obeys the cap as the provider does.

use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;

use crate::chat::{self, StreamOpts};
use crate::content::{self, PlanInput, Turn, Usage};
use crate::http;
use crate::responses::{self, Answer};
use crate::stream::{self, Frame};
use crate::{embeddings, messages, Shared};

/// Words in every canned reply.
const WORDS: usize = 8;
/// Input tokens every canned answer reports.
const INPUT_TOKENS: u64 = 20;

/// The canned answers.
pub(crate) struct Canned {
    chat_json: Bytes,
    chat_stream: Vec<Frame>,
    chat_stream_usage: Vec<Frame>,
    responses_json: Bytes,
    responses_stream: Vec<Frame>,
    embeddings_json: Bytes,
    messages_json: Bytes,
    messages_stream: Vec<Frame>,
    /// Output tokens every canned answer reports.
    output_tokens: u64,
}

fn turn(id: &str, model: &str, tier: &'static str) -> Turn {
    let plan = content::plan(
        PlanInput {
            words: Some(WORDS),
            ..PlanInput::default()
        },
        String::new,
    );
    let usage = Usage::new(INPUT_TOKENS, plan.output_tokens(), 0, 0);
    Turn {
        id: id.to_string(),
        created: content::now(),
        model: model.to_string(),
        plan,
        usage: Some(usage),
        tier,
    }
}

impl Canned {
    pub(crate) fn build() -> Self {
        let chat_turn = turn(
            "chatcmpl-fastfastfastfastfastfastfast",
            "gpt-4o-mini",
            "default",
        );
        let stream_opts = |include_usage| StreamOpts {
            include_usage,
            obfuscate: true,
            malformed: false,
            comments: false,
        };
        let answer = Answer {
            turn: turn("resp_fast", "gpt-4o-mini", "default"),
            item_id: "msg_fast".into(),
            echo: responses::Echo::default(),
            hosted: Vec::new(),
            background: false,
        };
        let message = messages::Answer {
            turn: turn("msg_01fastfastfastfastfast", "claude-haiku-4-5", "standard"),
            search: None,
        };
        let event_opts = responses::EventOpts {
            obfuscate: true,
            malformed: false,
            comments: false,
        };
        let vector = embeddings::vector(7, 1536);
        Self {
            chat_json: chat::render_completion(&chat_turn),
            chat_stream: chat::render_chunks(&chat_turn, &stream_opts(false)),
            chat_stream_usage: chat::render_chunks(&chat_turn, &stream_opts(true)),
            responses_json: responses::render_response(&answer),
            responses_stream: responses::render_events(&answer, &event_opts),
            embeddings_json: embeddings::render(
                "text-embedding-3-small",
                &[vector],
                false,
                INPUT_TOKENS,
            ),
            messages_json: messages::render_message(&message),
            messages_stream: messages::render_events(&message, false, false),
            output_tokens: chat_turn.plan.output_tokens(),
        }
    }

    /// Whether a canned answer obeys the request's output cap: with a smaller cap the
    /// full path answers (a real provider never reports more output than the cap allows).
    /// A Responses cap below the API's minimum takes the full path too, which refuses it.
    pub(crate) fn fits(&self, body: &[u8]) -> bool {
        ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .all(|key| json_number(body, key).is_none_or(|cap| cap >= self.output_tokens))
            && json_number(body, "max_output_tokens")
                .is_none_or(|cap| cap >= crate::responses::MIN_OUTPUT_TOKENS)
    }
}

/// The unsigned integer after the first `"key":` in the body, if there is one.
fn json_number(body: &[u8], key: &str) -> Option<u64> {
    let needle = format!("\"{key}\"");
    let pos = body
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let value = body[pos + needle.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&value[..digits]).ok()?.parse().ok()
}

/// True when `"key"` is followed by `: true` somewhere in the body.
fn json_true(body: &[u8], key: &str) -> bool {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut rest = body;
    while let Some(pos) = rest.windows(needle.len()).position(|w| w == needle) {
        rest = &rest[pos + needle.len()..];
        let after = rest.trim_ascii_start();
        if let Some(value) = after.strip_prefix(b":") {
            if value.trim_ascii_start().starts_with(b"true") {
                return true;
            }
        }
    }
    false
}

async fn wait(s: &Shared) {
    if !s.opts.latency.is_zero() {
        tokio::time::sleep(s.opts.latency).await;
    }
}

fn stream(s: &Arc<Shared>, frames: &[Frame]) -> Response {
    http::sse_response(stream::body(
        s.clone(),
        frames.to_vec(),
        s.opts.chunk_delay,
        None,
    ))
}

pub(crate) async fn chat(s: &Arc<Shared>, c: &Canned, body: &[u8]) -> Response {
    wait(s).await;
    if !json_true(body, "stream") {
        return http::json_bytes(c.chat_json.clone());
    }
    if json_true(body, "include_usage") {
        stream(s, &c.chat_stream_usage)
    } else {
        stream(s, &c.chat_stream)
    }
}

pub(crate) async fn responses(s: &Arc<Shared>, c: &Canned, body: &[u8]) -> Response {
    wait(s).await;
    if json_true(body, "stream") {
        stream(s, &c.responses_stream)
    } else {
        http::json_bytes(c.responses_json.clone())
    }
}

pub(crate) async fn embeddings(s: &Arc<Shared>, c: &Canned) -> Response {
    wait(s).await;
    http::json_bytes(c.embeddings_json.clone())
}

pub(crate) async fn messages(s: &Arc<Shared>, c: &Canned, body: &[u8]) -> Response {
    wait(s).await;
    if json_true(body, "stream") {
        stream(s, &c.messages_stream)
    } else {
        http::json_bytes(c.messages_json.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::{json_number, json_true, Canned};

    #[test]
    fn a_cap_below_the_canned_answer_takes_the_full_path() {
        let canned = Canned::build();
        let n = canned.output_tokens;
        assert!(n > 1, "the canned answer has several tokens");
        assert!(canned.fits(br#"{"model":"m","messages":[]}"#));
        assert!(canned.fits(format!(r#"{{"max_tokens": {n}}}"#).as_bytes()));
        assert!(!canned.fits(format!(r#"{{"max_tokens": {}}}"#, n - 1).as_bytes()));
        assert!(!canned.fits(br#"{"max_completion_tokens":1}"#));
        assert!(!canned.fits(br#"{"stream":true,"max_output_tokens" : 2}"#));
        assert_eq!(
            json_number(br#"{"max_tokens":64,"x":1}"#, "max_tokens"),
            Some(64)
        );
        assert_eq!(json_number(br#"{"max_tokens":null}"#, "max_tokens"), None);
    }

    #[test]
    fn finds_true_flags_only() {
        assert!(json_true(br#"{"stream": true}"#, "stream"));
        assert!(json_true(
            br#"{"stream_options":{"include_usage" :true},"stream":true}"#,
            "include_usage"
        ));
        assert!(!json_true(
            br#"{"stream_options":{"include_usage":true}}"#,
            "stream"
        ));
        assert!(!json_true(br#"{"stream":false}"#, "stream"));
        assert!(!json_true(b"", "stream"));
    }
}
