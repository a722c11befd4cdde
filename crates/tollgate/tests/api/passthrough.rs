//! Client headers through the gateway: the betas and versions each provider kind may
//! receive reach it, credentials and the operator's account headers never do; Claude
//! Code's recorded request works on an Anthropic model only because its betas pass.

use fake_upstream::{FakeUpstream, Options};
use serde_json::{json, Value};

use crate::gateway::{catalog, cost, ledger, nanos, CLAUDE, GPT};
use crate::helpers::{spawn_app_env, TestApp};

/// Models with the real agents' names and output limits, beside the usual test catalog.
pub const AGENT_MODELS: &str = r#"
[[models]]
id = "claude-sonnet-4-5"
provider = "anthropic"
endpoints = ["messages", "chat.completions", "responses"]
context_window = 200000
max_output_tokens = 64000
pricing = { input = "3.00", cached_input = "0.30", output = "15.00", web_search = "0.01" }

[[models]]
id = "gpt-5-codex"
provider = "openai"
endpoints = ["chat.completions", "responses", "messages"]
context_window = 400000
max_output_tokens = 128000
pricing = { input = "0.40", cached_input = "0.10", output = "1.60", web_search = "0.01" }

[[models]]
id = "qwen-chat-only"
provider = "chat-only"
endpoints = ["chat.completions", "responses", "messages"]
context_window = 400000
max_output_tokens = 128000
pricing = { input = "0.40", cached_input = "0.10", output = "1.60", web_search = "0.01" }
"#;

/// A gateway over the fake upstream with the agent models; credits granted.
pub async fn setup_agents() -> (TestApp, FakeUpstream, String) {
    setup_extra(AGENT_MODELS).await
}

