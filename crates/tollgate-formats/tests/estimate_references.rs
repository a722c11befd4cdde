//! What a body refers to but does not contain is reported, and nothing else is: stored
//! responses, conversations and prompts, files by id, URL or inline data, images (bounded per
//! image), encrypted content, signed thinking of the current turn, hosted tools. Also the
//! embeddings and moderation inputs, the local count_tokens answer, and hostile bodies.

use serde_json::{json, Value};
use tollgate_formats::estimate::{
    count_tokens_upper_bound, estimate_embeddings_input, estimate_input, estimate_moderation_input,
    EstimateError, InputEstimate, Profile,
};
use tollgate_formats::Format;

fn estimate(format: Format, body: Value, model: &str) -> InputEstimate {
    let bytes = serde_json::to_vec(&body).expect("bytes");
    estimate_input(format, &bytes, &Profile::for_model(model)).expect("estimate")
}

fn responses(body: Value) -> InputEstimate {
    estimate(Format::Responses, body, "gpt-4o")
}

#[test]
fn stored_state_of_the_responses_api_is_reported() {
    for (field, value, name) in [
        (
            "previous_response_id",
            json!("resp_123"),
            "previous_response_id",
        ),
        ("conversation", json!("conv_123"), "conversation"),
        ("conversation", json!({"id": "conv_123"}), "conversation"),
        ("prompt", json!({"id": "pmpt_1", "version": "2"}), "prompt"),
    ] {
        let mut body = json!({"model": "gpt-4o", "input": "hello"});
        body[field] = value;
        let e = responses(body);
        assert_eq!(e.references, vec![name], "{field}");
        assert!(!e.is_bounded());
        // The text the body does contain is still counted: "hello" (1) + 4 + 3.
        assert!(e.tokens >= 8, "{field}: {e:?}");
    }
    // null means absent.
    let e = responses(json!({"model": "gpt-4o", "input": "hello",
        "previous_response_id": null, "conversation": null, "prompt": null}));
    assert!(e.is_bounded(), "{e:?}");
    assert_eq!(e.tokens, 8);
}

#[test]
fn a_stored_prompt_s_variables_are_counted() {
    let long = "word ".repeat(200);
    let e = responses(json!({"model": "gpt-4o",
        "prompt": {"id": "pmpt_1", "variables": {"city": long}}}));
    assert_eq!(e.references, vec!["prompt"]);
    assert!(e.tokens >= 200, "{e:?}");
}

#[test]
fn files_are_counted_and_named_by_how_they_are_given() {
    let cases = [
        (
            json!({"type": "input_file", "file_id": "file-abc"}),
            "file_id",
        ),
        (
            json!({"type": "input_file", "file_url": "https://example.com/a.pdf"}),
            "file_url",
        ),
        (
            json!({"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}),
            "file_data",
        ),
    ];
    for (part, name) in cases {
        let e = responses(json!({"model": "gpt-4o", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "summarize"}, part]}]}));
        assert_eq!((e.files, e.references.clone()), (1, vec![name]), "{name}");
        assert_eq!(e.images, 0);
    }
    // Chat Completions file parts.
    for (file, name) in [
        (json!({"file_id": "file-abc"}), "file_id"),
        (
            json!({"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}),
            "file_data",
        ),
    ] {
        let e = estimate(
            Format::ChatCompletions,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "summarize"}, {"type": "file", "file": file}]}]}),
            "gpt-4o",
        );
        assert_eq!((e.files, e.references.clone()), (1, vec![name]), "{name}");
    }
}

#[test]
fn anthropic_documents_are_files_unless_given_as_text() {
    let doc = |source: Value| {
        estimate(
            Format::AnthropicMessages,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user",
                "content": [{"source": source, "type": "document"}, {"type": "text", "text": "?"}]}]}),
            "claude-sonnet-4-5",
        )
    };
    let pdf =
        doc(json!({"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="}));
    assert_eq!((pdf.files, pdf.references), (1, vec!["file_data"]));
    let url = doc(json!({"type": "url", "url": "https://example.com/a.pdf"}));
    assert_eq!((url.files, url.references), (1, vec!["file_url"]));
    let file = doc(json!({"type": "file", "file_id": "file_011"}));
    assert_eq!((file.files, file.references), (1, vec!["file_id"]));
    // Inline text: counted as text, whatever the member order, escapes unescaped.
    let text = "The grass is green.\nThe sky is blue. ".repeat(50);
    let plain = doc(json!({"data": text, "media_type": "text/plain", "type": "text"}));
    assert!(plain.is_bounded(), "{plain:?}");
    assert_eq!(plain.tokens, text.len() as u64 + 1 + 4 + 3);
}

