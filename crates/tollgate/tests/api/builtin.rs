//! The built-in catalog: with no providers or models configured and only `OPENAI_API_KEY`
//! (and `OPENAI_BASE_URL`, here the fake upstream) in the environment, the catalog's OpenAI
//! models are listed with their prices and served, metered at those prices.

use fake_upstream::Options;
use serde_json::{json, Value};

use crate::gateway::{chat, cost, ledger, GPT};
use crate::helpers::spawn_app_env;

#[tokio::test]
async fn only_an_openai_key_serves_the_builtin_openai_models() {
    let up = fake_upstream::start(Options {
        openai_api_key: Some("sk-from-env".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream");
    let base = up.base_url();
    let env = move |name: &str| match name {
        "OPENAI_API_KEY" => Some("sk-from-env".to_string()),
        "OPENAI_BASE_URL" => Some(base.clone()),
        _ => None,
    };
    let app = spawn_app_env("", &env).await;
    let listed: Value = reqwest::get(app.url("/v1/models"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for id in [
        "gpt-5",
        "gpt-4.1-mini",
        "gpt-4o-mini",
        "text-embedding-3-small",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(!ids
        .iter()
        .any(|id| id.starts_with("claude") || id.starts_with("gemini")));
    let mini = listed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == "gpt-4.1-mini"))
        .expect("gpt-4.1-mini");
    assert_eq!(
        mini["pricing"],
        json!({"per_input_token": 0.0000004, "per_cached_input_token": 0.0000001, "per_output_token": 0.0000016})
    );
    app.grant("10").await;
    let key = app.inference_key().await;
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-4.1-mini", "hello builtin"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let sent = &up.received()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-from-env"));
    let (input, output) = (
        body["usage"]["prompt_tokens"].as_i64().expect("input"),
        body["usage"]["completion_tokens"].as_i64().expect("output"),
    );
    let rows = ledger(&app).await;
    assert_eq!(rows[0].4, cost(&GPT, input.into(), 0, output.into()));
}

#[tokio::test]
async fn the_catalog_can_be_turned_off() {
    let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk".to_string());
    let app = spawn_app_env("[catalog]\nbuiltin = false\n", &env).await;
    let listed: Value = reqwest::get(app.url("/v1/models"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"], json!([]));
}

#[tokio::test]
async fn aws_credentials_alone_serve_the_builtin_bedrock_models() {
    let up = fake_upstream::start(Options::default())
        .await
        .expect("fake upstream");
    let root = up.root_url();
    let env = move |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(fake_upstream::TEST_AWS_ACCESS_KEY_ID.to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(fake_upstream::TEST_AWS_SECRET_ACCESS_KEY.to_string()),
        "AWS_REGION" => Some("eu-west-3".to_string()),
        "BEDROCK_BASE_URL" => Some(root.clone()),
        _ => None,
    };
    let app = spawn_app_env("", &env).await;
    let listed: Value = reqwest::get(app.url("/v1/models"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let data = listed["data"].as_array().expect("data");
    assert!(data.iter().all(|m| m["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("bedrock/"))));
    let nova = data
        .iter()
        .find(|m| m["id"] == "bedrock/nova-pro")
        .expect("bedrock/nova-pro");
    assert_eq!(
        nova["pricing"],
        json!({"per_input_token": 0.0000008, "per_cached_input_token": 0.0000002, "per_output_token": 0.0000032})
    );
    assert!(data.iter().any(|m| m["id"] == "bedrock/claude-sonnet-4-5"));
    app.grant("10").await;
    let key = app.inference_key().await;
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("bedrock/nova-pro", "hello builtin"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let sent = &up.received()[0];
    assert_eq!(sent.path, "/model/amazon.nova-pro-v1%3A0/converse");
    // Signed for the region of the environment.
    assert!(sent
        .header("authorization")
        .is_some_and(|a| a.contains("/eu-west-3/bedrock/aws4_request")));
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1);
    let nova_prices = crate::gateway::Prices {
        input: 800_000_000,
        cached: 200_000_000,
        output: 3_200_000_000,
    };
    assert_eq!(
        rows[0].4,
        cost(&nova_prices, rows[0].1.into(), 0, rows[0].3.into())
    );
}
