//! Stateful and priced features answered as the real APIs answer them: background
//! responses, service tiers, hosted tools and Anthropic's web search server tool.

use serde_json::{json, Value};

use crate::formats::Api;
use crate::{json_events, post, post_anthropic, spawn, sse_events};

#[tokio::test]
async fn background_responses_are_queued_without_output_or_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-4.1-mini", "background": true, "input": "hi"});
    let raw = post(&up, "/responses", body).await?.text().await?;
    let v: Value = serde_json::from_str(&raw)?;
    assert_eq!(v["status"], "queued");
    assert_eq!(v["background"], true);
    assert_eq!(v["output"], json!([]));
    assert!(v.get("usage").is_some_and(Value::is_null), "{raw}");
    assert!(v["completed_at"].is_null());

    let body = json!({"model": "gpt-4.1-mini", "background": true, "stream": true,
        "input": "hi [[fake:words=2]]"});
    let raw = post(&up, "/responses", body).await?.text().await?;
    let events = json_events(&raw)?;
    assert_eq!(events[0]["response"]["status"], "queued");
    assert!(events
        .iter()
        .filter_map(|e| e.get("response"))
        .all(|r| r["background"] == true));
    let last = events.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
    assert_eq!(last["response"]["usage"]["output_tokens"], 2);
    // Without the flag a response is not in the background.
    let v: Value = post(&up, "/responses", json!({"model": "m", "input": "hi"}))
        .await?
        .json()
        .await?;
    assert_eq!(
        (v["status"].as_str(), v["background"].as_bool()),
        (Some("completed"), Some(false))
    );
    Ok(())
}

#[tokio::test]
async fn openai_service_tier_is_echoed() -> anyhow::Result<()> {
    let up = spawn().await?;
    for (asked, served) in [
        (None, "default"),
        (Some("auto"), "default"),
        (Some("priority"), "priority"),
        (Some("flex"), "flex"),
        (Some("default"), "default"),
    ] {
        for api in [Api::Chat, Api::Responses] {
            let mut body = api.body("hi [[fake:words=2]]", false);
            if let Some(t) = asked {
                body["service_tier"] = json!(t);
            }
            let v: Value = api.send(&up, body.clone()).await?.json().await?;
            assert_eq!(v["service_tier"], served, "{api:?} {asked:?}");
            body["stream"] = json!(true);
            let raw = api.send(&up, body).await?.text().await?;
            let events = json_events(&raw)?;
            let tiers: Vec<&Value> = match api {
                Api::Chat => events.iter().map(|e| &e["service_tier"]).collect(),
                _ => events
                    .iter()
                    .filter_map(|e| e.get("response"))
                    .map(|r| &r["service_tier"])
                    .collect(),
            };
            assert!(
                !tiers.is_empty() && tiers.iter().all(|t| **t == json!(served)),
                "{raw}"
            );
        }
    }
    let mut body = Api::Chat.body("hi", false);
    body["service_tier"] = json!("turbo");
    let resp = Api::Chat.send(&up, body).await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["param"], "service_tier");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("'turbo'")));
    Ok(())
}

#[tokio::test]
async fn anthropic_service_tier_shows_in_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    for (asked, served) in [
        (None, "standard"),
        (Some("auto"), "priority"),
        (Some("standard_only"), "standard"),
    ] {
        let mut body = Api::Messages.body("hi", false);
        if let Some(t) = asked {
            body["service_tier"] = json!(t);
        }
        let v: Value = post_anthropic(&up, body.clone()).await?.json().await?;
        assert_eq!(v["usage"]["service_tier"], served, "{asked:?}");
        body["stream"] = json!(true);
        let events = json_events(&post_anthropic(&up, body).await?.text().await?)?;
        assert_eq!(events[0]["message"]["usage"]["service_tier"], served);
    }
    let mut body = Api::Messages.body("hi", false);
    body["service_tier"] = json!("priority");
    let resp = post_anthropic(&up, body).await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    Ok(())
}

fn hosted_tools() -> Value {
    json!([{"type": "web_search_preview"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "image_generation"},
        {"type": "web_search"},
        {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}])
}

const HOSTED: [&str; 4] = [
    "web_search_call",
    "file_search_call",
    "code_interpreter_call",
    "image_generation_call",
];

