//! Measures what a native stream costs the gateway beyond a passed-through one, in
//! process: a Gemini `streamGenerateContent?alt=sse` stream of 8 words (decoded, read as
//! Chat Completions chunks by `GeminiStream`, metered, re-encoded) and a Bedrock
//! `ConverseStream` of 8 words (AWS event-stream messages, CRCs checked, read by
//! `ConverseStream`) against an OpenAI chat stream of 8 words with its usage chunk
//! (decoded, metered, re-encoded), CPU per stream, all on one thread, alternating. The
//! gateway path around them (HTTP, reservation, ledger) is the same for all.
//!
//! `cargo run --release -p tollgate-formats --example native_stream_bench`
//!
//! It also compares Claude's Messages stream passed through from Anthropic (SSE) with the
//! same stream from Bedrock's InvokeModelWithResponseStream (event-stream chunks, unwrapped).
//!
//! With an argument (`openai`, `gemini`, `bedrock`, `anthropic` or `invoke`) and a count, it relays only that
//! kind's stream that many times, for an instruction count under
//! `valgrind --tool=callgrind` (noise-free ratios):
//! `valgrind --tool=callgrind target/release/examples/native_stream_bench bedrock 1000`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_formats::conversion::bedrock::stream::ConverseStream;
use tollgate_formats::conversion::gemini::stream::GeminiStream;
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::eventstream::{self, EventStreamDecoder, StreamDecoder};
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

/// A ConverseStream of 8 words as Bedrock frames it (with its `p` padding).
fn bedrock_body() -> Vec<u8> {
    let frame = |name: &str, payload: serde_json::Value| {
        eventstream::encode(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        )
    };
    let mut out = frame(
        "messageStart",
        json!({"role": "assistant", "p": "abcdefgh"}),
    );
    for w in WORDS {
        out.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": w}, "p": "abcdefghijklmnop"}),
        ));
    }
    out.extend(frame(
        "contentBlockStop",
        json!({"contentBlockIndex": 0, "p": "abcd"}),
    ));
    out.extend(frame(
        "messageStop",
        json!({"stopReason": "end_turn", "p": "abcdefgh"}),
    ));
    out.extend(frame(
        "metadata",
        json!({"usage": {"inputTokens": 20, "outputTokens": 8, "totalTokens": 28},
            "metrics": {"latencyMs": 300}, "p": "abcdefghijkl"}),
    ));
    out
}

/// Claude's Messages stream of 8 words: as Anthropic sends it (SSE) and as Bedrock's
/// InvokeModelWithResponseStream wraps it (event-stream `chunk`s of base64 events).
fn claude_events() -> Vec<serde_json::Value> {
    let mut out = vec![
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ];
    for w in WORDS {
        out.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}));
    }
    out.push(json!({"type": "content_block_stop", "index": 0}));
    out.push(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": 8}}),
    );
    out.push(json!({"type": "message_stop"}));
    out
}

fn anthropic_body() -> Vec<u8> {
    let mut out = Vec::new();
    for e in claude_events() {
        let name = e["type"].as_str().unwrap_or("").to_string();
        out.extend_from_slice(&sse::encode_json(Some(&name), &e));
    }
    out
}

fn invoke_body() -> Vec<u8> {
    use base64::Engine;
    let mut out = Vec::new();
    for e in claude_events() {
        let bytes = base64::engine::general_purpose::STANDARD.encode(e.to_string());
        out.extend(eventstream::encode(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            json!({"bytes": bytes, "p": "abcdefgh"})
                .to_string()
                .as_bytes(),
        ));
    }
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

/// The kinds of stream compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    Gemini,
    Bedrock,
    /// Claude's own stream from Anthropic, passed through.
    Anthropic,
    /// Claude's stream from Bedrock's InvokeModel, unwrapped and passed through.
    Invoke,
}

