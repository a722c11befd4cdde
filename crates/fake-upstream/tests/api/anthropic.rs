//! Anthropic Messages: event sequence, usage, tool use, auth.

use fake_upstream::Options;
use serde_json::{json, Value};

use crate::{client, post_anthropic, spawn, spawn_with, sse_events};

fn request(text: &str) -> Value {
    json!({"model": "claude-haiku-4-5", "max_tokens": 1024, "system": "be brief",
        "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn stream_has_anthropics_event_sequence_and_usage_in_message_delta() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = request("hi [[fake:words=3,cached=2,cache_write=1]]");
    body["stream"] = json!(true);
    let resp = post_anthropic(&up, body).await?;
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await?;
    let events = sse_events(&raw);
    let names: Vec<&str> = events.iter().filter_map(|(e, _)| e.as_deref()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(name.as_deref(), d["type"].as_str());
    }
    let text: String = data
        .iter()
        .filter_map(|d| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello from the");
    // T = (4 + 2) + (4 + 2) = 12: 2 read from cache, 1 written, 9 uncached.
    let start = &data[0]["message"]["usage"];
    assert_eq!(start["input_tokens"], 9);
    let delta = &data[7];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(delta["usage"]["input_tokens"], 9);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(delta["usage"]["cache_creation_input_tokens"], 1);
    Ok(())
}

#[tokio::test]
async fn plain_message_with_max_tokens_and_stop_sequence() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = request("hi");
    body["max_tokens"] = json!(2);
    let v: Value = post_anthropic(&up, body).await?.json().await?;
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello from"}])
    );
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 2);
    assert_eq!(v["usage"]["input_tokens"], 4 + 2 + 4 + 1);

    let mut body = request("hi");
    body["stop_sequences"] = json!(["fake"]);
    let v: Value = post_anthropic(&up, body).await?.json().await?;
    assert_eq!(v["content"][0]["text"], "Hello from the");
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "fake");
    Ok(())
}

#[tokio::test]
async fn tool_use_streams_input_json_deltas() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = request("weather? [[fake:tool]]");
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}]);
    let v: Value = post_anthropic(&up, body.clone()).await?.json().await?;
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["name"], "get_weather");
    assert_eq!(
        v["content"][0]["input"],
        json!({"location": "Paris", "unit": "celsius"})
    );

    let tools = body["tools"].clone();
    body["stream"] = json!(true);
    let raw = post_anthropic(&up, body).await?.text().await?;
    let data: Vec<Value> = sse_events(&raw)
        .iter()
        .map(|(_, d)| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    let partial: String = data
        .iter()
        .filter_map(|d| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial)?,
        json!({"location": "Paris", "unit": "celsius"})
    );
    assert!(raw.contains(r#""stop_reason":"tool_use""#));

    // After the tool result, text.
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "weather? [[fake:tool,words=1]]"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]});
    let v: Value = post_anthropic(&up, body).await?.json().await?;
    assert_eq!(v["content"], json!([{"type": "text", "text": "Hello"}]));
    assert_eq!(v["usage"]["input_tokens"], (4 + 2) + 4 + (4 + 1));
    Ok(())
}

#[tokio::test]
async fn headers_and_keys_are_checked() -> anyhow::Result<()> {
    let up = spawn_with(Options {
        anthropic_api_key: Some("sk-ant-right".into()),
        ..Options::default()
    })
    .await?;
    let url = format!("{}/messages", up.base_url());
    let resp = client()
        .post(&url)
        .header("x-api-key", "sk-ant-wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&request("hi"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await?;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    let resp = client()
        .post(&url)
        .header("x-api-key", "sk-ant-right")
        .json(&request("hi"))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);

    let resp = client()
        .post(&url)
        .header("x-api-key", "sk-ant-right")
        .header("anthropic-version", "2023-06-01")
        .json(&request("hi"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}
