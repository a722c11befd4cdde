//! Chat completions: shapes, usage, streams, tool calls.

use serde_json::{json, Value};

use crate::{chat_request, json_events, post, spawn, sse_events};

#[tokio::test]
async fn plain_completion_has_the_real_shape_and_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say hello [[fake:words=5,cached=3]]"}]});
    let resp = post(&up, "/chat/completions", body).await?;
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await?;
    // Pretty-printed, fields in OpenAI's order.
    assert!(raw.starts_with("{\n  \"id\": \"chatcmpl-"), "{raw}");
    let keys = [
        "\"object\"",
        "\"created\"",
        "\"model\"",
        "\"choices\"",
        "\"usage\"",
        "\"service_tier\"",
    ];
    let positions: Vec<usize> = keys.iter().filter_map(|k| raw.find(k)).collect();
    assert_eq!(positions.len(), keys.len());
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "field order: {raw}"
    );
    let v: Value = serde_json::from_str(&raw)?;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the fake upstream,"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // (4 + 2) + (4 + 3) input tokens; 5 output tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 13);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 18);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    Ok(())
}

#[tokio::test]
async fn max_tokens_caps_the_reply_with_length() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("hi");
    body["max_completion_tokens"] = json!(2);
    let v: Value = post(&up, "/chat/completions", body).await?.json().await?;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    Ok(())
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_and_ends_with_done() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("hi [[fake:words=4]]");
    body["stream"] = json!(true);
    let resp = post(&up, "/chat/completions", body).await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/event-stream"));
    let raw = resp.text().await?;
    let events = sse_events(&raw);
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    assert!(raw.ends_with("data: [DONE]\n\n"));
    let chunks = json_events(&raw)?;
    // Role chunk, 4 words, finish chunk.
    assert_eq!(chunks.len(), 6);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c.get("obfuscation").is_some()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the fake");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    Ok(())
}

#[tokio::test]
async fn stream_with_include_usage_has_null_usage_then_a_usage_chunk() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("hi [[fake:words=3]]");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let raw = post(&up, "/chat/completions", body).await?.text().await?;
    assert!(raw.ends_with("data: [DONE]\n\n"));
    let chunks = json_events(&raw)?;
    let (last, rest) = chunks
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("no chunks"))?;
    assert!(
        rest.iter().all(|c| c.get("usage") == Some(&Value::Null)),
        "{raw}"
    );
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 4 + 2);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert_eq!(last["usage"]["total_tokens"], 9);
    Ok(())
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}])
}

#[tokio::test]
async fn tool_directive_calls_the_first_tool_plain_and_streamed() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("weather? [[fake:tool]]");
    body["tools"] = weather_tools();
    let v: Value = post(&up, "/chat/completions", body.clone())
        .await?
        .json()
        .await?;
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"location":"Paris"}"#);
    assert!(call["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("call_")));

    body["stream"] = json!(true);
    let raw = post(&up, "/chat/completions", body).await?.text().await?;
    let chunks = json_events(&raw)?;
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"Paris"}"#);
    let deltas = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert!(deltas >= 3, "arguments come in several deltas: {raw}");
    assert!(raw.contains(r#""finish_reason":"tool_calls""#));
    Ok(())
}

#[tokio::test]
async fn a_tool_result_gets_a_text_answer() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-4o-mini", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "weather? [[fake:tool,words=2]]"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and warm"}]});
    let v: Value = post(&up, "/chat/completions", body).await?.json().await?;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // (4 + 2) + (4 + 0) + (4 + 3)
    assert_eq!(v["usage"]["prompt_tokens"], 17);
    Ok(())
}
