//! Measures the input estimate: CPU per call for a 1 KB and a 100 KB chat prompt with the byte
//! bound and with tiktoken (o200k, cl100k), the BPE tables' load time and memory, and the
//! estimates against the provider-reported counts of the test fixtures.
//!
//! `cargo run --release -p tollgate-formats --example estimate_bench`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_formats::estimate::{estimate_input, Profile, Tokenizer};
use tollgate_formats::Format;

/// This thread's CPU time so far (Linux: /proc/thread-self/schedstat, nanoseconds on CPU).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Resident memory of the process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A chat body whose message text is about `text_bytes` long: a system prompt, then user and
/// assistant turns of English prose with some code and punctuation.
fn chat_body(text_bytes: usize) -> Vec<u8> {
    const PROSE: &str = "Tollgate reserves a request's worst-case cost before it calls the \
        provider, then settles the exact usage. When the budget is short, the request is \
        refused with a 402. ";
    const CODE: &str = "fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x); }\n";
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    let mut total = 0;
    let mut turn = 0;
    while total < text_bytes {
        let mut text = String::new();
        while text.len() < 400.min(text_bytes - total + 1) {
            text.push_str(if text.len() % 3 == 2 { CODE } else { PROSE });
        }
        total += text.len();
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": text}));
        turn += 1;
    }
    serde_json::to_vec(&json!({"model": "gpt-4o", "max_tokens": 256, "messages": messages}))
        .expect("body")
}

fn anthropic_body(chat: &[u8]) -> Vec<u8> {
    let chat: Value = serde_json::from_slice(chat).expect("chat");
    let messages: Vec<Value> = chat["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .skip(1)
        .map(|m| json!({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}))
        .collect();
    serde_json::to_vec(&json!({"model": "claude-sonnet-4-5", "max_tokens": 256,
        "system": chat["messages"][0]["content"], "messages": messages}))
    .expect("body")
}

/// Mean wall and thread-CPU time per call, over enough calls to last ~0.5 s.
fn measure(format: Format, body: &[u8], profile: &Profile) -> (u64, Duration, Duration) {
    let tokens = estimate_input(format, body, profile)
        .expect("estimate")
        .tokens;
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(100) {
        std::hint::black_box(estimate_input(format, std::hint::black_box(body), profile).ok());
        calls += 1;
    }
    let n = (calls * 5).max(3);
    let (wall, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..n {
        std::hint::black_box(estimate_input(format, std::hint::black_box(body), profile).ok());
    }
    (tokens, wall.elapsed() / n, (thread_cpu() - cpu) / n)
}

fn main() {
    println!("# BPE tables (first use, lazily loaded once)");
    for tokenizer in [Tokenizer::O200k, Tokenizer::Cl100k] {
        let (rss, wall, cpu) = (rss_kib(), Instant::now(), thread_cpu());
        tokenizer.warm_up();
        println!(
            "{tokenizer:?}: load {:?} wall, {:?} CPU, RSS +{} MiB",
            wall.elapsed(),
            thread_cpu() - cpu,
            (rss_kib().saturating_sub(rss)) / 1024
        );
    }
    println!("RSS with both tables: {} MiB", rss_kib() / 1024);

    println!("\n# CPU per estimate_input call (mean; thread CPU time and wall)");
    let gpt = Profile::for_model("gpt-4o");
    let gpt4 = Profile::for_model("gpt-4");
    let claude = Profile::for_model("claude-sonnet-4-5");
    for size in [1_024, 100 * 1_024] {
        let chat = chat_body(size);
        let messages = anthropic_body(&chat);
        let cases = [
            (
                "chat, bytes bound (gpt-4o)",
                Format::ChatCompletions,
                &chat,
                gpt.with_bytes(),
            ),
            (
                "messages, bytes (claude)",
                Format::AnthropicMessages,
                &messages,
                claude,
            ),
            ("chat, tiktoken o200k", Format::ChatCompletions, &chat, gpt),
            (
                "chat, tiktoken cl100k",
                Format::ChatCompletions,
                &chat,
                gpt4,
            ),
        ];
        for (label, format, body, profile) in cases {
            let (tokens, wall, cpu) = measure(format, body, &profile);
            println!(
                "{:>6} B body, {label:<28} {tokens:>7} tokens  {cpu:>10.2?} CPU  {wall:>10.2?} wall",
                body.len()
            );
        }
    }

    println!("\n# Fixtures: estimate (exact, bytes) against the provider-reported count");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/estimate");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for path in paths {
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let format = match fixture["format"].as_str() {
            Some("anthropic_messages") => Format::AnthropicMessages,
            Some("responses") => Format::Responses,
            _ => Format::ChatCompletions,
        };
        let body = serde_json::to_vec(&fixture["request"]).expect("body");
        for (model, reported) in fixture["reported"].as_object().expect("reported") {
            let profile = Profile::for_model(model);
            let exact = estimate_input(format, &body, &profile).expect("estimate");
            let cheap = estimate_input(format, &body, &profile.with_bytes()).expect("estimate");
            println!(
                "{:<38} {model:<20} reported {reported:>5}  exact {:>5}  bytes {:>5}{}",
                path.file_name().expect("name").to_string_lossy(),
                exact.tokens,
                cheap.tokens,
                if exact.is_bounded() {
                    ""
                } else {
                    "  (+ files/references)"
                }
            );
        }
    }
}
