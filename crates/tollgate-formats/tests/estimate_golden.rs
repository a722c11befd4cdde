//! Every request body in the conversion golden fixtures (tests/golden/*/*/request.*.json, each
//! in its own format): the estimate is at least the fake upstream's count of the same body and
//! at least the o200k and cl100k token counts of its message texts, for every kind of profile.

mod estimate_support;

use std::path::Path;

use serde_json::Value;
use tollgate_formats::estimate::{estimate_input, Profile, Tokenizer};
use tollgate_formats::Format;

/// The format of `request.in.json` and `request.out.json` in each direction's directory.
fn formats(direction: &str) -> (Format, Format) {
    match direction {
        "chat_to_messages" => (Format::ChatCompletions, Format::AnthropicMessages),
        "messages_to_chat" => (Format::AnthropicMessages, Format::ChatCompletions),
        "responses_to_chat" => (Format::Responses, Format::ChatCompletions),
        "responses_to_messages" => (Format::Responses, Format::AnthropicMessages),
        other => panic!("unknown golden direction {other}: add it here"),
    }
}

fn bodies() -> Vec<(String, Format, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut out = Vec::new();
    for direction in std::fs::read_dir(&root).expect("golden") {
        let direction = direction.expect("entry").path();
        if !direction.is_dir() {
            continue;
        }
        let name = direction
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let (client, upstream) = formats(&name);
        for case in std::fs::read_dir(&direction).expect("cases") {
            let case = case.expect("entry").path();
            for (file, format) in [("request.in.json", client), ("request.out.json", upstream)] {
                let path = case.join(file);
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let body = serde_json::from_str(&text).expect("JSON");
                    out.push((path.display().to_string(), format, body));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn profiles() -> Vec<Profile> {
    [
        "gpt-4o",
        "gpt-4-0613",
        "claude-sonnet-4-5",
        "qwen2.5-7b-instruct",
    ]
    .into_iter()
    .map(Profile::for_model)
    .flat_map(|p| [p, p.with_bytes()])
    .collect()
}

#[test]
fn the_estimate_bounds_the_fake_upstream_and_the_tokenizers_on_every_golden_request() {
    let bodies = bodies();
    assert!(
        bodies.len() >= 40,
        "only {} golden requests found",
        bodies.len()
    );
    for (path, format, body) in &bodies {
        let bytes = serde_json::to_vec(body).expect("bytes");
        let fake = estimate_support::fake_input_tokens(*format, body);
        let texts = estimate_support::message_texts(*format, body);
        let o200k: u64 = texts.iter().map(|t| Tokenizer::O200k.count(t)).sum();
        let cl100k: u64 = texts.iter().map(|t| Tokenizer::Cl100k.count(t)).sum();
        assert!(fake > 0, "{path}: the fake counts nothing");
        for profile in profiles() {
            let estimate = estimate_input(*format, &bytes, &profile).expect(path);
            let at_least = fake.max(o200k).max(cl100k);
            assert!(
                estimate.tokens >= at_least,
                "{path} with {profile:?}: {} < fake {fake}, o200k {o200k}, cl100k {cl100k}",
                estimate.tokens
            );
            // Tight: the cheap bound never reserves more than the JSON's bytes would (for
            // bodies without images, whose bound is not in the body).
            if estimate.images == 0 && profile.family.allowances().per_request == 0 {
                assert!(
                    estimate.tokens <= bytes.len() as u64 + 1_100,
                    "{path} with {profile:?}: {} for {} bytes",
                    estimate.tokens,
                    bytes.len()
                );
            }
        }
    }
}

#[test]
fn the_same_body_pretty_printed_or_compact_gets_the_same_estimate() {
    for (path, format, body) in bodies() {
        let compact = serde_json::to_vec(&body).expect("compact");
        let pretty = serde_json::to_vec_pretty(&body).expect("pretty");
        for profile in profiles() {
            let a = estimate_input(format, &compact, &profile).expect(&path);
            let b = estimate_input(format, &pretty, &profile).expect(&path);
            assert_eq!(a, b, "{path} with {profile:?}");
        }
    }
}
