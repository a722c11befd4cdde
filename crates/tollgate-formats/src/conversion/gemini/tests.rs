//! Golden tests of the Gemini translations: request, answer and stream, with tools,
//! thoughts, usage and blocks (Gemini's shapes from its API reference).

use serde_json::{json, Value};

use super::stream::GeminiStream;
use super::{answer, embed, request, AnswerError};
use crate::conversion::native::NativeStream;
use crate::sse::SseEvent;

#[test]
fn a_chat_request_with_tools_becomes_generate_content() {
    let chat = json!({
        "model": "gemini-2.5-flash",
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_completion_tokens": 500,
        "temperature": 0.2,
        "stop": "END",
        "user": "u-1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
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
            "contents": [
                {"role": "user", "parts": [
                    {"text": "Weather here?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                    {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}
                ]}
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"maxOutputTokens": 500, "temperature": 0.2, "stopSequences": ["END"]},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather by city",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        })
    );
}

#[test]
fn what_gemini_cannot_take_is_refused_by_name() {
    let base = |extra: Value| {
        let mut chat = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().expect("object") {
            chat[k] = v.clone();
        }
        request::convert(&chat).map(|_| ()).map_err(|e| e.param)
    };
    assert_eq!(base(json!({"n": 2})), Err("n".into()));
    assert_eq!(base(json!({"logprobs": true})), Err("logprobs".into()));
    assert_eq!(base(json!({"audio": {"voice": "x"}})), Err("audio".into()));
    assert_eq!(
        base(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]})),
        Err("tools[0].type".into())
    );
    assert_eq!(base(json!({"n": 1, "logprobs": false})), Ok(()));
    let orphan = json!({"messages": [{"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    assert_eq!(
        request::convert(&orphan).map_err(|e| e.param),
        Err("messages[1].tool_call_id".into())
    );
}

fn gemini_answer() -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Thinking about weather.", "thought": true},
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
            ]},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": 120,
            "candidatesTokenCount": 15,
            "totalTokenCount": 175,
            "cachedContentTokenCount": 100,
            "thoughtsTokenCount": 40,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "abc123"
    })
}

#[test]
fn an_answer_with_thoughts_and_a_call_becomes_a_chat_completion() {
    let chat = answer::convert(&gemini_answer(), "gem", 1_700_000_000).expect("converts");
    assert_eq!(
        chat,
        json!({
            "id": "chatcmpl-abc123",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": "gem",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": null,
                    "reasoning_content": "Thinking about weather.",
                    "tool_calls": [{"id": "call_abc123_0", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 120,
                "completion_tokens": 55,
                "total_tokens": 175,
                "prompt_tokens_details": {"cached_tokens": 100},
                "completion_tokens_details": {"reasoning_tokens": 40}
            }
        })
    );
}

#[test]
fn blocked_prompts_and_answers_are_errors() {
    let prompt = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}});
    assert_eq!(
        answer::convert(&prompt, "gem", 0).map_err(|e| e.to_string()),
        Err("the provider blocked the prompt (SAFETY)".into())
    );
    let mut withheld = gemini_answer();
    withheld["candidates"][0]["finishReason"] = "PROHIBITED_CONTENT".into();
    assert!(matches!(
        answer::convert(&withheld, "gem", 0),
        Err(AnswerError::Blocked(b)) if b.reason == "PROHIBITED_CONTENT"
    ));
    let mut capped = gemini_answer();
    capped["candidates"][0]["finishReason"] = "MAX_TOKENS".into();
    let chat = answer::convert(&capped, "gem", 0).expect("converts");
    assert_eq!(chat["choices"][0]["finish_reason"], "length");
    assert!(matches!(
        answer::convert(&json!({}), "gem", 0),
        Err(AnswerError::Malformed(_))
    ));
}

fn event(data: Value) -> SseEvent {
    SseEvent {
        event: None,
        data: data.to_string(),
    }
}

fn datas(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone())))
        .collect()
}

#[test]
fn a_stream_becomes_chat_chunks_with_the_final_usage() {
    let mut stream = GeminiStream::new("gemini-2.5-flash", 7);
    let mut out = Vec::new();
    out.extend(stream.push(&event(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm.", "thought": true}]}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "responseId": "r1"}))).expect("chunk"));
    out.extend(
        stream
            .push(&event(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "index": 0}],
        "responseId": "r1"})))
            .expect("chunk"),
    );
    out.extend(stream.push(&event(json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"id": "fc-7", "name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "thoughtsTokenCount": 2,
            "cachedContentTokenCount": 4, "totalTokenCount": 14},
        "responseId": "r1"}))).expect("chunk"));
    out.extend(stream.finish());
    let base = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 7,
            "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null})
    };
    assert_eq!(
        datas(&out),
        vec![
            base(json!({"role": "assistant", "content": ""}), Value::Null),
            base(json!({"reasoning_content": "Hmm."}), Value::Null),
            base(json!({"content": "Hello"}), Value::Null),
            base(
                json!({"tool_calls": [{"id": "fc-7", "type": "function", "index": 0,
                "function": {"name": "f", "arguments": "{\"a\":1}"}}]}),
                Value::Null
            ),
            base(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 7,
                "model": "gemini-2.5-flash", "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 2}}}),
            Value::String("[DONE]".into()),
        ]
    );
}

#[test]
fn a_stream_cut_before_its_finish_ends_without_usage_and_a_block_is_an_error() {
    let mut stream = GeminiStream::new("m", 0);
    stream
        .push(&event(
            json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}],
            "usageMetadata": {"promptTokenCount": 3}}),
        ))
        .expect("chunk");
    assert!(stream.finish().is_empty());
    let mut stream = GeminiStream::new("m", 0);
    let blocked = stream.push(&event(json!({"candidates": [{"finishReason": "SAFETY"}]})));
    assert_eq!(
        blocked.map_err(|e| e.message),
        Err("the provider blocked the answer (SAFETY)".into())
    );
    assert!(stream
        .push(&SseEvent {
            event: None,
            data: "{not json".into()
        })
        .is_err());
}

#[test]
fn embeddings_both_ways() {
    let converted = embed::convert_request(
        &json!({"model": "e", "input": ["one two", "three"], "dimensions": 2}),
        "gemini-embedding-001",
    )
    .expect("converts");
    assert_eq!(
        converted.body,
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "one two"}]}, "outputDimensionality": 2},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "three"}]}, "outputDimensionality": 2}
        ]})
    );
    assert!(embed::convert_request(&json!({"input": [[1, 2]]}), "e").is_err());
    let answer = json!({"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]});
    assert_eq!(
        embed::convert_answer(&answer, "e", false).expect("converts"),
        json!({"object": "list", "model": "e", "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
            {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]}]})
    );
    let b64 = embed::convert_answer(&answer, "e", true).expect("converts");
    // 0.5f32 = 00 00 00 3f, -1.0f32 = 00 00 80 bf.
    assert_eq!(b64["data"][0]["embedding"], "AAAAPwAAgL8=");
}
