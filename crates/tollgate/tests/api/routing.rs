//! Routing over several deployments and fallback models, against several fake upstreams:
//! weights, failover before the first byte, cooldowns, fallbacks at their own price, the
//! headers that say what served, and the reservation that covers every model a request
//! may end up on.

use fake_upstream::{FakeUpstream, Options};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::gateway::{chat, cost, ledger, nanos, CLAUDE, GPT};
use crate::helpers::{spawn_app_env, TestApp};

async fn upstream() -> FakeUpstream {
    fake_upstream::start(Options {
        openai_api_key: Some("up-secret".into()),
        anthropic_api_key: Some("up-secret".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream")
}

/// A port with nothing listening: connections to it are refused.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn provider(name: &str, kind: &str, base: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\napi_key_env = \"UP_KEY\"\n"
    )
}

async fn app(config: &str) -> (TestApp, String) {
    let env = |name: &str| (name == "UP_KEY").then(|| "up-secret".to_string());
    let app = spawn_app_env(config, &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    (app, key)
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

/// Sends `count` chat requests, `parallel` at a time; returns each response's status and
/// the served-by headers.
async fn many(app: &TestApp, key: &str, model: &str, count: usize) -> Vec<(u16, String, u32)> {
    futures_util::stream::iter(0..count)
        .map(|i| {
            let body = chat(model, &format!("request {i}"));
            async move {
                let response = app.post("/v1/chat/completions", key, &body).await;
                let status = response.status().as_u16();
                let provider = header(&response, "x-tollgate-provider").to_string();
                let attempts = header(&response, "x-tollgate-attempts")
                    .parse()
                    .expect("attempts");
                let _ = response.bytes().await;
                (status, provider, attempts)
            }
        })
        .buffered(16)
        .collect()
        .await
}

#[tokio::test]
async fn weights_split_traffic_three_to_one() {
    let (a, b) = (upstream().await, upstream().await);
    let config = format!(
        "{}{}[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n[[models.deployments]]\nprovider = \"a\"\nweight = 3\n[[models.deployments]]\nprovider = \"b\"\nweight = 1\n",
        provider("a", "openai", &a.base_url()),
        provider("b", "openai", &b.base_url()),
    );
    let (app, key) = app(&config).await;
    let results = many(&app, &key, "gpt-test", 2000).await;
    assert!(results.iter().all(|r| r.0 == 200 && r.2 == 1));
    let on_a = results.iter().filter(|r| r.1 == "a").count();
    assert_eq!(a.stats().requests as usize, on_a);
    assert_eq!(b.stats().requests as usize, 2000 - on_a);
    let share = on_a as f64 / 2000.0;
    assert!(
        (0.70..=0.80).contains(&share),
        "share on the heavier deployment: {share}"
    );
}

#[tokio::test]
async fn a_dead_deployment_is_failed_over_then_cooled_down() {
    let live = upstream().await;
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let config = format!(
        "[routing]\ncooldown_failures = 3\ncooldown_ms = 600000\n{}{}[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n[[models.deployments]]\nprovider = \"dead\"\n[[models.deployments]]\nprovider = \"live\"\n",
        provider("dead", "openai", &dead),
        provider("live", "openai", &live.base_url()),
    );
    let (app, key) = app(&config).await;
    // One at a time, so the order of failures is the order of requests.
    let mut results = Vec::new();
    for i in 0..300 {
        let response = app
            .post(
                "/v1/chat/completions",
                &key,
                &chat("gpt-test", &format!("r{i}")),
            )
            .await;
        assert_eq!(response.status(), 200, "request {i}");
        let provider = header(&response, "x-tollgate-provider").to_string();
        let attempts: u32 = header(&response, "x-tollgate-attempts").parse().expect("n");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["object"], "chat.completion");
        results.push((provider, attempts));
    }
    assert!(results.iter().all(|(p, _)| p == "live"));
    // The dead deployment was tried until its third failure, then never again.
    let failovers: Vec<usize> = (0..300).filter(|&i| results[i].1 == 2).collect();
    assert_eq!(failovers.len(), 3, "{failovers:?}");
    let last = *failovers.last().expect("three failovers");
    assert!(results[last + 1..].iter().all(|(_, n)| *n == 1));
    assert_eq!(live.stats().requests, 300);
    // Each request is charged once, at the model's price.
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 300);
    let total: i64 = ledger.iter().map(|r| r.4).sum();
    let expected: i64 = ledger
        .iter()
        .map(|r| cost(&GPT, r.1.into(), 0, r.3.into()))
        .sum();
    assert_eq!(total, expected);
    assert!(ledger.iter().all(|r| r.5 == 200 && r.4 > 0));
}

fn fallback_config(primary_dead: &[String], fallback: &FakeUpstream) -> String {
    let mut config = String::new();
    let mut deployments = String::new();
    for (i, base) in primary_dead.iter().enumerate() {
        config.push_str(&provider(&format!("dead{i}"), "openai", base));
        deployments.push_str(&format!("[[models.deployments]]\nprovider = \"dead{i}\"\n"));
    }
    config.push_str(&provider("claude", "anthropic", &fallback.base_url()));
    config.push_str(&format!(
        "[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\nfallbacks = [\"claude-test\"]\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n{deployments}\
         [[models]]\nid = \"claude-test\"\nprovider = \"claude\"\nupstream_model = \"claude-up\"\nendpoints = [\"chat.completions\", \"messages\"]\nmax_output_tokens = 100\npricing = {{ input = \"3.00\", output = \"15.00\" }}\n"
    ));
    config
}

#[tokio::test]
async fn every_deployment_down_the_fallback_serves_at_its_own_price() {
    let claude = upstream().await;
    let dead = vec![
        format!("http://127.0.0.1:{}/v1", closed_port()),
        format!("http://127.0.0.1:{}/v1", closed_port()),
    ];
    let (app, key) = app(&fallback_config(&dead, &claude)).await;
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "Hello there"),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-model"), "claude-test");
    assert_eq!(header(&response, "x-tollgate-provider"), "claude");
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    let charged = nanos(header(&response, "x-tollgate-cost"));
    let body: Value = response.json().await.expect("json");
    // Translated from Messages, named as the client knows the model that served.
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-test");
    let usage = &body["usage"];
    let expected = cost(
        &CLAUDE,
        usage["prompt_tokens"].as_i64().expect("in").into(),
        0,
        usage["completion_tokens"].as_i64().expect("out").into(),
    );
    assert_eq!(charged, expected);
    let received = claude.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/messages");
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].4, expected);
    // The record says what was asked for and what served; activity tells them apart.
    let record = app
        .state
        .store
        .usage_record(&ledger[0].0)
        .await
        .expect("read")
        .expect("record");
    assert_eq!(record.model, "claude-test");
    assert_eq!(record.detail.requested_model.as_deref(), Some("gpt-test"));
    assert_eq!(record.detail.provider.as_deref(), Some("claude"));
    assert_eq!(record.detail.attempts, 3);
    assert!(!record.detail.estimated);
    let activity: Value = app
        .get("/v1/account/activity?days=1", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(activity["total_stats"]["fallback_requests"], 1);
    assert_eq!(activity["top_models"][0]["model_name"], "claude-test");
    assert_eq!(activity["top_models"][0]["fallback_requests"], 1);
}

