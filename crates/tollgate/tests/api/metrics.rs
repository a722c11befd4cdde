//! `GET /metrics`: a known mix of requests through the real server (plain, streamed,
//! translated, a failed upstream, refusals for budget, rate limit and a bad key, a token
//! count, a client that hangs up mid-stream), then one scrape parsed with a Prometheus
//! text parser, its counters and histogram counts checked exactly (against the
//! directives given to the fake upstream and against the ledger); the names against the
//! docs, dashboard and alert rules; the bearer token and the separate listener; the
//! settings. The label bounds are in `metric_labels`.

use std::time::Duration;

use crate::scrape::Metrics;
use serde_json::{json, Value};

use crate::gateway::{chat, ledger, setup};
use crate::helpers::{spawn_app_env, TestApp};

fn text(directives: &str) -> String {
    format!(
        "Tell me something [[fake:{directive}]]",
        directive = directives
    )
}

async fn send(app: &TestApp, key: &str, path: &str, body: &Value) -> (u16, String, Value) {
    let response = app.post(path, key, body).await;
    let status = response.status().as_u16();
    let attempts = response
        .headers()
        .get("x-tollgate-attempts")
        .map(|v| v.to_str().expect("ascii").to_string())
        .unwrap_or_default();
    let bytes = response.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, attempts, json)
}

