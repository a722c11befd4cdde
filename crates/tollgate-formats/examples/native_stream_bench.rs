//! Measures what a native stream costs the gateway beyond a passed-through one, in
//! process: a Gemini `streamGenerateContent?alt=sse` stream of 8 words (decoded, read as
//! Chat Completions chunks by `GeminiStream`, metered, re-encoded) against an OpenAI chat
//! stream of 8 words with its usage chunk (decoded, metered, re-encoded), CPU per stream,
//! both on one thread, alternating. The gateway path around them (HTTP, reservation,
//! ledger) is the same for both.
//!
//! `cargo run --release -p tollgate-formats --example native_stream_bench`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_formats::conversion::gemini::stream::GeminiStream;
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::{sse, Format, SseDecoder, UsageTracker};

const WORDS: [&str; 8] = [
    "Hello",
    " from",
    " the",
    " fake",
    " upstream,",
    " a",
    " café",
    " of",
];

fn gemini_body() -> Vec<u8> {
    let mut out = Vec::new();
    for w in WORDS {
        let chunk = json!({"candidates": [{"content": {"parts": [{"text": w}], "role": "model"}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 20, "totalTokenCount": 20},
            "modelVersion": "gemini-2.5-flash", "responseId": "abcdefghijklmnopqrstuv"});
        out.extend_from_slice(format!("data: {chunk}\r\n\r\n").as_bytes());
    }
    let last = json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 8, "totalTokenCount": 28},
        "modelVersion": "gemini-2.5-flash", "responseId": "abcdefghijklmnopqrstuv"});
    out.extend_from_slice(format!("data: {last}\r\n\r\n").as_bytes());
    out
}

fn openai_body() -> Vec<u8> {
    let mut out = Vec::new();
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "chatcmpl-abcdefghijklmnopqrstuvwxyz12", "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
            "system_fingerprint": "fp_1234567890", "choices": [{"index": 0, "delta": delta,
            "logprobs": null, "finish_reason": finish}], "usage": null, "obfuscation": "abcd"})
    };
    out.extend_from_slice(&sse::encode_json(
        None,
        &chunk(json!({"role": "assistant", "content": ""}), json!(null)),
    ));
    for w in WORDS {
        out.extend_from_slice(&sse::encode_json(
            None,
            &chunk(json!({"content": w}), json!(null)),
        ));
    }
    out.extend_from_slice(&sse::encode_json(None, &chunk(json!({}), json!("stop"))));
    let usage = json!({"id": "chatcmpl-abcdefghijklmnopqrstuvwxyz12", "object": "chat.completion.chunk",
        "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18", "choices": [],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}});
    out.extend_from_slice(&sse::encode_json(None, &usage));
    out.extend_from_slice(&sse::encode_done());
    out
}

fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or_else(|| Duration::ZERO, Duration::from_nanos)
}

/// One stream relayed: decoded, (translated,) metered and re-encoded; returns bytes out.
fn relay(body: &[u8], native: bool) -> usize {
    let mut decoder = SseDecoder::new(1 << 20);
    let mut tracker = UsageTracker::new(Format::ChatCompletions);
    let mut gemini = native.then(|| GeminiStream::new("gemini-2.5-flash", 1_700_000_000));
    let mut out = 0;
    // Upstream bytes arrive in a few TCP reads.
    for piece in body.chunks(512) {
        for event in decoder.push(piece).unwrap_or_default() {
            let events = match gemini.as_mut() {
                Some(g) => g.push(&event).unwrap_or_default(),
                None => vec![event],
            };
            for e in events {
                tracker.observe(&e);
                out += sse::encode(e.event.as_deref(), &e.data).len();
            }
        }
    }
    if let Some(g) = gemini.as_mut() {
        for e in g.finish() {
            tracker.observe(&e);
            out += sse::encode(e.event.as_deref(), &e.data).len();
        }
    }
    assert_eq!(tracker.usage().map(|u| u.output_tokens), Some(8));
    out
}

fn main() {
    let (gemini, openai) = (gemini_body(), openai_body());
    let mut cpu = [Duration::ZERO; 2];
    let rounds = 20;
    let per_round = 2_000;
    for _ in 0..rounds {
        for (i, (body, native)) in [(&openai, false), (&gemini, true)].into_iter().enumerate() {
            let start = thread_cpu();
            let wall = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(relay(body, native));
            }
            let spent = thread_cpu().saturating_sub(start);
            cpu[i] += if spent.is_zero() {
                wall.elapsed()
            } else {
                spent
            };
        }
    }
    let n = (rounds * per_round) as f64;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
    println!("8-word stream, relayed and metered, CPU per stream (one thread, {n} streams each):");
    println!(
        "  OpenAI chat stream, passed through: {:.2} µs ({} bytes in)",
        us(cpu[0]),
        openai.len()
    );
    println!(
        "  Gemini stream, translated to chat:  {:.2} µs ({} bytes in)",
        us(cpu[1]),
        gemini.len()
    );
    println!(
        "  difference: {:+.2} µs ({:+.0} %)",
        us(cpu[1]) - us(cpu[0]),
        (us(cpu[1]) / us(cpu[0]) - 1.0) * 100.0
    );
}
