//! Translation between API formats through the gateway: the Anthropic Messages endpoint in
//! front of an OpenAI-compatible provider, Chat Completions in front of an Anthropic one,
//! and Responses in front of a chat-only server — plain, streamed, with tools, and metered
//! the same as a native request.

use serde_json::{json, Value};

use crate::gateway::{cost, ledger, setup, CLAUDE, GPT};
use crate::helpers::TestApp;

async fn messages(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn messages_endpoint_in_front_of_an_openai_compatible_provider() {
    let (app, upstream, key) = setup().await;
    let body = json!({"model": "gpt-test", "max_tokens": 50, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Hello there [[fake:words=4]]"}]});
    let response = messages(&app, &key, &body).await;
    assert_eq!(response.status(), 200);
    let cost_header = response.headers()["x-tollgate-cost"]
        .to_str()
        .expect("cost")
        .to_string();
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["model"], "gpt-test");
    assert_eq!(answer["content"][0]["type"], "text");
    assert_eq!(answer["stop_reason"], "end_turn");
    let input = answer["usage"]["input_tokens"].as_i64().expect("input");
    let output = answer["usage"]["output_tokens"].as_i64().expect("output");
    assert_eq!(output, 4);
    // What went upstream was a chat completion request.
    let sent = upstream.received().last().expect("received").clone();
    assert_eq!(sent.path, "/v1/chat/completions");
    let sent = sent.json().expect("json");
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(
        crate::gateway::nanos(&cost_header),
        cost(&GPT, input.into(), 0, output.into())
    );

    // Streamed: Anthropic events, usage in message_delta, metered from the upstream chunks.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = messages(&app, &key, &streamed)
        .await
        .text()
        .await
        .expect("text");
    for event in [
        "event: message_start",
        "event: content_block_start",
        "event: content_block_delta",
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ] {
        assert!(text.contains(event), "{event} missing in {text}");
    }
    assert!(text.find("event: message_delta") < text.find("event: message_stop"));
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[1].3, 4);
    assert_eq!(
        ledger[1].4, ledger[0].4,
        "the same usage costs the same streamed or not"
    );
}

#[tokio::test]
async fn translated_and_native_requests_cost_the_same() {
    let (app, _upstream, key) = setup().await;
    let text = "What is the capital of France? [[fake:words=7,cached=3]]";
    let native = app
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt-test", "max_tokens": 40,
              "messages": [{"role": "user", "content": text}]}),
        )
        .await;
    assert_eq!(native.status(), 200);
    let native_cost = native.headers()["x-tollgate-cost"]
        .to_str()
        .expect("cost")
        .to_string();
    let translated = messages(
        &app,
        &key,
        &json!({"model": "gpt-test", "max_tokens": 40,
                              "messages": [{"role": "user", "content": text}]}),
    )
    .await;
    assert_eq!(translated.status(), 200);
    let translated_cost = translated.headers()["x-tollgate-cost"]
        .to_str()
        .expect("cost")
        .to_string();
    let body: Value = translated.json().await.expect("json");
    assert_eq!(body["usage"]["cache_read_input_tokens"], 3);
    assert_eq!(native_cost, translated_cost);
    let ledger = ledger(&app).await;
    assert_eq!(
        (ledger[0].1, ledger[0].2, ledger[0].3),
        (ledger[1].1, ledger[1].2, ledger[1].3)
    );
    assert_eq!(ledger[0].2, 3, "cached tokens recorded");
}

#[tokio::test]
async fn chat_endpoint_in_front_of_anthropic_with_a_tool_round_trip() {
    let (app, upstream, key) = setup().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let first = json!({"model": "claude-test", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "system", "content": "Use tools."},
                     {"role": "user", "content": "Weather in Paris? [[fake:tool]]"}]});
    let response = app.post("/v1/chat/completions", &key, &first).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("args"))
            .expect("json args");
    assert_eq!(arguments, json!({"city": "Paris"}));
    let sent = upstream.received().last().expect("received").clone();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("up-anthropic-secret"));
    let sent = sent.json().expect("json");
    assert_eq!(sent["system"], "Use tools.");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );

    // Send the tool result back; the answer is text.
    let second = json!({"model": "claude-test", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Paris?"},
                     {"role": "assistant", "content": null, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"}]});
    let answer: Value = app
        .post("/v1/chat/completions", &key, &second)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
            .len()
            > 5
    );
    let sent = upstream
        .received()
        .last()
        .expect("received")
        .json()
        .expect("json");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");

    // Streamed tool call: argument deltas arrive as chat tool_call chunks.
    let mut streamed = first.clone();
    streamed["stream"] = json!(true);
    let text = app
        .post("/v1/chat/completions", &key, &streamed)
        .await
        .text()
        .await
        .expect("text");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let mut arguments = String::new();
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
    {
        let chunk: Value = serde_json::from_str(line).expect("chunk json");
        if let Some(piece) = chunk
            .pointer("/choices/0/delta/tool_calls/0/function/arguments")
            .and_then(Value::as_str)
        {
            arguments.push_str(piece);
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).expect("assembled"),
        json!({"city": "Paris"})
    );
    assert!(!text.contains("\"usage\""), "no usage unless asked");

    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 3);
    for row in &ledger {
        assert_eq!(
            row.4,
            cost(&CLAUDE, row.1.into(), row.2.into(), row.3.into()),
            "{row:?}"
        );
    }
}

#[tokio::test]
async fn responses_endpoint_in_front_of_a_chat_only_server() {
    let (app, upstream, key) = setup().await;
    let response = app
        .post(
            "/v1/responses",
            &key,
            &json!({"model": "chat-only-test", "input": "Say hello. [[fake:words=3]]",
               "instructions": "Be nice.", "max_output_tokens": 30}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(answer["usage"]["output_tokens"], 3);
    assert_eq!(
        upstream.received().last().expect("received").path,
        "/v1/chat/completions"
    );

    let text = app
        .post(
            "/v1/responses",
            &key,
            &json!({"model": "chat-only-test", "input": "Stream [[fake:words=3]]", "stream": true}),
        )
        .await
        .text()
        .await
        .expect("text");
    assert!(text.contains("event: response.created"), "{text}");
    assert!(text.contains("event: response.output_text.delta"), "{text}");
    assert!(text.contains("event: response.completed"), "{text}");
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[1].3, 3);
}

#[tokio::test]
async fn what_cannot_be_translated_is_a_400_naming_the_field() {
    let (app, upstream, key) = setup().await;
    let before = upstream.stats().requests;
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude-test", "n": 2,
               "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["param"], "n");
    assert_eq!(error["error"]["code"], "untranslatable");
    // A server tool the target cannot run changes what the model does: refused.
    let response = messages(
        &app,
        &key,
        &json!({"model": "gpt-test", "max_tokens": 10,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(message.contains("web_search"), "{message}");
    assert_eq!(upstream.stats().requests, before, "nothing went upstream");
    assert!(ledger(&app).await.is_empty());
}

#[tokio::test]
async fn hints_a_translation_cannot_carry_are_dropped_and_named() {
    let (app, upstream, key) = setup().await;
    let response = messages(
        &app,
        &key,
        &json!({"model": "gpt-test", "max_tokens": 10,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let dropped = response.headers()["x-tollgate-dropped-fields"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(dropped.split(", ").any(|f| f == "thinking"), "{dropped}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["type"], "message");
    let sent = upstream
        .received()
        .last()
        .and_then(|r| r.json())
        .expect("sent");
    assert!(sent.get("thinking").is_none());
    assert_eq!(ledger(&app).await.len(), 1);
}
