//! Bounded labels: traffic over 1,000 keys and 50 models keeps the scrape under the
//! documented bound; per-key series only when the operator opts in, and capped.

use std::collections::HashMap;

use prometheus_parse::Value as Sample;
use serde_json::json;

use crate::gateway::{catalog, chat};
use crate::helpers::spawn_app_env;
use crate::scrape::Metrics;

const REQUESTS: &str = "tollgate_requests_total";

/// The documented bound (docs/observability.md): a scrape after traffic over 1,000 keys
/// and 50 models stays under this many series and bytes.
/// Measured: 5,621 series and 908 KB (61 models, 3 providers; the bulk models each with
/// successes, upstream failures and upstream rate limits, streamed and not).
const MAX_SERIES: usize = 8_000;
const MAX_BYTES: usize = 1_536 << 10;

#[tokio::test]
async fn a_thousand_keys_and_fifty_models_keep_the_scrape_bounded() {
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-openai-secret".into()),
        ..Default::default()
    })
    .await
    .expect("fake upstream");
    let mut config = catalog(&upstream);
    for i in 0..50 {
        config.push_str(&format!(
            "\n[[models]]\nid = \"bulk-{i}\"\nprovider = \"openai\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n"
        ));
    }
    let env = |name: &str| match name {
        "UP_OPENAI" | "UP_ANTHROPIC" => Some("up-openai-secret".to_string()),
        _ => None,
    };
    let app = spawn_app_env(&config, &env).await;
    app.grant("100").await;
    let mut keys = Vec::new();
    for i in 0..1000 {
        keys.push(app.create_key(json!({"name": format!("k{i}")})).await.1);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        // Every model, every key; each model also fails and is rate limited upstream
        // (more label values: the error types).
        let directive = match (i / 50) % 10 {
            0 => "[[fake:status=500]]",
            1 => "[[fake:status=429]]",
            _ => "",
        };
        let mut body = chat(&format!("bulk-{}", i % 50), &format!("hi {directive}"));
        // Some streamed (time to first token), some translated (another endpoint).
        if i % 7 == 0 {
            body["stream"] = json!(true);
        }
        tasks.spawn(async move {
            let response = client.post(url).bearer_auth(key).json(&body).send().await;
            let response = response.expect("request");
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            status
        });
        if tasks.len() >= 16 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let (m, bytes) = Metrics::scrape(&app, None).await;
    let series = m.series();
    assert_eq!(m.sum(REQUESTS, &[("endpoint", "chat.completions")]), 1000.0);
    assert_eq!(
        m.value(
            "tollgate_client_disconnects_total",
            &[("endpoint", "chat.completions")]
        ),
        0.0
    );
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for s in &m.0.samples {
        *by_name.entry(s.metric.as_str()).or_default() += match &s.value {
            Sample::Histogram(b) => b.len(),
            _ => 1,
        };
    }
    assert!(
        series <= MAX_SERIES,
        "{series} series, {bytes} bytes: {by_name:?}"
    );
    assert!(bytes <= MAX_BYTES, "{bytes} bytes");
    // No key label by default.
    assert!(m.0.samples.iter().all(|s| s.labels.get("key_id").is_none()));
}

#[tokio::test]
async fn key_labels_are_opt_in_and_capped() {
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-openai-secret".into()),
        ..Default::default()
    })
    .await
    .expect("fake upstream");
    let config = format!("{}\n[observability]\nkey_labels = 3\n", catalog(&upstream));
    let env = |name: &str| match name {
        "UP_OPENAI" | "UP_ANTHROPIC" => Some("up-openai-secret".to_string()),
        _ => None,
    };
    let app = spawn_app_env(&config, &env).await;
    app.grant("100").await;
    for i in 0..5 {
        let (_, key) = app.create_key(json!({"name": format!("k{i}")})).await;
        for _ in 0..2 {
            let response = app
                .post("/v1/chat/completions", &key, &chat("gpt-test", "hi"))
                .await;
            assert_eq!(response.status(), 200);
        }
    }
    let (m, _) = Metrics::scrape(&app, None).await;
    let per_key: HashMap<String, f64> =
        m.0.samples
            .iter()
            .filter(|s| s.metric == "tollgate_key_requests_total")
            .map(|s| {
                let v = match s.value {
                    Sample::Counter(v) | Sample::Untyped(v) => v,
                    _ => 0.0,
                };
                (s.labels.get("key_id").expect("key_id").to_string(), v)
            })
            .collect();
    // Three keys have their own series (two requests each), the other two share `other`.
    assert_eq!(per_key.len(), 4, "{per_key:?}");
    assert_eq!(per_key.get("other"), Some(&4.0));
    assert_eq!(per_key.values().sum::<f64>(), 10.0);
}
