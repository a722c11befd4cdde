//! Shared by the estimate tests: the fake upstream's input-token formula, written again from
//! its documentation (crates/fake-upstream/src/lib.rs, "Usage formulas"), and the texts it
//! counts.

#![allow(dead_code)]

use serde_json::Value;
use tollgate_formats::Format;

/// Whitespace-separated words.
pub fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The texts of a content value: a string, or the `text` strings of an array of parts.
pub fn content_texts(content: &Value) -> Vec<&str> {
    match content {
        Value::String(text) => vec![text.as_str()],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

fn content_words(content: Option<&Value>) -> u64 {
    content.map_or(0, |c| content_texts(c).into_iter().map(words).sum())
}

/// The fake upstream's input tokens for a body: Σ (4 + words of each message's text).
pub fn fake_input_tokens(format: Format, body: &Value) -> u64 {
    let empty = Vec::new();
    match format {
        Format::ChatCompletions => body["messages"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|m| 4 + content_words(m.get("content")))
            .sum(),
        Format::Responses => {
            let instructions = match &body["instructions"] {
                Value::String(text) => 4 + words(text),
                _ => 0,
            };
            let items = match &body["input"] {
                Value::String(text) => 4 + words(text),
                Value::Array(items) => items
                    .iter()
                    .map(|i| 4 + content_words(i.get("content")) + content_words(i.get("output")))
                    .sum(),
                _ => 0,
            };
            instructions + items
        }
        Format::AnthropicMessages => {
            let system = match &body["system"] {
                v @ (Value::String(_) | Value::Array(_)) => 4 + content_words(Some(v)),
                _ => 0,
            };
            let messages: u64 = body["messages"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|m| match m.get("content") {
                    Some(Value::Array(blocks)) => {
                        let is_result = |b: &&Value| b["type"] == "tool_result";
                        let results: u64 = blocks
                            .iter()
                            .filter(is_result)
                            .map(|b| 4 + content_words(b.get("content")))
                            .sum();
                        let others: Vec<&Value> = blocks.iter().filter(|b| !is_result(b)).collect();
                        let others = if others.is_empty() {
                            0
                        } else {
                            4 + others
                                .iter()
                                .filter_map(|b| b["text"].as_str())
                                .map(words)
                                .sum::<u64>()
                        };
                        results + others
                    }
                    Some(v) => 4 + content_words(Some(v)),
                    None => 4,
                })
                .sum();
            system + messages
        }
    }
}

/// Every text the fake counts, for comparing with a tokenizer's count.
pub fn message_texts(format: Format, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |content: Option<&Value>| {
        if let Some(c) = content {
            out.extend(content_texts(c).into_iter().map(str::to_owned));
        }
    };
    match format {
        Format::ChatCompletions => {
            for m in body["messages"].as_array().into_iter().flatten() {
                push(m.get("content"));
            }
        }
        Format::Responses => {
            push(body.get("instructions"));
            match &body["input"] {
                v @ Value::String(_) => push(Some(v)),
                Value::Array(items) => {
                    for i in items {
                        push(i.get("content"));
                        push(i.get("output"));
                    }
                }
                _ => {}
            }
        }
        Format::AnthropicMessages => {
            push(body.get("system"));
            for m in body["messages"].as_array().into_iter().flatten() {
                match m.get("content") {
                    Some(Value::Array(blocks)) => {
                        for b in blocks {
                            push(b.get("content"));
                            if let Some(t) = b["text"].as_str() {
                                push(Some(&Value::String(t.to_owned())));
                            }
                        }
                    }
                    other => push(other),
                }
            }
        }
    }
    out
}

/// The format a fixture's file name stands for.
pub fn format_named(name: &str) -> Format {
    match name {
        "chat_completions" => Format::ChatCompletions,
        "responses" => Format::Responses,
        "anthropic_messages" => Format::AnthropicMessages,
        other => panic!("unknown format {other}"),
    }
}
