//! `POST /v1/completions` (OpenAI's legacy completions): `prompt` in, `text` out, plain and
//! streamed (`stream_options.include_usage` adds the usage chunk), `n` and `best_of`. As
//! OpenAI does, chat models are refused with a 404 that points at chat completions, and
//! `max_tokens` defaults to 16.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::content::{self, Finish, PlanInput};
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::stream::Frame;
use crate::Shared;

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: u64 = 16;

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

fn bad(message: &str, param: &str) -> Response {
    error::bad_request(Flavor::OpenAi, message, Some(param))
}

/// Chat-only model families, which OpenAI's completions endpoint refuses.
fn is_chat_model(model: &str) -> bool {
    [
        "gpt-4",
        "gpt-5",
        "gpt-3.5-turbo-0",
        "o1",
        "o3",
        "o4",
        "chatgpt",
    ]
    .iter()
    .any(|p| model.starts_with(p))
        || model == "gpt-3.5-turbo"
}

/// The prompts of a request: a string, strings, or token arrays (counted as words of
/// their numbers).
fn prompts(prompt: Option<&Value>) -> Result<Vec<String>, Response> {
    let missing = || bad("Missing required parameter: 'prompt'.", "prompt");
    match prompt {
        Some(Value::String(p)) => Ok(vec![p.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                Ok(items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect())
            } else if items.iter().all(Value::is_u64) {
                Ok(vec![items
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")])
            } else {
                Err(bad("Invalid type for 'prompt'.", "prompt"))
            }
        }
        _ => Err(missing()),
    }
}

async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = http::require_model(Flavor::OpenAi, &req)?;
    if is_chat_model(model) {
        return Err(error::openai(
            StatusCode::NOT_FOUND,
            "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use v1/chat/completions?",
            Some("model"),
            None,
        ));
    }
    let prompts = prompts(req.get("prompt"))?;
    let count = |name: &str| match req.get(name) {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=128).contains(n))
            .ok_or_else(|| bad(&format!("Invalid value for '{name}'."), name)),
    };
    let n = count("n")?;
    let best_of = count("best_of")?.max(n);
    if req.get("best_of").is_some() && best_of < n {
        return Err(bad(
            "best_of must be greater than or equal to n.",
            "best_of",
        ));
    }
    let streamed = http::flag(req.get("stream"));
    if streamed && best_of > n {
        return Err(bad("Cannot stream results with best_of > n.", "best_of"));
    }
    let max_tokens = match req.get("max_tokens") {
        None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("Invalid value for 'max_tokens'.", "max_tokens"))?,
    };
    let dirs = http::directives(Flavor::OpenAi, prompts.iter().map(String::as_str))?;
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            max_tokens: dirs.max_tokens(Some(max_tokens)),
            ..PlanInput::default()
        },
        String::new,
    );
    let suffix_words = req
        .get("suffix")
        .and_then(Value::as_str)
        .map_or(0, content::count_words);
    let input: u64 = prompts.iter().map(|p| content::count_words(p)).sum::<u64>() + suffix_words;
    let choices = n * prompts.len() as u64;
    let generated = best_of * prompts.len() as u64;
    let usage = dirs.usage(input, plan.output_tokens() * generated, 0);
    let finish = match plan.finish {
        Finish::Length => "length",
        _ => "stop",
    };
    let id = s.id("cmpl-", 29);
    let created = content::now();
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    let echo = http::flag(req.get("echo"));
    let usage_json = usage.as_ref().map(|u| {
        json!({"prompt_tokens": u.input, "completion_tokens": u.output,
               "total_tokens": u.input + u.output})
    });
    if !streamed {
        if dirs.malformed {
            return Ok(http::malformed());
        }
        let text = plan.text();
        let choices: Vec<Value> = (0..choices)
            .map(|i| {
                let prompt = &prompts[(i / n) as usize];
                let text = if echo {
                    format!("{prompt}{text}")
                } else {
                    text.clone()
                };
                json!({"text": text, "index": i, "logprobs": null, "finish_reason": finish})
            })
            .collect();
        let mut answer = json!({"id": id, "object": "text_completion", "created": created,
                                "model": model, "choices": choices});
        if let Some(usage) = usage_json {
            answer["usage"] = usage;
        }
        return Ok(http::json_bytes(http::pretty(&answer)));
    }
    let chunk = |index: u64, text: &str, finish: Option<&str>| {
        http::sse(
            None,
            &json!({"id": id, "object": "text_completion", "created": created,
                    "choices": [{"text": text, "index": index, "logprobs": null,
                                 "finish_reason": finish}],
                    "model": model}),
        )
    };
    let mut frames = Vec::new();
    let words = match &plan.reply {
        content::Reply::Text(words) => words.clone(),
        content::Reply::Tool(_) => Vec::new(),
    };
    for index in 0..choices {
        for word in &words {
            frames.push(Frame::content(chunk(index, word, None)));
        }
        frames.push(Frame::tail(chunk(index, "", Some(finish))));
    }
    let include_usage = http::flag(req.pointer("/stream_options/include_usage"));
    if let (true, Some(usage)) = (include_usage, usage_json) {
        frames.push(Frame::terminal(http::sse(
            None,
            &json!({"id": id, "object": "text_completion", "created": created,
                    "choices": [], "model": model, "usage": usage}),
        )));
    }
    frames.push(Frame::terminal(Bytes::from_static(b"data: [DONE]\n\n")));
    Ok(http::sse_stream(s, &dirs, frames, error::chat_stream_event))
}
