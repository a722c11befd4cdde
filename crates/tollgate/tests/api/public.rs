//! Public endpoints: models, startups, health, and `GET /v1/key`.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_env};

const CATALOG: &str = r#"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "gpt-4.1-mini"
provider = "up"
endpoints = ["chat.completions", "responses"]
context_window = 1047576
max_output_tokens = 32768
pricing = { input = "1.50", cached_input = "0.375", output = "7.50" }

[[startups]]
name = "Example"
url = "https://example.com"
"#;

#[tokio::test]
async fn models_are_listed_anonymously_or_with_an_inference_key() {
    let app = spawn_app_env(CATALOG, &|_| None).await;
    let anonymous = app
        .client
        .get(app.url("/v1/models"))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 200);
    let raw = anonymous.text().await.expect("text");
    // Prices are written as exact decimals, not floats in exponent form.
    assert!(raw.contains(r#""per_input_token":0.0000015"#), "{raw}");
    assert!(
        raw.contains(r#""per_cached_input_token":0.000000375"#),
        "{raw}"
    );
    let body: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(body["object"], "list");
    let model = &body["data"][0];
    assert_eq!(model["id"], "gpt-4.1-mini");
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "up");
    assert_eq!(model["context_window"], 1047576);
    assert_eq!(
        model["supported_endpoints"],
        json!(["chat.completions", "responses"])
    );
    assert_eq!(model["pricing"]["per_input_token"], 0.0000015);
    assert_eq!(model["pricing"]["per_cached_input_token"], 0.000000375);
    assert_eq!(model["pricing"]["per_output_token"], 0.0000075);

    let key = app.inference_key().await;
    let authed = app.get("/v1/models", &key).await;
    assert_eq!(authed.status(), 200);
    // A bad key is refused rather than ignored.
    assert_error(
        app.get("/v1/models", "tg-inf-bad").await,
        401,
        "authentication_error",
        "invalid_api_key",
    )
    .await;
}

#[tokio::test]
async fn startups_are_public() {
    let app = spawn_app_env(CATALOG, &|_| None).await;
    let body: Value = app
        .client
        .get(app.url("/v1/startups"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        body,
        json!({"object": "list", "data": [{"name": "Example", "url": "https://example.com"}]})
    );
}

#[tokio::test]
async fn health_and_request_ids() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status(), 200);
    let id = ready.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    assert!(id.starts_with("req_"));
    let other = app
        .client
        .get(app.url("/nope"))
        .send()
        .await
        .expect("request");
    assert!(other.headers().contains_key("x-request-id"));
    assert_ne!(other.headers()["x-request-id"].to_str().expect("id"), id);
}

#[tokio::test]
async fn own_key_shows_limit_usage_and_remaining() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({"name": "watcher", "credit_limit": 3}))
        .await;
    let body: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(body["id"], id);
    assert_eq!(body["credit_limit"], 3.0);
    assert_eq!(body["usage"], "0.00");
    assert_eq!(body["limit_remaining"], "3.00");
    assert!(body.get("key").is_none());
}