/// A gateway over the fake upstream with the test catalog and `extra` models.
pub async fn setup_extra(extra: &str) -> (TestApp, FakeUpstream, String) {
    let upstream = fake_upstream::start(Options {
        openai_api_key: Some("up-openai-secret".into()),
        anthropic_api_key: Some("up-anthropic-secret".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream");
    let env = |name: &str| match name {
        "UP_OPENAI" => Some("up-openai-secret".to_string()),
        "UP_ANTHROPIC" => Some("up-anthropic-secret".to_string()),
        _ => None,
    };
    let config = format!("{}{extra}", catalog(&upstream));
    let app = spawn_app_env(&config, &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    (app, upstream, key)
}

/// A recorded request of the golden translation cases.
pub fn golden(case: &str) -> Value {
    let path = format!(
        "{}/../tollgate-formats/tests/golden/{case}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("golden JSON")
}

/// Claude Code 2.1.328's `anthropic-beta` on Sonnet 4.5.
pub const CLAUDE_CODE_BETAS: &str = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20";

async fn claude_code_call(
    app: &TestApp,
    key: &str,
    body: &Value,
    betas: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/messages?beta=true"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("user-agent", "claude-cli/2.1.328 (external, sdk-cli)")
        .json(body);
    if let Some(betas) = betas {
        request = request.header("anthropic-beta", betas);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn claude_codes_betas_reach_an_anthropic_model() {
    let (app, upstream, key) = setup_agents().await;
    let mut body = golden("messages_to_chat/claude_code_first_turn/request.in.json");
    body["stream"] = json!(false);

    // Without its betas the provider refuses the beta-only fields, as Anthropic does:
    // the header is what makes the request valid.
    let refused = claude_code_call(&app, &key, &body, None).await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("context_management")),
        "{error}"
    );

    let response = claude_code_call(&app, &key, &body, Some(CLAUDE_CODE_BETAS)).await;
    assert_eq!(response.status(), 200);
    let charged = nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["type"], "message");
    let sent = upstream.received().last().expect("received").clone();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("anthropic-beta"), Some(CLAUDE_CODE_BETAS));
    assert_eq!(sent.header("x-api-key"), Some("up-anthropic-secret"));
    assert!(sent
        .json()
        .expect("json")
        .get("context_management")
        .is_some());
    let usage = &answer["usage"];
    let input = usage["input_tokens"].as_i64().expect("input")
        + usage["cache_read_input_tokens"].as_i64().unwrap_or(0)
        + usage["cache_creation_input_tokens"].as_i64().unwrap_or(0);
    let output = usage["output_tokens"].as_i64().expect("output");
    let expected = cost(&CLAUDE, input.into(), 0, output.into());
    assert_eq!(charged, expected);
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2, "the refusal is recorded at no cost");
    assert_eq!((rows[0].4, rows[0].5), (0, 400));
    assert_eq!((rows[1].1, rows[1].3, rows[1].4), (input, output, expected));

    // Streamed, as Claude Code sends it: the betas pass as well.
    body["stream"] = json!(true);
    let streamed = claude_code_call(&app, &key, &body, Some(CLAUDE_CODE_BETAS)).await;
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.expect("text");
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(!text.contains("event: error"), "{text}");
}

#[tokio::test]
async fn claude_code_on_an_openai_model_sends_no_anthropic_header_upstream() {
    let (app, upstream, key) = setup_agents().await;
    let mut body = golden("messages_to_chat/claude_code_first_turn/request.in.json");
    body["model"] = json!("gpt-5-codex");
    body["stream"] = json!(false);
    let response = claude_code_call(&app, &key, &body, Some(CLAUDE_CODE_BETAS)).await;
    assert_eq!(response.status(), 200);
    let charged = nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    );
    let dropped = response.headers()["x-tollgate-dropped-fields"]
        .to_str()
        .expect("dropped")
        .to_string();
    assert!(dropped.contains("context_management"), "{dropped}");
    let answer: Value = response.json().await.expect("json");
    let sent = upstream.received().last().expect("received").clone();
    assert_eq!(sent.path, "/v1/chat/completions");
    for name in ["anthropic-beta", "anthropic-version", "x-api-key"] {
        assert_eq!(sent.header(name), None, "{name} reached an OpenAI provider");
    }
    let input = answer["usage"]["input_tokens"].as_i64().expect("input");
    let output = answer["usage"]["output_tokens"].as_i64().expect("output");
    assert_eq!(charged, cost(&GPT, input.into(), 0, output.into()));
}

#[tokio::test]
async fn credentials_and_account_headers_never_reach_a_provider() {
    let (app, upstream, key) = setup_agents().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let hostile = [
        ("openai-organization", "org-client-chosen"),
        ("openai-project", "proj-client-chosen"),
        ("cookie", "session=client"),
        ("proxy-authorization", "Basic Y2xpZW50"),
        ("anthropic-admin-key", "sk-ant-admin-client"),
        ("traceparent", traceparent),
        ("tracestate", "tollgate=test"),
        ("openai-beta", "responses=experimental"),
        ("anthropic-beta", "context-1m-2025-08-07"),
        ("anthropic-version", "2099-01-01"),
    ];
    let calls = [
        ("/v1/chat/completions", "gpt-test", "/v1/chat/completions"),
        ("/v1/chat/completions", "claude-test", "/v1/messages"),
        ("/v1/messages", "claude-test", "/v1/messages"),
    ];
    for (path, model, upstream_path) in calls {
        let mut request = app
            .client
            .post(app.url(path))
            .bearer_auth(&key)
            .header("x-api-key", &key)
            .json(&json!({"model": model, "max_tokens": 20,
                          "messages": [{"role": "user", "content": "hi"}]}));
        for (name, value) in hostile {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 200, "{path} {model}");
        let sent = upstream.received().last().expect("received").clone();
        assert_eq!(sent.path, upstream_path);
        let everything = format!("{:?}", sent.headers);
        assert!(!everything.contains(&key), "the client's key went upstream");
        for name in [
            "openai-organization",
            "openai-project",
            "cookie",
            "proxy-authorization",
            "anthropic-admin-key",
        ] {
            assert_eq!(
                sent.header(name),
                None,
                "{name} went upstream on {path} {model}"
            );
        }
        assert_eq!(sent.header("traceparent"), Some(traceparent));
        assert_eq!(sent.header("tracestate"), Some("tollgate=test"));
        let anthropic = upstream_path == "/v1/messages";
        if anthropic {
            assert_eq!(sent.header("x-api-key"), Some("up-anthropic-secret"));
            assert_eq!(sent.header("anthropic-beta"), Some("context-1m-2025-08-07"));
            assert_eq!(sent.header("openai-beta"), None);
            // The client's version replaces the provider's only when its body went
            // through as it came.
            let version = if path == "/v1/messages" {
                "2099-01-01"
            } else {
                "2023-06-01"
            };
            assert_eq!(sent.header("anthropic-version"), Some(version), "{path}");
        } else {
            assert_eq!(
                sent.header("authorization"),
                Some("Bearer up-openai-secret")
            );
            assert_eq!(sent.header("openai-beta"), Some("responses=experimental"));
            assert_eq!(sent.header("anthropic-beta"), None);
        }
    }
}

/// Each agent's recorded request, as it came, through the real gateway to each kind of
/// provider: answered 200, in the client's format, and charged what the provider reported.
#[tokio::test]
async fn every_recorded_agent_request_goes_through_to_every_provider_kind() {
    let (app, upstream, key) = setup_agents().await;
    let cases = [
        ("messages_to_chat/claude_code_first_turn", "/v1/messages"),
        (
            "messages_to_chat/claude_code_tool_round_trip",
            "/v1/messages",
        ),
        ("responses_to_chat/codex_first_turn", "/v1/responses"),
        ("responses_to_chat/codex_tool_round_trip", "/v1/responses"),
        ("responses_to_messages/codex_first_turn", "/v1/responses"),
        (
            "responses_to_messages/codex_tool_round_trip",
            "/v1/responses",
        ),
    ];
    let models = [
        ("claude-sonnet-4-5", "/v1/messages"),
        ("gpt-5-codex", ""),
        ("qwen-chat-only", "/v1/chat/completions"),
    ];
    for (case, path) in cases {
        for (model, upstream_path) in models {
            let mut body = golden(&format!("{case}/request.in.json"));
            body["model"] = json!(model);
            body["stream"] = json!(false);
            let mut request = app
                .client
                .post(app.url(path))
                .header("x-api-key", &key)
                .header("anthropic-version", "2023-06-01")
                .json(&body);
            if path == "/v1/messages" {
                request = request.header("anthropic-beta", CLAUDE_CODE_BETAS);
            }
            let response = request.send().await.expect("request");
            let status = response.status();
            let charged = response
                .headers()
                .get("x-tollgate-cost")
                .map(|v| nanos(v.to_str().expect("cost")));
            let answer: Value = response.json().await.expect("json");
            assert_eq!(status, 200, "{case} on {model}: {answer}");
            let sent = upstream.received().last().expect("received").clone();
            let expected_path = match (upstream_path, path) {
                ("", "/v1/messages") => "/v1/chat/completions",
                ("", p) => p,
                (p, _) => p,
            };
            assert_eq!(sent.path, expected_path, "{case} on {model}");
            let (input, output) = if path == "/v1/messages" {
                assert_eq!(answer["type"], "message", "{case} on {model}");
                let u = &answer["usage"];
                (
                    u["input_tokens"].as_i64().unwrap_or(0)
                        + u["cache_read_input_tokens"].as_i64().unwrap_or(0)
                        + u["cache_creation_input_tokens"].as_i64().unwrap_or(0),
                    u["output_tokens"].as_i64().expect("output"),
                )
            } else {
                assert_eq!(answer["object"], "response", "{case} on {model}");
                let u = &answer["usage"];
                (
                    u["input_tokens"].as_i64().expect("input"),
                    u["output_tokens"].as_i64().expect("output"),
                )
            };
            let prices = if model.starts_with("claude") {
                &CLAUDE
            } else {
                &GPT
            };
            let searches = answer["output"].as_array().map_or(0, |o| {
                o.iter().filter(|i| i["type"] == "web_search_call").count()
            });
            if searches == 0 {
                assert_eq!(
                    charged,
                    Some(cost(prices, input.into(), 0, output.into())),
                    "{case} on {model}"
                );
            }
        }
    }
}