#[tokio::test]
async fn hosted_tools_answer_one_completed_call_each_before_the_message() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body =
        json!({"model": "gpt-4.1-mini", "input": "hi [[fake:words=2]]", "tools": hosted_tools()});
    let v: Value = post(&up, "/responses", body).await?.json().await?;
    let output = v["output"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no output"))?;
    let types: Vec<&str> = output.iter().filter_map(|i| i["type"].as_str()).collect();
    assert_eq!(types, [HOSTED.as_slice(), &["message"]].concat());
    assert!(output.iter().all(|i| i["status"] == "completed"));
    assert_eq!(output[0]["action"]["type"], "search");
    assert!(output[0]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("ws_")));
    assert!(output[1]["queries"]
        .as_array()
        .is_some_and(|q| !q.is_empty()));
    assert!(output[2]["container_id"]
        .as_str()
        .is_some_and(|c| c.starts_with("cntr_")));
    assert!(output[3]["result"]
        .as_str()
        .is_some_and(|r| r.starts_with("iVBORw0KGgo")));
    assert_eq!(output[4]["content"][0]["text"], "Hello from");

    let body = json!({"model": "gpt-4.1-mini", "stream": true, "input": "hi [[fake:words=2]]",
        "tools": [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]});
    let raw = post(&up, "/responses", body).await?.text().await?;
    let names: Vec<String> = sse_events(&raw)
        .into_iter()
        .filter_map(|(e, _)| e)
        .collect();
    assert_eq!(
        &names[2..12],
        [
            "response.output_item.added",
            "response.web_search_call.in_progress",
            "response.web_search_call.searching",
            "response.web_search_call.completed",
            "response.output_item.done",
            "response.output_item.added",
            "response.code_interpreter_call.in_progress",
            "response.code_interpreter_call.interpreting",
            "response.code_interpreter_call.completed",
            "response.output_item.done"
        ]
    );
    let events = json_events(&raw)?;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{raw}");
    }
    assert_eq!(events[2]["item"]["status"], "in_progress");
    assert_eq!(events[6]["item"]["status"], "completed");
    assert_eq!(events[8]["output_index"], 1);
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .collect();
    assert!(deltas.iter().all(|d| d["output_index"] == 2));
    let done = events.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
    let items = done["response"]["output"].as_array().map(Vec::len);
    assert_eq!(items, Some(3));
    Ok(())
}

#[tokio::test]
async fn anthropic_web_search_adds_its_blocks_and_counts_the_request() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body = Api::Messages.body("news? [[fake:words=3]]", false);
    body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
    let v: Value = post_anthropic(&up, body.clone()).await?.json().await?;
    let content = v["content"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no content"))?;
    let types: Vec<&str> = content.iter().filter_map(|b| b["type"].as_str()).collect();
    assert_eq!(types, ["server_tool_use", "web_search_tool_result", "text"]);
    assert_eq!(content[0]["name"], "web_search");
    assert!(content[0]["input"]["query"].is_string());
    assert_eq!(content[1]["tool_use_id"], content[0]["id"]);
    assert_eq!(content[1]["content"][0]["type"], "web_search_result");
    assert_eq!(content[2]["text"], "Hello from the");
    assert_eq!(
        v["usage"]["server_tool_use"],
        json!({"web_search_requests": 1})
    );

    body["stream"] = json!(true);
    let raw = post_anthropic(&up, body).await?.text().await?;
    let events = json_events(&raw)?;
    let starts: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .filter_map(|e| Some((e["index"].as_u64()?, e["content_block"]["type"].as_str()?)))
        .collect();
    assert_eq!(
        starts,
        [
            (0, "server_tool_use"),
            (1, "web_search_tool_result"),
            (2, "text")
        ]
    );
    assert!(events
        .iter()
        .filter(|e| e["delta"]["type"] == "text_delta")
        .all(|e| e["index"] == 2));
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .ok_or_else(|| anyhow::anyhow!("none"))?;
    assert_eq!(delta["usage"]["server_tool_use"]["web_search_requests"], 1);
    // Without the tool: no server tool blocks, no server_tool_use.
    let v: Value = post_anthropic(&up, Api::Messages.body("hi", false))
        .await?
        .json()
        .await?;
    assert!(v["usage"].get("server_tool_use").is_none());
    assert_eq!(v["content"].as_array().map(Vec::len), Some(1));
    Ok(())
}
