//! Errors as the SDKs expect them: an unknown model is a 404, a provider's 529 stays the
//! signal Anthropic's clients back off on, everything under `/v1/messages` is in
//! Anthropic's shape, and what the HTTP layer refuses by itself is JSON too.

use serde_json::{json, Value};

use crate::gateway::{chat, ledger, setup, setup_with};
use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

/// Asserts an Anthropic-shaped error and returns its message.
async fn assert_anthropic(response: reqwest::Response, status: u16, kind: &str) -> String {
    assert_eq!(response.status(), status, "status");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(!message.is_empty());
    message.to_string()
}

fn messages_request(app: &TestApp, key: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
}

#[tokio::test]
async fn an_unknown_model_is_a_404_in_each_apis_shape_and_quoted_briefly() {
    let (app, upstream, key) = setup().await;
    let response = app
        .post("/v1/chat/completions", &key, &chat("no-such-model", "hi"))
        .await;
    let message = assert_error(response, 404, "not_found_error", "model_not_found").await;
    assert!(message.contains("'no-such-model'"), "{message}");

    let long = "m".repeat(10_000);
    let response = app
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": long, "input": "x"}),
        )
        .await;
    let message = assert_error(response, 404, "not_found_error", "model_not_found").await;
    assert!(message.len() < 300, "{} characters", message.len());
    assert!(message.contains(&"m".repeat(100)) && !message.contains(&"m".repeat(101)));

    let response = messages_request(&app, &key)
        .json(&json!({"model": "claude-nope", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    let message = assert_anthropic(response, 404, "not_found_error").await;
    assert!(message.contains("claude-nope"), "{message}");
    assert!(upstream.received().is_empty(), "nothing went upstream");
    assert!(ledger(&app).await.is_empty());
}

#[tokio::test]
async fn a_providers_529_is_529_on_messages_and_503_elsewhere() {
    let (app, _upstream, key) = setup_with(fake_upstream::Options::default()).await;
    let overloaded = "hi [[fake:status=529,retry_after=7]]";
    let response = messages_request(&app, &key)
        .json(&json!({"model": "claude-test", "max_tokens": 10,
                      "messages": [{"role": "user", "content": overloaded}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["retry-after"], "7");
    assert_anthropic(response, 529, "overloaded_error").await;

    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("claude-test", overloaded),
        )
        .await;
    assert_eq!(response.headers()["retry-after"], "7");
    assert_error(response, 503, "upstream_error", "upstream_overloaded").await;

    // Failed attempts cost nothing.
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.4 == 0 && r.5 == 529), "{rows:?}");
}

#[tokio::test]
async fn an_overloaded_stream_says_so_in_each_format() {
    let (app, _upstream, key) = setup().await;
    let text = "hi [[fake:words=20,error_after=3]]";
    let mut body = chat("claude-test", text);
    body["stream"] = json!(true);
    let streamed = app
        .post("/v1/chat/completions", &key, &body)
        .await
        .text()
        .await
        .expect("text");
    let last = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .next_back()
        .expect("events");
    assert_eq!(last["error"]["code"], "upstream_overloaded", "{streamed}");

    let streamed = messages_request(&app, &key)
        .json(
            &json!({"model": "claude-test", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": text}]}),
        )
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text");
    assert!(
        streamed.contains("\"type\":\"overloaded_error\""),
        "{streamed}"
    );
}

#[tokio::test]
async fn everything_under_messages_answers_in_anthropics_shape() {
    let app = spawn_app_with("[limits]\nmax_body_bytes = 1000").await;
    let key = app.inference_key().await;

    let response = app
        .client
        .get(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("request");
    assert_anthropic(response, 405, "invalid_request_error").await;

    let response = messages_request(&app, &key)
        .json(&json!({}))
        .try_clone()
        .expect("clone")
        .send()
        .await
        .expect("request");
    // Wrong body, right path: the gateway's own 400 (model missing).
    assert_anthropic(response, 400, "invalid_request_error").await;

    let response = app
        .client
        .post(app.url("/v1/messages/no-such-thing"))
        .header("x-api-key", &key)
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_anthropic(response, 404, "not_found_error").await;

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let response = messages_request(&app, &key)
        .json(&big)
        .send()
        .await
        .expect("request");
    assert_anthropic(response, 413, "request_too_large").await;

    let response = messages_request(&app, &key)
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .expect("request");
    let message = assert_anthropic(response, 415, "invalid_request_error").await;
    assert!(message.contains("gzip"), "{message}");

    // The same refusals elsewhere are in the OpenAI shape.
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-encoding", "br")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_error(
        response,
        415,
        "invalid_request_error",
        "unsupported_content_encoding",
    )
    .await;
    let response = app
        .client
        .get(app.url("/v1/messagesque"))
        .send()
        .await
        .expect("request");
    assert_error(response, 404, "not_found_error", "route_not_found").await;
}

#[tokio::test]
async fn axums_own_rejections_are_json() {
    let app = spawn_app().await;
    // A path segment that is not UTF-8 once decoded.
    let response = app.get("/v1/account/keys/%FF", &app.prov_key).await;
    assert_eq!(response.status(), 400);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("type")
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    // A query that does not parse.
    let response = app
        .get("/v1/account/activity?days=%FF%FE", &app.prov_key)
        .await;
    assert!(response.status().is_client_error());
    let body: Value = response.json().await.expect("JSON");
    assert!(body["error"]["message"].is_string(), "{body}");
}
