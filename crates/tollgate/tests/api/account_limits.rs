//! Account-level rate limits by model pattern: every key of an account shares the limit
//! of the models matching it; other accounts and other models are not affected; over
//! the limit is a 429 with `Retry-After`, counted nowhere.

use serde_json::Value;

use crate::gateway::chat;
use crate::helpers::{assert_error, TestApp};
use crate::passthrough::setup_extra;

const EXTRA: &str = r#"
[[models]]
id = "llama:free"
provider = "openai"
endpoints = ["chat.completions", "messages"]
max_output_tokens = 1000
pricing = { input = "0", output = "0" }

[[models]]
id = "mistral:free"
provider = "openai"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = { input = "0", output = "0" }

[[models]]
id = "daily-test"
provider = "openai"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = { input = "0.40", output = "1.60" }

[[rate_limits]]
models = "*:free"
scope = "account"
rpm = 3
rpd = 100

[[rate_limits]]
models = "daily-*"
scope = "account"
rpd = 2
"#;

async fn status(app: &TestApp, key: &str, model: &str) -> reqwest::Response {
    app.post("/v1/chat/completions", key, &chat(model, "hi"))
        .await
}

#[tokio::test]
async fn free_models_share_an_accounts_limit_across_its_keys() {
    let (app, _up, first) = setup_extra(EXTRA).await;
    let (_, second) = app.create_key(serde_json::json!({"name": "second"})).await;
    let (other_account, other_prov) = app.new_account("other").await;
    let _ = other_account;
    // Three requests a minute over both free models and both keys.
    for (key, model) in [
        (&first, "llama:free"),
        (&second, "mistral:free"),
        (&first, "mistral:free"),
    ] {
        assert_eq!(status(&app, key, model).await.status(), 200, "{model}");
    }
    for (key, model) in [(&second, "llama:free"), (&first, "mistral:free")] {
        let refused = status(&app, key, model).await;
        let retry: u64 = refused.headers()["retry-after"]
            .to_str()
            .expect("retry-after")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&retry), "{retry}");
        let message =
            assert_error(refused, 429, "rate_limit_exceeded", "account_rate_limited").await;
        assert!(
            message.contains("'*:free'") && message.contains("3 requests per minute"),
            "{message}"
        );
    }
    // Anthropic's shape on /v1/messages.
    let messages = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &first)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "llama:free", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(messages.status(), 429);
    assert!(messages.headers().contains_key("retry-after"));
    let body: Value = messages.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    // Other models, and other accounts, are not limited.
    assert_eq!(status(&app, &first, "gpt-test").await.status(), 200);
    let (_, other_key) = {
        let r = app
            .post(
                "/v1/account/keys",
                &other_prov,
                &serde_json::json!({"name": "o"}),
            )
            .await;
        let v: Value = r.json().await.expect("json");
        (
            v["id"].as_i64(),
            v["key"].as_str().expect("key").to_string(),
        )
    };
    assert_eq!(status(&app, &other_key, "llama:free").await.status(), 200);
}

#[tokio::test]
async fn a_daily_limit_refuses_with_the_wait_until_a_slot_frees() {
    let (app, _up, key) = setup_extra(EXTRA).await;
    for _ in 0..2 {
        assert_eq!(status(&app, &key, "daily-test").await.status(), 200);
    }
    let refused = status(&app, &key, "daily-test").await;
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((86_000..=86_400).contains(&retry), "{retry}");
    let message = assert_error(refused, 429, "rate_limit_exceeded", "account_rate_limited").await;
    assert!(message.contains("2 requests per day"), "{message}");
}
