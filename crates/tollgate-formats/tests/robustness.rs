//! Hostile input: every public function must return (an error or a value), never panic, on
//! randomly shaped JSON built from the vocabulary of the formats, and on broken streams.

use serde_json::{json, Map, Value};
use tollgate_formats::conversion::{
    chat_to_messages, messages_to_chat, responses_to_chat, responses_to_messages, StreamConverter,
};
use tollgate_formats::sse::{SseDecoder, SseEvent};
use tollgate_formats::usage::{self, UsageTracker};
use tollgate_formats::Format;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "namespace",
    "encrypted_content",
    "reasoning",
    "thinking",
    "signature",
    "call_id",
    "output",
    "content_block",
    "delta",
    "partial_json",
    "reasoning_details",
    "output_config",
    "model",
    "messages",
    "system",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "source",
    "media_type",
    "data",
    "tool_calls",
    "tool_call_id",
    "tool_use_id",
    "id",
    "name",
    "function",
    "arguments",
    "input",
    "input_schema",
    "parameters",
    "tools",
    "tool_choice",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream",
    "stream_options",
    "include_usage",
    "stop",
    "stop_sequences",
    "temperature",
    "top_p",
    "metadata",
    "user_id",
    "user",
    "choices",
    "message",
    "delta",
    "index",
    "finish_reason",
    "stop_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "instructions",
    "call_id",
    "output",
    "refusal",
    "is_error",
    "disable_parallel_tool_use",
    "parallel_tool_calls",
    "content_block",
    "partial_json",
    "error",
    "response",
    "format",
    "reasoning",
    "effort",
    "thinking",
    "n",
    "include",
];

const STRINGS: &[&str] = &[
    "namespace",
    "custom",
    "web_search",
    "reasoning",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_start",
    "message_delta",
    "thinking_delta",
    "input_json_delta",
    "tollgate.anthropic.v1:{\"thinking\":\"a\",\"signature\":\"b\"}",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "text",
    "image",
    "image_url",
    "tool_use",
    "tool_result",
    "function",
    "function_call",
    "function_call_output",
    "message",
    "input_text",
    "output_text",
    "input_image",
    "auto",
    "any",
    "none",
    "required",
    "base64",
    "data:image/png;base64,AAAA",
    "https://example.com/a.png",
    "stop",
    "length",
    "tool_calls",
    "end_turn",
    "max_tokens",
    "{\"a\":1}",
    "{\"a\":",
    "",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "text_delta",
    "input_json_delta",
    "message_delta",
    "message_stop",
    "disabled",
    "json_schema",
    "reasoning",
    "[DONE]",
    "\u{0}",
    "é🦀",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let choice = if depth == 0 {
        rng.below(5)
    } else {
        rng.below(8)
    };
    match choice {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() % 5000),
        3 => json!(-1.5),
        4 => Value::String(rng.pick(STRINGS).to_owned()),
        5 | 6 => {
            let mut map = Map::new();
            for _ in 0..rng.below(6) {
                map.insert(rng.pick(KEYS).to_owned(), random_value(rng, depth - 1));
            }
            Value::Object(map)
        }
        _ => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
    }
}

fn converters() -> Vec<Box<dyn StreamConverter>> {
    vec![
        Box::new(messages_to_chat::ResponseStream::new("m")),
        Box::new(chat_to_messages::ResponseStream::new("m", 0, true)),
        Box::new(chat_to_messages::ResponseStream::new("m", 0, false)),
        Box::new(responses_to_chat::ResponseStream::new(&json!({}), "m")),
        Box::new(responses_to_messages::ResponseStream::new(
            &json!({"reasoning": {"summary": "auto"}}),
            "m",
            0,
        )),
    ]
}

#[test]
fn random_json_never_panics() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..20_000 {
        let value = random_value(&mut rng, 5);
        let _ = messages_to_chat::convert_request(&value, "u");
        let _ = messages_to_chat::convert_response(&value, "p");
        let _ = chat_to_messages::convert_request(&value, "u", 1);
        let _ = chat_to_messages::convert_response(&value, "p", 0);
        let _ = responses_to_chat::convert_request(&value, "u");
        let _ = responses_to_chat::convert_response(&value, &value, "p");
        let _ = responses_to_messages::convert_request(&value, "u", 1);
        let _ = responses_to_messages::convert_response(&value, &value, "p", 0);
        let _ = usage::from_chat_response(&value);
        let _ = usage::from_responses_response(&value);
        let _ = usage::from_anthropic_response(&value);
        let _ = usage::from_embeddings_response(&value);
        let _ = usage::is_usage_only_chunk(&value);
        let _ = usage::strip_usage_field(&value.to_string());
        let mut request = value.clone();
        let _ = usage::ensure_chat_stream_usage(&mut request);
    }
}

#[test]
fn random_stream_events_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..500 {
        let mut converters = converters();
        let mut trackers = [
            UsageTracker::new(Format::ChatCompletions),
            UsageTracker::new(Format::Responses),
            UsageTracker::new(Format::AnthropicMessages),
        ];
        for _ in 0..rng.below(30) {
            let name = rng.pick(STRINGS).to_owned();
            let event = SseEvent {
                event: (rng.below(2) == 0).then_some(name),
                data: random_value(&mut rng, 4).to_string(),
            };
            for converter in &mut converters {
                let _ = converter.push(&event);
            }
            for tracker in &mut trackers {
                tracker.observe(&event);
            }
        }
        for converter in &mut converters {
            let _ = converter.finish();
            let _ = converter.error_frame("late");
            assert!(converter.finish().is_empty());
        }
    }
}

#[test]
fn broken_stream_is_an_error_not_a_panic() {
    let mut decoder = SseDecoder::new(1024);
    let mut events = decoder
        .push(b"data: {}\n\ndata: ha this isn't json!\n\nthis isn't sse at all!")
        .expect("decodes");
    events.extend(decoder.finish());
    for mut converter in converters() {
        let mut saw_error = false;
        for event in &events {
            if converter.push(event).is_err() {
                saw_error = true;
                let frame = converter.error_frame("bad upstream");
                assert!(frame.ends_with(b"\n\n"));
                break;
            }
        }
        assert!(saw_error, "non-JSON data must be reported");
    }
}

#[test]
fn stream_after_end_is_silent() {
    let done = SseEvent {
        event: None,
        data: "[DONE]".into(),
    };
    let mut converter = messages_to_chat::ResponseStream::new("m");
    assert!(!converter.push(&done).expect("done").is_empty());
    assert!(converter.push(&done).expect("done again").is_empty());
    assert!(converter.finish().is_empty());
}
