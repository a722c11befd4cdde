//! Injected faults: status, reset, malformed, cut_after, error_after, latency, and
//! how streams are counted.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::{chat_request, json_events, post, post_anthropic, spawn, sse_events, wait_for_stats};

#[tokio::test]
async fn status_directive_answers_in_openai_shape() -> anyhow::Result<()> {
    let up = spawn().await?;
    let resp = post(
        &up,
        "/chat/completions",
        chat_request("x [[fake:status=503]]"),
    )
    .await?;
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(v["error"].get("param").is_some_and(Value::is_null));
    assert!(v["error"].get("code").is_some());
    Ok(())
}

#[tokio::test]
async fn status_directive_answers_in_anthropic_shape() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 10,
        "messages": [{"role": "user", "content": "x [[fake:status=529,retry_after=1]]"}]});
    let resp = post_anthropic(&up, body).await?;
    assert_eq!(resp.status().as_u16(), 529);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await?;
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    Ok(())
}

#[tokio::test]
async fn reset_is_a_connection_error_not_a_status() -> anyhow::Result<()> {
    let up = spawn().await?;
    let result = crate::client()
        .post(format!("{}/chat/completions", up.base_url()))
        .json(&chat_request("x [[fake:reset]]"))
        .send()
        .await;
    let err = result
        .err()
        .ok_or_else(|| anyhow::anyhow!("reset gave a response"))?;
    assert!(err.status().is_none());
    assert!(err.is_request(), "{err:?}");
    // The server still serves the next request.
    let resp = post(&up, "/chat/completions", chat_request("x")).await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

#[tokio::test]
async fn malformed_plain_and_streamed() -> anyhow::Result<()> {
    let up = spawn().await?;
    let resp = post(
        &up,
        "/chat/completions",
        chat_request("x [[fake:malformed]]"),
    )
    .await?;
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_str::<Value>(&resp.text().await?).is_err());

    let mut body = chat_request("x [[fake:malformed,words=3]]");
    body["stream"] = json!(true);
    let raw = post(&up, "/chat/completions", body).await?.text().await?;
    let broken = sse_events(&raw)
        .iter()
        .filter(|(_, d)| d != "[DONE]" && serde_json::from_str::<Value>(d).is_err())
        .count();
    assert_eq!(broken, 1, "{raw}");
    assert!(raw.ends_with("data: [DONE]\n\n"));
    Ok(())
}

#[tokio::test]
async fn cut_after_aborts_the_stream_mid_way() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("x [[fake:cut_after=2,words=10]]");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&up, "/chat/completions", body).await?;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => received.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error");
    let raw = String::from_utf8(received)?;
    assert!(!raw.contains("[DONE]"));
    let chunks = json_events(&raw)?;
    let words: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(words, ["Hello", " from"]);
    assert!(chunks.iter().all(|c| c["usage"].is_null()));
    let stats = wait_for_stats(&up, |s| s.streams_aborted == 1).await?;
    assert_eq!((stats.streams_completed, stats.streams_cancelled), (0, 0));
    Ok(())
}

#[tokio::test]
async fn error_after_sends_the_in_stream_error_and_ends() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("x [[fake:error_after=1]]");
    body["stream"] = json!(true);
    let raw = post(&up, "/chat/completions", body).await?.text().await?;
    assert!(!raw.contains("[DONE]"));
    let chunks = json_events(&raw)?;
    let last = chunks.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
    assert_eq!(last["error"]["type"], "server_error");
    assert_eq!(chunks.len(), 3, "role chunk, one word, error: {raw}");

    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "x [[fake:error_after=2]]"}]});
    let raw = post_anthropic(&up, body).await?.text().await?;
    let events = sse_events(&raw);
    let (name, data) = events.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
    assert_eq!(name.as_deref(), Some("error"));
    assert_eq!(
        serde_json::from_str::<Value>(data)?["error"]["type"],
        "overloaded_error"
    );
    Ok(())
}

#[tokio::test]
async fn first_byte_ms_delays_the_headers() -> anyhow::Result<()> {
    let up = spawn().await?;
    let start = Instant::now();
    let resp = post(
        &up,
        "/chat/completions",
        chat_request("x [[fake:first_byte_ms=150]]"),
    )
    .await?;
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status(), 200);
    Ok(())
}

#[tokio::test]
async fn a_client_hanging_up_mid_stream_is_counted_as_cancelled() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = chat_request("x [[fake:words=40,chunk_ms=30]]");
    body["stream"] = json!(true);
    let resp = post(&up, "/chat/completions", body).await?;
    let mut stream = resp.bytes_stream();
    for _ in 0..2 {
        stream.next().await;
    }
    drop(stream);
    let stats = wait_for_stats(&up, |s| s.streams_cancelled == 1).await?;
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_completed, 0);

    // A stream read to the end is completed, not cancelled.
    let mut body = chat_request("x [[fake:words=3]]");
    body["stream"] = json!(true);
    post(&up, "/chat/completions", body).await?.text().await?;
    let stats = wait_for_stats(&up, |s| s.streams_completed == 1).await?;
    assert_eq!(stats.streams_cancelled, 1);
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_400s_with_messages() -> anyhow::Result<()> {
    let up = spawn().await?;
    let resp = crate::client()
        .post(format!("{}/chat/completions", up.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let resp = post(&up, "/chat/completions", json!({"messages": []})).await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("model")));

    let resp = post(
        &up,
        "/chat/completions",
        chat_request("[[fake:nonsense=1]]"),
    )
    .await?;
    assert_eq!(resp.status(), 400);
    Ok(())
}
