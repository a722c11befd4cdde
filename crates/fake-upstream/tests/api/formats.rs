//! The three text APIs side by side, so one test can drive a behaviour through each:
//! request bodies, and where each puts its text and usage, plain and streamed.

use fake_upstream::FakeUpstream;
use serde_json::{json, Value};

use crate::{json_events, post, post_anthropic};

/// A text API of the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Responses,
    Messages,
}

pub const APIS: [Api; 3] = [Api::Chat, Api::Responses, Api::Messages];

impl Api {
    /// A request whose only user text is `text`; streamed ones ask for usage.
    pub fn body(self, text: &str, stream: bool) -> Value {
        match self {
            Api::Chat => {
                let mut b = json!({"model": "gpt-4o-mini", "stream": stream,
                    "messages": [{"role": "user", "content": text}]});
                if stream {
                    b["stream_options"] = json!({"include_usage": true});
                }
                b
            }
            Api::Responses => json!({"model": "gpt-4.1-mini", "stream": stream, "input": text}),
            Api::Messages => json!({"model": "claude-haiku-4-5", "max_tokens": 1024,
                "stream": stream, "messages": [{"role": "user", "content": text}]}),
        }
    }

    /// The request's path under `/v1`.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/chat/completions",
            Api::Responses => "/responses",
            Api::Messages => "/messages",
        }
    }

    /// Sends `body` with the headers the API needs.
    pub async fn send(self, up: &FakeUpstream, body: Value) -> anyhow::Result<reqwest::Response> {
        match self {
            Api::Messages => post_anthropic(up, body).await,
            _ => post(up, self.path(), body).await,
        }
    }

    /// The reply's text in a non-streamed answer.
    pub fn text(self, v: &Value) -> Option<String> {
        let t = match self {
            Api::Chat => &v["choices"][0]["message"]["content"],
            Api::Responses => &v["output"].as_array()?.last()?["content"][0]["text"],
            Api::Messages => &v["content"].as_array()?.last()?["text"],
        };
        t.as_str().map(str::to_string)
    }

    /// The usage object of a non-streamed answer, if it has one.
    pub fn usage(self, v: &Value) -> Option<Value> {
        v.get("usage").filter(|u| !u.is_null()).cloned()
    }

    /// Output tokens of a usage object.
    pub fn output_tokens(self, usage: &Value) -> Option<u64> {
        match self {
            Api::Chat => usage["completion_tokens"].as_u64(),
            _ => usage["output_tokens"].as_u64(),
        }
    }

    /// Input tokens of a usage object (no cache involved).
    pub fn input_tokens(self, usage: &Value) -> Option<u64> {
        match self {
            Api::Chat => usage["prompt_tokens"].as_u64(),
            _ => usage["input_tokens"].as_u64(),
        }
    }

    /// The text of a stream: its content deltas joined.
    pub fn streamed_text(self, raw: &str) -> anyhow::Result<String> {
        let events = json_events(raw)?;
        Ok(events
            .iter()
            .filter_map(|e| match self {
                Api::Chat => e["choices"][0]["delta"]["content"].as_str(),
                Api::Responses => (e["type"] == "response.output_text.delta")
                    .then(|| e["delta"].as_str())
                    .flatten(),
                Api::Messages => e["delta"]["text"].as_str(),
            })
            .collect())
    }

    /// Content events of a stream (one per word).
    pub fn content_events(self, raw: &str) -> anyhow::Result<usize> {
        let events = json_events(raw)?;
        Ok(events
            .iter()
            .filter(|e| match self {
                Api::Chat => e["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty()),
                Api::Responses => e["type"] == "response.output_text.delta",
                Api::Messages => e["delta"]["type"] == "text_delta",
            })
            .count())
    }

    /// Every usage object a stream reports (non-null).
    pub fn streamed_usages(self, raw: &str) -> anyhow::Result<Vec<Value>> {
        let events = json_events(raw)?;
        Ok(events
            .iter()
            .filter_map(|e| {
                let u = match self {
                    Api::Chat => e.get("usage"),
                    Api::Responses => e.get("response").and_then(|r| r.get("usage")),
                    Api::Messages => e
                        .get("usage")
                        .or_else(|| e.get("message").and_then(|m| m.get("usage"))),
                };
                u.filter(|u| !u.is_null()).cloned()
            })
            .collect())
    }

    /// The usage the stream ends with (chat usage chunk, `response.completed`,
    /// `message_delta`).
    pub fn final_usage(self, raw: &str) -> anyhow::Result<Option<Value>> {
        Ok(self.streamed_usages(raw)?.pop())
    }
}