/// One stream relayed: decoded, (translated,) metered and re-encoded; returns bytes out.
fn relay(body: &[u8], kind: Kind) -> usize {
    let mut decoder = match kind {
        Kind::Bedrock | Kind::Invoke => {
            StreamDecoder::EventStream(EventStreamDecoder::new(1 << 20))
        }
        _ => StreamDecoder::Sse(SseDecoder::new(1 << 20)),
    };
    let mut tracker = UsageTracker::new(match kind {
        Kind::Anthropic | Kind::Invoke => Format::AnthropicMessages,
        _ => Format::ChatCompletions,
    });
    let mut native: Option<Box<dyn NativeStream>> = match kind {
        Kind::OpenAi | Kind::Anthropic | Kind::Invoke => None,
        Kind::Gemini => Some(Box::new(GeminiStream::new(
            "gemini-2.5-flash",
            1_700_000_000,
        ))),
        Kind::Bedrock => Some(Box::new(ConverseStream::new(
            "amazon.nova-pro-v1:0",
            1_700_000_000,
        ))),
    };
    let mut out = 0;
    // Upstream bytes arrive in a few TCP reads.
    for piece in body.chunks(512) {
        for event in decoder.push(piece).unwrap_or_default() {
            let events = match native.as_mut() {
                Some(n) => n.push(&event).unwrap_or_default(),
                None => vec![event],
            };
            for e in events {
                tracker.observe(&e);
                out += sse::encode(e.event.as_deref(), &e.data).len();
            }
        }
    }
    if let Some(n) = native.as_mut() {
        for e in n.finish() {
            tracker.observe(&e);
            out += sse::encode(e.event.as_deref(), &e.data).len();
        }
    }
    assert_eq!(tracker.usage().map(|u| u.output_tokens), Some(8));
    out
}

fn main() {
    let (gemini, openai, bedrock) = (gemini_body(), openai_body(), bedrock_body());
    let (anthropic, invoke) = (anthropic_body(), invoke_body());
    let mut args = std::env::args().skip(1);
    if let Some(kind) = args.next() {
        let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
        let (body, kind) = match kind.as_str() {
            "gemini" => (&gemini, Kind::Gemini),
            "bedrock" => (&bedrock, Kind::Bedrock),
            "anthropic" => (&anthropic, Kind::Anthropic),
            "invoke" => (&invoke, Kind::Invoke),
            _ => (&openai, Kind::OpenAi),
        };
        for _ in 0..n {
            std::hint::black_box(relay(body, kind));
        }
        return;
    }
    let mut cpu = [Duration::ZERO; 5];
    let rounds = 20;
    let per_round = 2_000;
    let kinds = [
        (&openai, Kind::OpenAi),
        (&gemini, Kind::Gemini),
        (&bedrock, Kind::Bedrock),
        (&anthropic, Kind::Anthropic),
        (&invoke, Kind::Invoke),
    ];
    for _ in 0..rounds {
        for (i, (body, kind)) in kinds.into_iter().enumerate() {
            let start = thread_cpu();
            let wall = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(relay(body, kind));
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
        "  Bedrock ConverseStream, translated: {:.2} µs ({} bytes in)",
        us(cpu[2]),
        bedrock.len()
    );
    println!(
        "  Claude from Anthropic, passed through: {:.2} µs ({} bytes in)",
        us(cpu[3]),
        anthropic.len()
    );
    println!(
        "  Claude from Bedrock InvokeModel:      {:.2} µs ({} bytes in), {:+.0} % vs Anthropic",
        us(cpu[4]),
        invoke.len(),
        (us(cpu[4]) / us(cpu[3]) - 1.0) * 100.0
    );
    for (name, i) in [("Gemini", 1), ("Bedrock", 2)] {
        println!(
            "  {name} difference: {:+.2} µs ({:+.0} %)",
            us(cpu[i]) - us(cpu[0]),
            (us(cpu[i]) / us(cpu[0]) - 1.0) * 100.0
        );
    }
}
