//! The Responses API: plain and streamed.

use serde_json::{json, Value};

use crate::{json_events, post, spawn, sse_events};

#[tokio::test]
async fn plain_response_has_output_text_and_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-4.1-mini", "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi [[fake:words=2,cached=1]]"}]}]});
    let v: Value = post(&up, "/responses", body).await?.json().await?;
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["instructions"], "be brief");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hello from");
    assert_eq!(v["usage"]["input_tokens"], (4 + 2) + (4 + 2));
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 1);
    assert_eq!(v["usage"]["output_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], 14);
    Ok(())
}

#[tokio::test]
async fn stream_has_the_event_sequence_with_sequence_numbers() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-4.1-mini", "stream": true, "input": "hi [[fake:words=2]]"});
    let raw = post(&up, "/responses", body).await?.text().await?;
    let names: Vec<String> = sse_events(&raw)
        .into_iter()
        .filter_map(|(e, _)| e)
        .collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let events = json_events(&raw)?;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
        assert_eq!(e["type"], names[i].as_str());
    }
    assert_eq!(events[6]["text"], "Hello from");
    let done = &events[9]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["input_tokens"], 4 + 2);
    assert_eq!(done["usage"]["output_tokens"], 2);
    assert!(events[0]["response"]["usage"].is_null());
    Ok(())
}

#[tokio::test]
async fn tool_call_streams_function_call_arguments() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-4.1-mini", "stream": true, "input": "weather? [[fake:tool]]",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object",
            "properties": {"location": {"type": "string"}}}}]});
    let raw = post(&up, "/responses", body).await?.text().await?;
    let events = json_events(&raw)?;
    let args: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"Paris"}"#);
    let done = events.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
    assert_eq!(done["response"]["output"][0]["type"], "function_call");
    assert_eq!(done["response"]["output"][0]["name"], "get_weather");
    Ok(())
}