#[tokio::test]
async fn a_streamed_request_fails_over_before_its_first_byte() {
    let claude = upstream().await;
    let dead = vec![format!("http://127.0.0.1:{}/v1", closed_port())];
    let (app, key) = app(&fallback_config(&dead, &claude)).await;
    let mut body = chat("gpt-test", "Stream to me");
    body["stream"] = json!(true);
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-model"), "claude-test");
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let text = response.text().await.expect("stream");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(chunks.iter().all(|c| c["model"] == "claude-test"));
    assert!(chunks.iter().all(|c| c.get("error").is_none()));
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 1);
    assert!(ledger[0].4 > 0);
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_byte_is_not_retried() {
    let (a, b) = (upstream().await, upstream().await);
    let config = format!(
        "{}{}[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n[[models.deployments]]\nprovider = \"a\"\n[[models.deployments]]\nprovider = \"b\"\n",
        provider("a", "openai", &a.base_url()),
        provider("b", "openai", &b.base_url()),
    );
    let (app, key) = app(&config).await;
    let mut body = chat("gpt-test", "Break [[fake:error_after=3]]");
    body["stream"] = json!(true);
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-attempts"), "1");
    let text = response.text().await.expect("stream");
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(a.stats().requests + b.stats().requests, 1);
}

#[tokio::test]
async fn a_key_that_cannot_afford_the_fallback_is_refused_before_any_call() {
    let (gpt, claude) = (upstream().await, upstream().await);
    let config = format!(
        "{}{}[[models]]\nid = \"gpt-test\"\nprovider = \"gpt\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\nfallbacks = [\"claude-test\"]\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n\
         [[models]]\nid = \"claude-test\"\nprovider = \"claude\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"3.00\", output = \"15.00\" }}\n",
        provider("gpt", "openai", &gpt.base_url()),
        provider("claude", "anthropic", &claude.base_url()),
    );
    let (app, _) = app(&config).await;
    // 0.001 pays the primary's worst case (about 0.0002), not the fallback's (about 0.0018).
    let (_, key) = app
        .create_key(json!({"name": "tight", "credit_limit": 0.001}))
        .await;
    let response = app
        .post("/v1/chat/completions", &key, &chat("gpt-test", "Hello"))
        .await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "credit_limit_exceeded");
    assert_eq!(gpt.stats().requests + claude.stats().requests, 0);
}

