//! The estimate against input-token counts that providers reported in their public
//! documentation (fixtures in tests/fixtures/estimate, each naming its source), the tiktoken
//! encodings against the cookbook's published token counts, and the model → tokenizer table.

mod estimate_support;

use std::path::Path;

use serde_json::Value;
use tollgate_formats::estimate::{estimate_input, tokenizer_for, Family, Profile, Tokenizer};

fn fixtures() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/estimate");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture");
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, serde_json::from_str(&text).expect("fixture JSON"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 7, "the provider fixtures are missing");
    out
}

#[test]
fn the_estimate_is_never_below_what_the_provider_reported() {
    let mut checked = 0;
    for (name, fixture) in fixtures() {
        assert!(
            fixture["source"].as_str().is_some_and(|s| s.len() > 40),
            "{name}: source"
        );
        let format = estimate_support::format_named(fixture["format"].as_str().expect("format"));
        let body = serde_json::to_vec(&fixture["request"]).expect("body");
        let unbounded = fixture["unbounded"] == true;
        for (model, reported) in fixture["reported"].as_object().expect("reported") {
            let reported = reported.as_u64().expect("count");
            let profile = Profile::for_model(model);
            for profile in [profile, profile.with_bytes()] {
                let estimate = estimate_input(format, &body, &profile).expect("estimate");
                if unbounded {
                    assert!(
                        !estimate.is_bounded(),
                        "{name} {model}: a file must be reported"
                    );
                    assert!(estimate.files > 0, "{name} {model}");
                    continue;
                }
                assert!(estimate.is_bounded(), "{name} {model}: {estimate:?}");
                assert!(
                    estimate.tokens >= reported,
                    "{name} {model} ({:?}): estimate {} below the reported {reported}",
                    profile.tokenizer,
                    estimate.tokens
                );
                if profile.tokenizer != Tokenizer::Bytes {
                    let slack = fixture["tiktoken_slack"].as_u64().expect("slack");
                    assert!(
                        estimate.tokens <= reported + slack,
                        "{name} {model}: exact estimate {} is more than {slack} over {reported}",
                        estimate.tokens
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} reported counts checked");
}

#[test]
fn plain_chat_counts_match_the_cookbook_exactly_on_gpt_4o_and_gpt_4_0613() {
    let (_, fixture) = fixtures()
        .into_iter()
        .find(|(name, _)| name == "openai_cookbook_messages.json")
        .expect("fixture");
    let body = serde_json::to_vec(&fixture["request"]).expect("body");
    for (model, reported) in [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4-0613", 129)] {
        let estimate = estimate_input(
            tollgate_formats::Format::ChatCompletions,
            &body,
            &Profile::for_model(model),
        )
        .expect("estimate");
        assert_eq!(estimate.tokens, reported, "{model}");
    }
}

#[test]
fn tiktoken_counts_match_the_cookbook_examples() {
    // Section 5 of the cookbook notebook ("Comparing encodings") and section 3.
    let cases = [
        ("tiktoken is great!", Tokenizer::O200k, 6),
        ("antidisestablishmentarianism", Tokenizer::Cl100k, 6),
        ("antidisestablishmentarianism", Tokenizer::O200k, 6),
        ("2 + 2 = 4", Tokenizer::Cl100k, 7),
        ("2 + 2 = 4", Tokenizer::O200k, 7),
        ("お誕生日おめでとう", Tokenizer::Cl100k, 9),
        ("お誕生日おめでとう", Tokenizer::O200k, 8),
    ];
    for (text, tokenizer, expected) in cases {
        assert_eq!(tokenizer.count(text), expected, "{text} with {tokenizer:?}");
        assert_eq!(Tokenizer::Bytes.count(text), text.len() as u64);
        assert!(Tokenizer::Bytes.count(text) >= expected);
    }
}

#[test]
fn every_chat_role_is_one_token_so_the_message_allowance_holds_it() {
    for role in [
        "system",
        "user",
        "assistant",
        "developer",
        "tool",
        "function",
    ] {
        for tokenizer in [Tokenizer::O200k, Tokenizer::Cl100k] {
            assert_eq!(tokenizer.count(role), 1, "{role} in {tokenizer:?}");
        }
    }
}

#[test]
fn models_map_to_their_tokenizer_and_family() {
    let cases = [
        ("gpt-4o", Tokenizer::O200k, Family::OpenAi),
        ("gpt-4o-mini-2024-07-18", Tokenizer::O200k, Family::OpenAi),
        ("GPT-4.1-nano", Tokenizer::O200k, Family::OpenAi),
        ("gpt-5", Tokenizer::O200k, Family::OpenAi),
        ("gpt-5.2-codex", Tokenizer::O200k, Family::OpenAi),
        ("o3-mini", Tokenizer::O200k, Family::OpenAi),
        ("o4-mini", Tokenizer::O200k, Family::OpenAi),
        ("chatgpt-4o-latest", Tokenizer::O200k, Family::OpenAi),
        ("openai/gpt-4o-mini", Tokenizer::O200k, Family::OpenAi),
        (
            "ft:gpt-4o-mini-2024-07-18:acme::abc123",
            Tokenizer::O200k,
            Family::OpenAi,
        ),
        ("gpt-4", Tokenizer::Cl100k, Family::OpenAi),
        ("gpt-4-turbo", Tokenizer::Cl100k, Family::OpenAi),
        ("gpt-3.5-turbo", Tokenizer::Cl100k, Family::OpenAi),
        ("text-embedding-3-small", Tokenizer::Cl100k, Family::OpenAi),
        ("text-embedding-ada-002", Tokenizer::Cl100k, Family::OpenAi),
        ("gpt-oss-120b", Tokenizer::O200k, Family::Other),
        ("claude-sonnet-4-5", Tokenizer::Bytes, Family::Anthropic),
        (
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            Tokenizer::Bytes,
            Family::Anthropic,
        ),
        (
            "meta-llama/Llama-3.1-8B-Instruct",
            Tokenizer::Bytes,
            Family::Other,
        ),
        ("qwen2.5-72b-instruct", Tokenizer::Bytes, Family::Other),
        ("omni-moderation-latest", Tokenizer::Bytes, Family::Other),
    ];
    for (model, tokenizer, family) in cases {
        let profile = Profile::for_model(model);
        assert_eq!(tokenizer_for(model), tokenizer, "{model}");
        assert_eq!(
            (profile.tokenizer, profile.family),
            (tokenizer, family),
            "{model}"
        );
        assert!(
            family.allowances().per_message >= 4,
            "{model}: below the fake's 4"
        );
    }
}

#[test]
fn per_image_bounds_follow_the_documented_maxima() {
    let cases = [
        ("gpt-4o", Some(1_445)),
        ("gpt-4o-mini", Some(48_169)),
        ("gpt-4.1", Some(1_536)),
        ("gpt-4.1-mini", Some(2_489)),
        ("gpt-4.1-nano", Some(3_779)),
        ("gpt-5", Some(1_536)),
        ("gpt-5-mini", Some(2_489)),
        ("o1", Some(1_275)),
        ("o4-mini", Some(2_642)),
        ("claude-sonnet-4-5", Some(1_600)),
        ("claude-3-5-haiku-20241022", Some(1_600)),
        ("claude-opus-4-7", Some(5_000)),
        ("llava-v1.6", None),
    ];
    for (model, expected) in cases {
        assert_eq!(Profile::for_model(model).image_tokens, expected, "{model}");
    }
}