#[test]
fn images_are_bounded_per_image_whatever_their_source() {
    let b64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==".repeat(100);
    let chat = |url: String| {
        estimate(
            Format::ChatCompletions,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is it"},
                {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}]}),
            "gpt-4o",
        )
    };
    let inline = chat(format!("data:image/png;base64,{b64}"));
    let remote = chat("https://example.com/cat.png".to_owned());
    for e in [&inline, &remote] {
        assert_eq!(e.images, 1);
        assert!(e.is_bounded(), "{e:?}");
        // 3 text tokens + 1,445 for the image + 4 + 3: the base64 is not counted as text.
        assert_eq!(e.tokens, 3 + 1_445 + 4 + 3);
    }
    let responses_image = responses(json!({"model": "gpt-4o", "input": [{"role": "user",
        "content": [{"type": "input_image", "file_id": "file-img"}]}]}));
    assert_eq!((responses_image.images, responses_image.files), (1, 0));
    assert!(responses_image.is_bounded());
    let claude = estimate(
        Format::AnthropicMessages,
        json!({"model": "claude-opus-4-7", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}),
        "claude-opus-4-7",
    );
    assert_eq!(claude.images, 2);
    assert_eq!(claude.tokens, 2 * 5_000 + 4 + 3);
    // No documented bound for an unknown model: the image is a reference.
    let unknown = estimate(
        Format::ChatCompletions,
        json!({"model": "llava", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
        "llava",
    );
    assert_eq!((unknown.images, unknown.references), (1, vec!["image"]));
}

#[test]
fn encrypted_and_referenced_items_are_reported() {
    let e = responses(json!({"model": "gpt-4o", "input": [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thought"}],
         "encrypted_content": "gAAAAB..."},
        {"type": "item_reference", "id": "msg_1"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"}]}));
    assert_eq!(e.references, vec!["encrypted_content", "item_reference"]);
    let plain = responses(json!({"model": "gpt-4o", "input": [
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"}]}));
    assert!(plain.is_bounded());
    // 2 items × 4, call 10, name "lookup" (1) + args, result 8 + the name again, output, reply 3.
    assert!(plain.tokens >= 2 * 4 + 10 + 8 + 3 + 2, "{plain:?}");
}

#[test]
fn signed_thinking_is_a_reference_only_in_the_current_turn() {
    let thinking = json!({"type": "thinking", "thinking": "let me think", "signature": "EuYB"});
    let call = json!({"type": "tool_use", "id": "t1", "name": "calc", "input": {"x": 1}});
    let result = json!({"type": "tool_result", "tool_use_id": "t1", "content": "2"});
    let body = |messages: Value| {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 5,
        "thinking": {"type": "enabled", "budget_tokens": 2000}, "messages": messages})
    };
    // In a tool loop: the thinking belongs to the turn being continued.
    let current = estimate(
        Format::AnthropicMessages,
        body(json!([{"role": "user", "content": "compute"},
            {"role": "assistant", "content": [thinking, call]},
            {"role": "user", "content": [result]}])),
        "claude-sonnet-4-5",
    );
    assert_eq!(current.references, vec!["thinking_signature"]);
    // After a new user message: an earlier turn, ignored by the API.
    let earlier = estimate(
        Format::AnthropicMessages,
        body(json!([{"role": "user", "content": "compute"},
            {"role": "assistant", "content": [thinking, call]},
            {"role": "user", "content": [result, {"type": "text", "text": "and now?"}]}])),
        "claude-sonnet-4-5",
    );
    assert!(earlier.is_bounded(), "{earlier:?}");
    let redacted = estimate(
        Format::AnthropicMessages,
        body(json!([{"role": "user", "content": "compute"},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "EmwKAhgB"}, call]},
            {"role": "user", "content": [result]}])),
        "claude-sonnet-4-5",
    );
    assert_eq!(redacted.references, vec!["thinking_signature"]);
}

#[test]
fn hosted_tools_are_references_and_builtin_tools_cost_their_allowance() {
    let hosted = responses(json!({"model": "gpt-4o", "input": "hi",
        "tools": [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
                  {"type": "mcp", "server_label": "x", "server_url": "https://x"}]}));
    assert_eq!(hosted.references, vec!["web_search", "file_search", "mcp"]);
    let anthropic = estimate(
        Format::AnthropicMessages,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
            "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}),
        "claude-sonnet-4-5",
    );
    assert_eq!(anthropic.references, vec!["web_search", "mcp_servers"]);
    let bash = estimate(
        Format::AnthropicMessages,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "bash_20250124", "name": "bash"}]}),
        "claude-sonnet-4-5",
    );
    assert!(bash.is_bounded());
    assert!(bash.tokens >= 1_000 + 1_500, "{bash:?}");
}