#[tokio::test]
async fn a_lower_priority_serves_only_when_the_higher_fails() {
    let (main, spare) = (upstream().await, upstream().await);
    let config = format!(
        "{}{}[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n[[models.deployments]]\nprovider = \"main\"\n[[models.deployments]]\nprovider = \"spare\"\npriority = 1\nweight = 100\n",
        provider("main", "openai", &main.base_url()),
        provider("spare", "openai", &spare.base_url()),
    );
    let (app, key) = app(&config).await;
    let results = many(&app, &key, "gpt-test", 100).await;
    assert!(results.iter().all(|r| r.0 == 200 && r.1 == "main"));
    assert_eq!(spare.stats().requests, 0);
    // A provider failure on the main deployment goes to the spare.
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "x [[fake:status=503]]"),
        )
        .await;
    // The directive fails every deployment alike: the client sees the provider's failure
    // after one attempt on each and one more on the first.
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-tollgate-attempts"), "3");
    assert_eq!(spare.stats().requests, 1);
}

#[tokio::test]
async fn a_client_fault_is_not_retried() {
    let (a, b) = (upstream().await, upstream().await);
    let config = format!(
        "{}{}[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n[[models.deployments]]\nprovider = \"a\"\n[[models.deployments]]\nprovider = \"b\"\n",
        provider("a", "openai", &a.base_url()),
        provider("b", "openai", &b.base_url()),
    );
    let (app, key) = app(&config).await;
    for status in [400, 413, 422] {
        let response = app
            .post(
                "/v1/chat/completions",
                &key,
                &chat("gpt-test", &format!("x [[fake:status={status}]]")),
            )
            .await;
        assert_eq!(response.status(), status);
        assert_eq!(header(&response, "x-tollgate-attempts"), "1");
    }
    assert_eq!(a.stats().requests + b.stats().requests, 3);
}

#[tokio::test]
async fn a_429_with_retry_after_moves_traffic_away_for_that_long_then_back() {
    let (a, b) = (upstream().await, upstream().await);
    let config = format!(
        "[routing]\ncooldown_ms = 600000\n{}{}[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n[[models.deployments]]\nprovider = \"a\"\n[[models.deployments]]\nprovider = \"b\"\n",
        provider("a", "openai", &a.base_url()),
        provider("b", "openai", &b.base_url()),
    );
    let (app, key) = app(&config).await;
    // Warm both up, then make A's next answer a 429 asking for 2 s.
    let _ = many(&app, &key, "gpt-test", 20).await;
    a.faults()
        .next(
            1,
            fake_upstream::Fault::Status {
                status: 429,
                retry_after: Some(2),
            },
        )
        .await
        .expect("fault");
    // Until A has taken the 429, requests go both ways; each succeeds (failed over).
    let before = a.stats().faulted;
    let mut i = 0;
    while a.stats().faulted == before {
        let r = app
            .post(
                "/v1/chat/completions",
                &key,
                &chat("gpt-test", &format!("w{i}")),
            )
            .await;
        assert_eq!(r.status(), 200);
        i += 1;
        assert!(i < 200, "A never took the 429");
    }
    let limited_at = std::time::Instant::now();
    // For the next 1.5 s (well inside the 2 s asked for), A gets nothing.
    let a_then = a.stats().requests;
    while limited_at.elapsed() < std::time::Duration::from_millis(1500) {
        let r = app
            .post("/v1/chat/completions", &key, &chat("gpt-test", "away"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-tollgate-provider"), "b");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        a.stats().requests,
        a_then,
        "A was sent traffic while cooling down"
    );
    // After the 2 s (and not the configured 600 s), traffic comes back to A.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let results = many(&app, &key, "gpt-test", 100).await;
    assert!(results.iter().all(|r| r.0 == 200));
    assert!(
        results.iter().any(|r| r.1 == "a"),
        "traffic never came back to A"
    );
}

/// Failing over to another deployment does not wait: with a pause longer than the whole
/// request may take, the live deployment still serves. Trying the same deployment again
/// does wait: the pause would pass the deadline, so the request ends after one attempt.
#[tokio::test]
async fn another_deployment_is_tried_at_once_the_same_one_after_a_pause() {
    let live = upstream().await;
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let model = |id: &str, deployments: &[&str]| {
        let mut text = format!("[[models]]\nid = \"{id}\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n");
        for (priority, d) in deployments.iter().enumerate() {
            text.push_str(&format!(
                "[[models.deployments]]\nprovider = \"{d}\"\npriority = {priority}\n"
            ));
        }
        text
    };
    let config = format!(
        "[routing]\nmax_attempts = 2\ncooldown_failures = 1000\nbackoff_ms = 60000\nrequest_timeout_ms = 20000\n{}{}{}{}",
        provider("dead", "openai", &dead),
        provider("live", "openai", &live.base_url()),
        model("two", &["dead", "live"]),
        model("one", &["dead"]),
    );
    let (app, key) = app(&config).await;
    let response = app
        .post("/v1/chat/completions", &key, &chat("two", "hi"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-provider"), "live");
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");

    let response = app
        .post("/v1/chat/completions", &key, &chat("one", "hi"))
        .await;
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-tollgate-attempts"), "1");
}