/// Waits until a scrape satisfies `ready` (the server counts a hang-up once it notices).
async fn scrape_until(app: &TestApp, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    for _ in 0..200 {
        let (metrics, _) = Metrics::scrape(app, None).await;
        if ready(&metrics) {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the scrape never showed what was awaited");
}

const REQUESTS: &str = "tollgate_requests_total";

#[tokio::test]
async fn a_known_mix_of_requests_shows_in_one_scrape_exactly() {
    let (app, _upstream, key) = setup().await;
    let chat_path = "/v1/chat/completions";
    let mut plain = chat(
        "gpt-test",
        &text("report_input=10,report_output=5,cached=4"),
    );
    plain["max_tokens"] = json!(50);
    assert_eq!(send(&app, &key, chat_path, &plain).await.0, 200);

    let mut streamed = chat("gpt-test", &text("report_input=20,report_output=7"));
    streamed["stream"] = json!(true);
    assert_eq!(send(&app, &key, chat_path, &streamed).await.0, 200);

    // Translated: a Messages request for a model served by an OpenAI provider.
    let translated = json!({"model": "gpt-test", "max_tokens": 50,
        "messages": [{"role": "user", "content": text("report_input=30,report_output=9")}]});
    assert_eq!(send(&app, &key, "/v1/messages", &translated).await.0, 200);

    // The upstream fails every attempt.
    let (status, attempts, failed) = send(
        &app,
        &key,
        chat_path,
        &chat("gpt-test", &text("status=500")),
    )
    .await;
    assert_eq!(status, 502, "{failed}");
    let failed_code = failed["error"]["code"].as_str().expect("code").to_string();
    let attempts: f64 = attempts.parse().expect("attempts header");
    assert!(
        attempts >= 2.0,
        "a lone deployment is tried again: {attempts}"
    );

    // Refused for the key's limit, then for the key's rate limit, then a bad key.
    let (_, poor) = app
        .create_key(json!({"name": "poor", "credit_limit": 0.000001}))
        .await;
    let (status, _, body) = send(&app, &poor, chat_path, &chat("gpt-test", "hi")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (402, Some("credit_limit_exceeded"))
    );
    let (_, slow) = app
        .create_key(json!({"name": "slow", "rate_limit_rpm": 1}))
        .await;
    let one = chat("gpt-test", &text("report_input=1,report_output=1"));
    assert_eq!(send(&app, &slow, chat_path, &one).await.0, 200);
    let (status, _, body) = send(&app, &slow, chat_path, &one).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let (status, _, _) = send(&app, "tg-inf-not-a-key", chat_path, &one).await;
    assert_eq!(status, 401);

    // A token count, forwarded to the Anthropic provider (free: no tokens, no cost).
    let count = json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        send(&app, &key, "/v1/messages/count_tokens", &count)
            .await
            .0,
        200
    );

    // A client hangs up on an endless stream after its first bytes.
    let endless = json!({"model": "claude-test", "max_tokens": 1000, "stream": true,
        "messages": [{"role": "user", "content": text("endless,chunk_ms=2")}]});
    let mut response = app.post("/v1/messages", &key, &endless).await;
    assert_eq!(response.status(), 200);
    response
        .chunk()
        .await
        .expect("read")
        .expect("a first chunk");
    drop(response);

    let m = scrape_until(&app, |m| {
        m.value(
            "tollgate_client_disconnects_total",
            &[("endpoint", "messages")],
        ) == 1.0
            && m.value("tollgate_open_streams", &[]) == 0.0
    })
    .await;
    // The ledger has every record (the hung-up stream's is sent by a task of its own)
    // once the writer caught up; scrape again after it.
    let mut records = ledger(&app).await;
    for _ in 0..100 {
        if records.len() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        records = ledger(&app).await;
    }
    assert_eq!(records.len(), 6, "{records:?}");
    let (m2, _) = Metrics::scrape(&app, None).await;
    drop(m);
    let m = m2;

    let req = |endpoint: &str, model: &str, provider: &str, class: &str, code: &str| {
        m.value(
            REQUESTS,
            &[
                ("endpoint", endpoint),
                ("model", model),
                ("provider", provider),
                ("status_class", class),
                ("error_code", code),
            ],
        )
    };
    assert_eq!(
        req("chat.completions", "gpt-test", "openai", "2xx", ""),
        3.0
    );
    assert_eq!(req("messages", "gpt-test", "openai", "2xx", ""), 1.0);
    assert_eq!(
        req(
            "chat.completions",
            "gpt-test",
            "openai",
            "5xx",
            &failed_code
        ),
        1.0
    );
    assert_eq!(
        req(
            "chat.completions",
            "gpt-test",
            "",
            "4xx",
            "credit_limit_exceeded"
        ),
        1.0
    );
    assert_eq!(req("chat.completions", "", "", "4xx", "rate_limited"), 1.0);
    assert_eq!(
        req("chat.completions", "", "", "4xx", "invalid_api_key"),
        1.0
    );
    assert_eq!(req("messages", "claude-test", "anthropic", "2xx", ""), 1.0);
    assert_eq!(
        req(
            "messages.count_tokens",
            "claude-test",
            "anthropic",
            "2xx",
            ""
        ),
        1.0
    );
    // Nothing else on the model endpoints.
    assert_eq!(m.sum(REQUESTS, &[("endpoint", "chat.completions")]), 7.0);
    assert_eq!(m.sum(REQUESTS, &[("endpoint", "messages")]), 2.0);
    // Three keys created through the account API.
    assert_eq!(
        m.sum(
            REQUESTS,
            &[("endpoint", "account"), ("status_class", "2xx")]
        ),
        3.0
    );

    for (reason, n) in [
        ("key_limit", 1.0),
        ("rate_limit", 1.0),
        ("auth", 1.0),
        ("balance", 0.0),
    ] {
        assert_eq!(
            m.value("tollgate_refusals_total", &[("reason", reason)]),
            n,
            "{reason}"
        );
    }
    let attempt = |provider: &str, outcome: &str| {
        m.value(
            "tollgate_upstream_attempts_total",
            &[("provider", provider), ("outcome", outcome)],
        )
    };
    assert_eq!(attempt("openai", "success"), 4.0);
    assert_eq!(attempt("openai", "unavailable"), attempts);
    // The stream, and the token count.
    assert_eq!(attempt("anthropic", "success"), 2.0);
    assert_eq!(
        m.sum("tollgate_upstream_attempts_total", &[]),
        6.0 + attempts
    );

    // Tokens: what the fake reported, by the model that served.
    let tokens = |model: &str, kind: &str| {
        m.value("tollgate_tokens_total", &[("model", model), ("type", kind)])
    };
    assert_eq!(tokens("gpt-test", "input"), 61.0);
    assert_eq!(tokens("gpt-test", "output"), 22.0);
    assert_eq!(tokens("gpt-test", "cached_input"), 4.0);
    // The hung-up stream: what the ledger charged for it.
    let delivered = records.iter().filter(|r| r.3 > 0 && r.1 > 0).count();
    assert_eq!(delivered, 5, "{records:?}");
    let by_model_total: (i64, i64) = records.iter().fold((0, 0), |a, r| (a.0 + r.1, a.1 + r.3));
    assert_eq!(
        tokens("gpt-test", "input") + tokens("claude-test", "input"),
        by_model_total.0 as f64
    );
    assert_eq!(
        tokens("gpt-test", "output") + tokens("claude-test", "output"),
        by_model_total.1 as f64
    );
    assert!(tokens("claude-test", "output") > 0.0);
    // Cost: the ledger's, in USD.
    let ledger_usd: f64 = records.iter().map(|r| r.4 as f64 / 1e9).sum();
    let metric_usd = m.sum("tollgate_cost_usd_total", &[]);
    assert!(ledger_usd > 0.0);
    assert!(
        (metric_usd - ledger_usd).abs() < 1e-12,
        "{metric_usd} vs {ledger_usd}"
    );

    // The GenAI histograms.
    fn genai<'a>(
        model: &'a str,
        provider: &'a str,
        error: &'a str,
    ) -> [(&'static str, &'a str); 4] {
        [
            ("gen_ai_operation_name", "chat"),
            ("gen_ai_request_model", model),
            ("gen_ai_provider_name", provider),
            ("error_type", error),
        ]
    }
    let duration = "gen_ai_server_request_duration_seconds";
    assert_eq!(m.count(duration, &genai("gpt-test", "openai", "")), 4.0);
    assert_eq!(
        m.count(duration, &genai("gpt-test", "openai", &failed_code)),
        1.0
    );
    assert_eq!(
        m.count(duration, &genai("claude-test", "anthropic", "")),
        1.0
    );
    let counted = [
        ("gen_ai_operation_name", "count_tokens"),
        ("gen_ai_request_model", "claude-test"),
        ("gen_ai_provider_name", "anthropic"),
        ("error_type", ""),
    ];
    assert_eq!(m.count(duration, &counted), 1.0);
    let ttft = "gen_ai_server_time_to_first_token_seconds";
    assert_eq!(m.count(ttft, &genai("gpt-test", "openai", "")), 1.0);
    assert_eq!(m.count(ttft, &genai("claude-test", "anthropic", "")), 1.0);
    let usage = |model: &str, provider: &str, kind: &str| {
        m.count(
            "gen_ai_client_token_usage",
            &[
                ("gen_ai_operation_name", "chat"),
                ("gen_ai_request_model", model),
                ("gen_ai_provider_name", provider),
                ("gen_ai_token_type", kind),
            ],
        )
    };
    // One observation per delivered request; none for the failed one.
    assert_eq!(usage("gpt-test", "openai", "input"), 4.0);
    assert_eq!(usage("gpt-test", "openai", "output"), 4.0);
    assert_eq!(usage("claude-test", "anthropic", "output"), 1.0);
    assert_eq!(
        m.value(
            "gen_ai_client_token_usage_sum",
            &[
                ("gen_ai_operation_name", "chat"),
                ("gen_ai_request_model", "gpt-test"),
                ("gen_ai_provider_name", "openai"),
                ("gen_ai_token_type", "input"),
            ]
        ),
        61.0
    );

    // Live state: only the scrape itself is in flight; the writer caught up and wrote
    // every record; the lone deployment stays healthy; the database answers.
    assert_eq!(m.value("tollgate_in_flight_requests", &[]), 1.0);
    assert_eq!(m.value("tollgate_open_streams", &[]), 0.0);
    assert_eq!(m.value("tollgate_usage_writer_backlog", &[]), 0.0);
    assert_eq!(
        m.value("tollgate_usage_records_per_commit_sum", &[]),
        records.len() as f64
    );
    assert!(m.value("tollgate_usage_commit_seconds_count", &[]) >= 1.0);
    let hits = m.value("tollgate_key_cache_hits_total", &[]);
    let misses = m.value("tollgate_key_cache_misses_total", &[]);
    // Every model request with a well-formed key looked it up: 4 keys met the first time.
    assert_eq!((hits + misses, misses), (10.0, 4.0));
    assert_eq!(
        m.value(
            "tollgate_deployment_state",
            &[
                ("model", "gpt-test"),
                ("deployment", "openai/gpt-test"),
                ("state", "healthy")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.value("tollgate_backend_up", &[("backend", "database")]),
        1.0
    );
    assert_eq!(
        m.value(
            "tollgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_metrics_token_and_the_separate_listener() {
    let env = |name: &str| match name {
        "METRICS_TOKEN" => Some("s3cret-scrape".to_string()),
        _ => None,
    };
    let app = spawn_app_env(
        "[observability]\nmetrics_token_env = \"METRICS_TOKEN\"\n",
        &env,
    )
    .await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_metrics_token");
    let wrong = app.get("/metrics", "s3cret-scrapE").await;
    assert_eq!(wrong.status(), 401);
    let (m, _) = Metrics::scrape(&app, Some("s3cret-scrape")).await;
    assert_eq!(
        m.value("tollgate_refusals_total", &[("reason", "other")]),
        2.0
    );

    // With a listener of its own, the main one has no /metrics.
    let app = spawn_app_env(
        "[observability]\nmetrics_listen = \"127.0.0.1:0\"\n",
        &|_| None,
    )
    .await;
    assert_eq!(app.get("/metrics", "").await.status(), 404);
    let addr = app.metrics_addr.expect("metrics address");
    let text = app
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(text.contains("tollgate_build_info"));
}

#[test]
fn bad_observability_settings_stop_start_up_naming_the_key() {
    use tollgate::config::{Config, LogFormat, Overrides};
    let load = |section: &str| {
        let toml = format!("listen = \"127.0.0.1:0\"\n[observability]\n{section}\n");
        Config::from_toml(&toml, &Overrides::default(), &|name: &str| {
            (name == "SET").then(|| "tok".to_string())
        })
    };
    for (section, key) in [
        ("log_format = \"xml\"", "observability.log_format"),
        (
            "metrics_listen = \"not an address\"",
            "observability.metrics_listen",
        ),
        (
            "metrics_token_env = \"UNSET\"",
            "observability.metrics_token_env",
        ),
        ("key_labels = 100000", "observability.key_labels"),
        ("unknown = 1", "unknown"),
    ] {
        let error = load(section).expect_err(section).to_string();
        assert!(error.contains(key), "{section}: {error}");
    }
    let config =
        load("log_format = \"json\"\nmetrics_token_env = \"SET\"\nkey_labels = 10").expect("valid");
    assert_eq!(config.observability.log_format, LogFormat::Json);
    assert_eq!(config.observability.key_labels, 10);
    // The token never prints.
    assert!(!format!("{:?}", config.observability).contains("tok\""));
}
