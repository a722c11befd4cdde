//! Generated prompts in several scripts: the byte bound is at least the o200k and cl100k counts
//! of the same text plus OpenAI's per-message overhead (a stand-in for "some byte-level BPE
//! tokenizer"), the tiktoken estimate equals its own exact count by the cookbook's rules, and
//! both bound the fake upstream. JSON escapes never change the estimate.

mod estimate_support;

use proptest::prelude::*;
use serde_json::{json, Value};
use tollgate_formats::estimate::{estimate_input, Profile, Tokenizer};
use tollgate_formats::Format;

/// Text in one script: Latin, CJK, Cyrillic, Arabic, emoji, code, or any Unicode at all.
fn script_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z ,.!?'éèüñß]{0,200}",
        "[\\p{Han}\\p{Hiragana}\\p{Katakana}、。 ]{0,120}",
        "[\\p{Cyrillic} ,.]{0,160}",
        "[\\p{Arabic} ،.]{0,160}",
        "[😀-🙏🚀-🛿🤖👍🏽❤️‍🔥 ]{0,60}",
        "[a-z_(){}\\[\\];=+\\-*/<>\"'\\\\\n\t 0-9]{0,200}",
        "\\PC{0,120}",
        any::<String>().prop_map(|s| s.chars().take(120).collect()),
    ]
}

fn conversation() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![Just("system"), Just("user"), Just("assistant")],
            script_text(),
        )
            .prop_map(|(role, text)| (role.to_owned(), text)),
        1..5,
    )
}

fn chat_body(messages: &[(String, String)]) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(role, text)| json!({"role": role, "content": text}))
        .collect();
    json!({"model": "m", "messages": messages})
}

fn anthropic_body(messages: &[(String, String)]) -> Value {
    let system: Vec<&str> = messages
        .iter()
        .filter(|(role, _)| role == "system")
        .map(|(_, text)| text.as_str())
        .collect();
    let turns: Vec<Value> = messages
        .iter()
        .filter(|(role, _)| role != "system")
        .map(|(role, text)| json!({"role": role, "content": [{"type": "text", "text": text}]}))
        .collect();
    json!({"model": "m", "max_tokens": 10, "system": system.join("\n"), "messages": turns})
}

/// The cookbook's count: 3 per message + the role's tokens + the content's, 3 for the reply.
fn cookbook(tokenizer: Tokenizer, messages: &[(String, String)]) -> u64 {
    messages
        .iter()
        .map(|(role, text)| 3 + tokenizer.count(role) + tokenizer.count(text))
        .sum::<u64>()
        + 3
}

/// JSON text with every non-ASCII character and more written as `\uXXXX` escapes.
fn escaped_json(value: &Value) -> String {
    let compact = serde_json::to_string(value).expect("json");
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in compact.chars() {
        if in_string && !escaped && c != '"' && c != '\\' && (!c.is_ascii() || c == 'e') {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_byte_bound_covers_every_bpe_and_the_tiktoken_estimate_is_exact(
        messages in conversation()
    ) {
        let body = chat_body(&messages);
        let bytes = serde_json::to_vec(&body).expect("bytes");
        let fake = estimate_support::fake_input_tokens(Format::ChatCompletions, &body);
        let o200k = cookbook(Tokenizer::O200k, &messages);
        let cl100k = cookbook(Tokenizer::Cl100k, &messages);
        for model in ["gpt-4o", "gpt-4", "claude-sonnet-4-5", "mistral-large"] {
            let cheap = estimate_input(
                Format::ChatCompletions, &bytes, &Profile::for_model(model).with_bytes(),
            ).expect("estimate");
            prop_assert!(cheap.tokens >= o200k.max(cl100k).max(fake),
                "{model}: bytes bound {} < o200k {o200k} / cl100k {cl100k} / fake {fake}",
                cheap.tokens);
        }
        let exact = estimate_input(Format::ChatCompletions, &bytes, &Profile::for_model("gpt-4o"))
            .expect("estimate");
        prop_assert_eq!(exact.tokens, o200k);
        prop_assert!(exact.tokens >= fake);
        let exact = estimate_input(Format::ChatCompletions, &bytes, &Profile::for_model("gpt-4"))
            .expect("estimate");
        prop_assert_eq!(exact.tokens, cl100k);
        prop_assert!(exact.tokens >= fake);
    }

    #[test]
    fn anthropic_bodies_are_bounded_by_their_text_bytes(messages in conversation()) {
        let body = anthropic_body(&messages);
        let bytes = serde_json::to_vec(&body).expect("bytes");
        let fake = estimate_support::fake_input_tokens(Format::AnthropicMessages, &body);
        let texts = estimate_support::message_texts(Format::AnthropicMessages, &body);
        let text_bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
        let estimate = estimate_input(
            Format::AnthropicMessages, &bytes, &Profile::for_model("claude-sonnet-4-5"),
        ).expect("estimate");
        prop_assert!(estimate.tokens >= fake.max(text_bytes));
        for tokenizer in [Tokenizer::O200k, Tokenizer::Cl100k] {
            let bpe: u64 = texts.iter().map(|t| tokenizer.count(t)).sum();
            prop_assert!(estimate.tokens >= bpe);
        }
        // Text bytes plus allowances only: the JSON envelope is not counted.
        let turns = body["messages"].as_array().map_or(0, Vec::len) as u64;
        prop_assert_eq!(estimate.tokens, text_bytes + 4 * (turns + 1) + 3);
    }

    #[test]
    fn json_escapes_do_not_change_the_estimate(messages in conversation()) {
        let body = chat_body(&messages);
        let plain = serde_json::to_vec(&body).expect("bytes");
        let escaped = escaped_json(&body);
        prop_assert_eq!(serde_json::from_str::<Value>(&escaped).expect("valid"), body);
        for model in ["gpt-4o", "claude-sonnet-4-5", "mistral-large"] {
            let profile = Profile::for_model(model);
            let a = estimate_input(Format::ChatCompletions, &plain, &profile).expect("plain");
            let b = estimate_input(Format::ChatCompletions, escaped.as_bytes(), &profile)
                .expect("escaped");
            prop_assert_eq!(a, b);
        }
    }
}