#[test]
fn hi_reserves_a_handful_of_tokens_not_the_body_s_bytes() {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]});
    let bytes = serde_json::to_vec(&body).expect("bytes");
    let cheap = estimate_input(
        Format::ChatCompletions,
        &bytes,
        &Profile::for_model("gpt-4o-mini").with_bytes(),
    )
    .expect("estimate");
    assert_eq!(cheap.tokens, 2 + 4 + 3);
    assert!(cheap.tokens * 5 < bytes.len() as u64);
}

#[test]
fn embeddings_inputs_of_every_shape() {
    let profile = Profile::for_model("text-embedding-3-small");
    let e = |input: Value| {
        let body = serde_json::to_vec(&json!({"model": "text-embedding-3-small", "input": input}))
            .expect("bytes");
        estimate_embeddings_input(&body, &profile)
            .expect("estimate")
            .tokens
    };
    assert_eq!(e(json!("tiktoken is great!")), 6);
    assert_eq!(e(json!(["tiktoken is great!", "hi", ""])), 6 + 1 + 1);
    assert_eq!(e(json!([1, 2, 3, 4])), 4);
    assert_eq!(e(json!([[1, 2], [3, 4, 5]])), 5);
    let other = Profile::for_model("bge-m3");
    let body = serde_json::to_vec(&json!({"input": ["abc", "de"]})).expect("bytes");
    assert_eq!(
        estimate_embeddings_input(&body, &other)
            .expect("estimate")
            .tokens,
        3 + 4 + 2 + 4
    );
}

#[test]
fn moderation_inputs_count_text_and_images() {
    let profile = Profile::for_model("gpt-4o");
    let body = serde_json::to_vec(&json!({"model": "omni-moderation-latest", "input": [
        {"type": "text", "text": "tiktoken is great!"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}))
    .expect("bytes");
    let e = estimate_moderation_input(&body, &profile).expect("estimate");
    assert_eq!((e.tokens, e.images), (6 + 1_445, 1));
    let body = serde_json::to_vec(&json!({"input": ["a b", "c"]})).expect("bytes");
    assert_eq!(
        estimate_moderation_input(&body, &profile)
            .expect("estimate")
            .tokens,
        3
    );
}

#[test]
fn count_tokens_answers_locally_or_names_what_it_cannot_count() {
    let profile = Profile::for_model("gpt-4o");
    let body = serde_json::to_vec(&json!({"model": "gpt-4o", "system": "You are a scientist",
        "messages": [{"role": "user", "content": "Hello, Claude"}]}))
    .expect("bytes");
    let system = 4 + profile.tokenizer.count("You are a scientist");
    let user = 4 + profile.tokenizer.count("Hello, Claude");
    assert_eq!(
        count_tokens_upper_bound(&body, &profile).expect("count"),
        system + user + 3
    );
    let with_pdf = serde_json::to_vec(&json!({"model": "gpt-4o", "messages": [{"role": "user",
        "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]}))
    .expect("bytes");
    assert!(matches!(
        count_tokens_upper_bound(&with_pdf, &profile),
        Err(EstimateError::Unbounded("file_url"))
    ));
}

#[test]
fn hostile_bodies_are_errors_not_panics() {
    let profile = Profile::for_model("gpt-4o");
    for body in [
        &b"not json"[..],
        b"[1, 2]",
        b"\"text\"",
        b"{\"messages\": [",
        b"{} trailing",
    ] {
        assert!(
            matches!(
                estimate_input(Format::ChatCompletions, body, &profile),
                Err(EstimateError::Json(_))
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let deep = format!(
        "{{\"messages\": [{{\"content\": {}1{}}}]}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(estimate_input(Format::ChatCompletions, deep.as_bytes(), &profile).is_err());
    // Odd shapes are counted, not refused: every string counts.
    let odd = serde_json::to_vec(&json!({"messages": [
        {"role": 7, "type": {"x": 1}, "content": {"text": "hello there", "weird": ["general kenobi"]}},
        "a bare string", 42, null]}))
    .expect("bytes");
    let e = estimate_input(Format::ChatCompletions, &odd, &profile).expect("estimate");
    let text = ["hello there", "general kenobi", "a bare string"]
        .iter()
        .map(|t| profile.tokenizer.count(t))
        .sum::<u64>();
    assert!(e.tokens >= text + 2 * 4, "{e:?}");
}
