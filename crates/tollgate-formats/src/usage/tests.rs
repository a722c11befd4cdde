use super::*;
use serde_json::json;

fn event(name: Option<&str>, data: Value) -> SseEvent {
    SseEvent {
        event: name.map(str::to_owned),
        data: data.to_string(),
    }
}

#[test]
fn a_legacy_completions_stream_is_tracked_with_its_text() {
    let mut tracker = UsageTracker::new(Format::ChatCompletions);
    for text in ["Hello", " wor", "ld"] {
        tracker.observe(&event(
            None,
            json!({"id": "cmpl-1", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
                   "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": null}]}),
        ));
    }
    assert!(!tracker.has_final_usage());
    assert_eq!(tracker.text_bytes(), 11);
    tracker.observe(&event(
        None,
        json!({"id": "cmpl-1", "object": "text_completion", "choices": [],
               "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}),
    ));
    assert!(tracker.has_final_usage());
    assert_eq!(
        tracker.usage().map(|u| (u.input_tokens, u.output_tokens)),
        Some((5, 3))
    );
}

#[test]
fn chat_response_usage_with_cache() {
    let response = json!({"usage": {"prompt_tokens": 1000, "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 6}}});
    assert_eq!(
        from_chat_response(&response),
        Some(Usage {
            input_tokens: 1000,
            cached_input_tokens: 300,
            cache_write_tokens: 200,
            output_tokens: 10,
            reasoning_tokens: 6,
        })
    );
    assert_eq!(from_chat_response(&json!({"usage": null})), None);
}

#[test]
fn anthropic_input_includes_cache_parts() {
    let message = json!({"usage": {"input_tokens": 15, "cache_creation_input_tokens": 13,
        "cache_read_input_tokens": 12, "output_tokens": 21}});
    let usage = from_anthropic_response(&message).expect("usage");
    assert_eq!(usage.input_tokens, 40);
    assert_eq!(usage.cached_input_tokens, 12);
    assert_eq!(usage.cache_write_tokens, 13);
    assert_eq!(usage.output_tokens, 21);
    assert_eq!(usage.uncached_input_tokens(), 15);
}

#[test]
fn responses_and_embeddings_usage() {
    let response = json!({"usage": {"input_tokens": 30, "output_tokens": 5,
        "input_tokens_details": {"cached_tokens": 4}}});
    let usage = from_responses_response(&response).expect("usage");
    assert_eq!((usage.input_tokens, usage.cached_input_tokens), (30, 4));
    let embeddings = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
    assert_eq!(
        from_embeddings_response(&embeddings).map(|u| u.input_tokens),
        Some(8)
    );
}

#[test]
fn hostile_counts_read_as_zero() {
    let response = json!({"usage": {"prompt_tokens": -5, "completion_tokens": "many",
        "prompt_tokens_details": null}});
    assert_eq!(from_chat_response(&response), Some(Usage::default()));
    let float = json!({"usage": {"prompt_tokens": 12.0}});
    assert_eq!(from_chat_response(&float).map(|u| u.input_tokens), Some(12));
}

#[test]
fn chat_tracker_reads_last_chunk() {
    let mut tracker = UsageTracker::new(Format::ChatCompletions);
    tracker.observe(&event(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}),
    ));
    tracker.observe(&event(
        None,
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
            "function": {"arguments": "{\"a\""}}]}}], "usage": null}),
    ));
    assert_eq!(tracker.usage(), None);
    assert_eq!(tracker.output_tokens_seen_so_far(), 2);
    assert_eq!(tracker.usage_or_estimate().output_tokens, 2);
    tracker.observe(&event(
        None,
        json!({"choices": [], "usage": {"prompt_tokens": 18, "completion_tokens": 286}}),
    ));
    tracker.observe(&SseEvent {
        event: None,
        data: "[DONE]".into(),
    });
    assert!(tracker.has_final_usage());
    assert_eq!(tracker.usage().map(|u| u.output_tokens), Some(286));
}

