//! Golden tests of the Converse translations: request, answer and stream, with tools,
//! images and usage (Bedrock's shapes from its API reference).

use serde_json::{json, Value};

use super::stream::ConverseStream;
use super::{answer, request};
use crate::conversion::native::NativeStream;
use crate::eventstream::{encode, EventStreamDecoder};
use crate::sse::SseEvent;

#[test]
fn a_chat_request_with_tools_and_images_becomes_converse() {
    let chat = json!({
        "model": "amazon.nova-pro-v1:0",
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_completion_tokens": 500,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "user": "u-1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
    });
    let converted = request::convert(&chat).expect("converts");
    assert_eq!(converted.dropped, vec!["user"]);
    assert_eq!(
        converted.body,
        json!({
            "messages": [
                {"role": "user", "content": [
                    {"text": "Weather here?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
                ]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"json": {"temp": 21}}], "status": "success"}},
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "sunny"}], "status": "success"}},
                    {"text": "Thanks"}
                ]}
            ],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {"maxTokens": 500, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather by city",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}],
                "toolChoice": {"tool": {"name": "get_weather"}}
            }
        })
    );
}

#[test]
fn what_converse_cannot_take_is_refused_by_name() {
    let base = |extra: Value| {
        let mut chat = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().expect("object") {
            chat[k] = v.clone();
        }
        request::convert(&chat).map(|_| ()).map_err(|e| e.param)
    };
    assert_eq!(base(json!({"n": 2})), Err("n".into()));
    assert_eq!(base(json!({"logprobs": true})), Err("logprobs".into()));
    assert_eq!(
        base(json!({"presence_penalty": 0.5})),
        Err("presence_penalty".into())
    );
    assert_eq!(
        base(json!({"response_format": {"type": "json_object"}})),
        Err("response_format.type".into())
    );
    assert_eq!(
        base(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]})),
        Err("messages[0].content[0].image_url.url".into())
    );
    assert_eq!(
        base(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]})),
        Err("tools[0].type".into())
    );
    assert_eq!(base(json!({"n": 1, "logprobs": false})), Ok(()));
    let none = request::convert(&json!({"messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}))
    .expect("converts");
    assert_eq!(none.dropped, vec!["tool_choice"]);
    assert_eq!(
        none.body["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]})
    );
}

#[test]
fn a_converse_answer_with_a_tool_call_and_cache_usage_becomes_chat() {
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Need the weather.", "signature": "sig"}}},
            {"text": "Let me check."},
            {"toolUse": {"toolUseId": "tooluse_abc", "name": "get_weather", "input": {"city": "Paris"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 4, "outputTokens": 21, "totalTokens": 1530,
            "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 505},
        "metrics": {"latencyMs": 412}
    });
    let chat = answer::convert(&converse, "nova-pro", 1_700_000_000).expect("converts");
    assert_eq!(
        chat,
        json!({
            "id": "chatcmpl-bedrock-1700000000",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "nova-pro",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "Let me check.", "refusal": null,
                "reasoning_content": "Need the weather.",
                "tool_calls": [{"id": "tooluse_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
            }, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1509, "completion_tokens": 21, "total_tokens": 1530,
                "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 505},
                "completion_tokens_details": {"reasoning_tokens": 0}}
        })
    );
    let length = answer::convert(
        &json!({"output": {"message": {"content": [{"text": "cut"}]}}, "stopReason": "max_tokens"}),
        "m",
        1,
    )
    .expect("converts");
    assert_eq!(length["choices"][0]["finish_reason"], "length");
    assert!(answer::convert(&json!({"message": "x"}), "m", 1).is_err());
}

/// Event-stream frames as Bedrock sends them, decoded as the gateway does.
fn events(frames: &[(&str, Value)]) -> Vec<SseEvent> {
    let mut bytes = Vec::new();
    for (name, payload) in frames {
        bytes.extend(encode(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        ));
    }
    EventStreamDecoder::new(1 << 20)
        .push(&bytes)
        .expect("decodes")
}

fn chunks(stream: &mut ConverseStream, events: &[SseEvent]) -> Vec<Value> {
    let mut out = Vec::new();
    for event in events {
        out.extend(stream.push(event).expect("pushes"));
    }
    out.extend(stream.finish());
    out.iter()
        .map(|e| serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone())))
        .collect()
}

#[test]
fn a_converse_stream_with_text_a_tool_call_and_usage_becomes_chat_chunks() {
    let stream_events = events(&[
        ("messageStart", json!({"role": "assistant", "p": "abcd"})),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Let me"}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": " check."}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 0})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 1})),
        ("messageStop", json!({"stopReason": "tool_use"})),
        (
            "metadata",
            json!({"usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 52,
            "cacheReadInputTokens": 10, "cacheWriteInputTokens": 0}, "metrics": {"latencyMs": 300}}),
        ),
    ]);
    let mut stream = ConverseStream::new("amazon.nova-pro-v1:0", 7);
    let out = chunks(&mut stream, &stream_events);
    let deltas: Vec<Value> = out
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta").cloned())
        .collect();
    assert_eq!(
        deltas,
        vec![
            json!({"role": "assistant", "content": ""}),
            json!({"content": "Let me"}),
            json!({"content": " check."}),
            json!({"tool_calls": [{"index": 0, "id": "tooluse_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            json!({}),
        ]
    );
    let n = out.len();
    assert_eq!(out[n - 3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        out[n - 2]["usage"],
        json!({"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52,
            "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    assert_eq!(out[n - 2]["choices"], json!([]));
    assert_eq!(out[n - 1], Value::String("[DONE]".into()));
    assert_eq!(out[0]["model"], "amazon.nova-pro-v1:0");
}

#[test]
fn a_stream_cut_before_its_metadata_or_with_an_exception_does_not_finish() {
    let cut = events(&[
        ("messageStart", json!({"role": "assistant"})),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ),
        ("messageStop", json!({"stopReason": "end_turn"})),
    ]);
    let mut stream = ConverseStream::new("m", 1);
    let out = chunks(&mut stream, &cut);
    assert!(out.iter().all(|c| c != "[DONE]"), "no [DONE] without usage");
    let exception = SseEvent {
        event: Some("error".into()),
        data: json!({"type": "error", "error": {"type": "throttlingException", "message": "slow down"}}).to_string(),
    };
    let e = ConverseStream::new("m", 1)
        .push(&exception)
        .expect_err("an error");
    assert!(e.message.contains("throttlingException") && e.message.contains("slow down"));
}