#[test]
fn responses_tracker_reads_terminal_event() {
    let mut tracker = UsageTracker::new(Format::Responses);
    tracker.observe(&event(
        Some("response.output_text.delta"),
        json!({"type": "response.output_text.delta", "delta": "Hello"}),
    ));
    tracker.observe(&event(
        Some("response.incomplete"),
        json!({"type": "response.incomplete", "response": {"usage": {"input_tokens": 12,
            "output_tokens": 8, "input_tokens_details": {"cached_tokens": 2},
            "output_tokens_details": {"reasoning_tokens": 5}}}}),
    ));
    assert_eq!(tracker.output_tokens_seen_so_far(), 1);
    assert_eq!(
        tracker.usage(),
        Some(Usage {
            input_tokens: 12,
            cached_input_tokens: 2,
            cache_write_tokens: 0,
            output_tokens: 8,
            reasoning_tokens: 5,
        })
    );
}

#[test]
fn anthropic_tracker_takes_latest_values() {
    let mut tracker = UsageTracker::new(Format::AnthropicMessages);
    tracker.observe(&event(
        Some("message_start"),
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 15,
            "cache_read_input_tokens": 100, "output_tokens": 1}}}),
    ));
    assert_eq!(tracker.usage().map(|u| u.input_tokens), Some(115));
    assert!(!tracker.has_final_usage());
    for _ in 0..3 {
        tracker.observe(&event(
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "x"}}),
        ));
    }
    assert_eq!(tracker.usage_or_estimate().output_tokens, 3);
    tracker.observe(&event(
        Some("message_delta"),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 21}}),
    ));
    assert_eq!(
        tracker.usage(),
        Some(Usage {
            input_tokens: 115,
            cached_input_tokens: 100,
            cache_write_tokens: 0,
            output_tokens: 21,
            reasoning_tokens: 0,
        })
    );
    assert!(tracker.has_final_usage());
}

#[test]
fn usage_only_chunk_detection() {
    assert!(is_usage_only_chunk(
        &json!({"choices": [], "usage": {"prompt_tokens": 1}})
    ));
    assert!(!is_usage_only_chunk(&json!({"choices": [], "usage": null})));
    assert!(!is_usage_only_chunk(
        &json!({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1}})
    ));
    assert!(is_usage_only_chunk_data(
        r#"{"choices":[],"usage":{"prompt_tokens":1}}"#
    ));
    assert!(!is_usage_only_chunk_data("[DONE]"));
}

#[test]
fn strip_usage_keeps_order_and_bytes() {
    let data = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a \"usage\""}}],"usage":null,"obfuscation":"x"}"#;
    assert_eq!(
        strip_usage_field(data),
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a \"usage\""}}],"obfuscation":"x"}"#
    );
    let untouched = r#"{"id":"c","choices":[{"delta":{"content":"\"usage\""}}]}"#;
    assert!(matches!(strip_usage_field(untouched), Cow::Borrowed(_)));
    assert!(matches!(
        strip_usage_field("not json \"usage\""),
        Cow::Borrowed(_)
    ));
    assert_eq!(strip_usage_field(r#"{"usage":null}"#), "{}");
}

#[test]
fn ensure_usage_sets_the_option_and_reports_the_clients_wish() {
    let mut request = json!({"stream": true, "stream_options": {"include_obfuscation": false}});
    assert!(!ensure_chat_stream_usage(&mut request));
    assert_eq!(
        request["stream_options"],
        json!({"include_obfuscation": false, "include_usage": true})
    );
    let mut asked = json!({"stream": true, "stream_options": {"include_usage": true}});
    assert!(ensure_chat_stream_usage(&mut asked));
    let mut not_streaming = json!({"stream": false});
    assert!(!ensure_chat_stream_usage(&mut not_streaming));
    assert_eq!(not_streaming, json!({"stream": false}));
}
