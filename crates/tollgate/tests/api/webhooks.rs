//! Webhooks against real local receivers: signed deliveries the receiver verifies, retries
//! logged, events once each, secrets never shown, private targets refused, and a receiver
//! that hangs while model requests keep being answered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::gateway::{catalog, chat};
use crate::helpers::{assert_error, spawn_app_env, spawn_app_with, TestApp};

const SECRET: &str = "whsec-account-holder-0001";
const OPERATOR_SECRET: &str = "whsec-operator-secret-0002";

/// What a receiver got: (signature header, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A receiver that answers 500 to its first `fail_first` deliveries, then 200.
async fn receiver(fail_first: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let signature = headers
                    .get("tollgate-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let mut seen = seen.lock().expect("lock");
                seen.push((signature, String::from_utf8_lossy(&body).to_string()));
                if seen.len() <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got)
}

/// Verifies a signature as docs/webhooks.md tells a receiver to, with the hmac crate.
fn verified(secret: &str, signature: &str, body: &str) -> bool {
    let Some((t, v1)) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let Ok(t) = t.parse::<i64>() else {
        return false;
    };
    if (tollgate::now() - t).abs() > 300 {
        return false;
    }
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    let Ok(given) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&given).is_ok()
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(found) = probe().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn events(got: &Received) -> Vec<Value> {
    got.lock()
        .expect("lock")
        .iter()
        .filter_map(|(_, body)| serde_json::from_str(body).ok())
        .collect()
}

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.post("/v1/account/webhooks", &app.prov_key, &body).await
}

#[tokio::test]
async fn deliveries_are_signed_retried_logged_and_secrets_never_shown() {
    deliveries_case(None).await;
}

#[tokio::test]
async fn deliveries_are_signed_retried_logged_and_secrets_never_shown_on_postgres() {
    crate::overflow::with_postgres_database(|url| deliveries_case(Some(url))).await;
}

/// The whole life of webhooks, on SQLite (`None`) or the PostgreSQL database at `url`.
async fn deliveries_case(url: Option<String>) {
    let (operator_url, operator_got) = receiver(0).await;
    let (url_hook, got) = receiver(1).await;
    let env = |name: &str| (name == "OP_HOOK_SECRET").then(|| OPERATOR_SECRET.to_string());
    let extra = format!(
        "[webhook_policy]\nallow_private_targets = true\nretry_base_ms = 200\n\n\
         [[webhooks]]\nurl = \"{operator_url}\"\nsecret_env = \"OP_HOOK_SECRET\"\n"
    );
    let app = match url {
        None => spawn_app_env(&extra, &env).await,
        Some(db) => {
            let dir = tempfile::tempdir().expect("tempdir");
            crate::helpers::spawn_app_on(dir, &db, &extra, &env).await
        }
    };
    let url = url_hook;
    app.grant("3").await;
    let response = create(
        &app,
        json!({"url": url, "secret": SECRET, "low_balance": "5.00"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let hook: Value = response.json().await.expect("json");
    assert_eq!(hook["url"], url.as_str());
    assert_eq!(hook["low_balance"], "5.00");
    assert!(
        !hook.to_string().contains(SECRET),
        "the secret is never echoed: {hook}"
    );
    let id = hook["id"].as_i64().expect("id");
    let listed: Value = app
        .get("/v1/account/webhooks", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["webhooks"].as_array().map(Vec::len), Some(1));
    assert!(!listed.to_string().contains(SECRET));

    // The balance (3) is below 5: one low-balance event, refused once (500), retried.
    let delivered = wait_for("a retried delivery", async || {
        let got = got.lock().expect("lock").clone();
        (got.len() >= 2).then_some(got)
    })
    .await;
    for (signature, body) in &delivered {
        assert!(
            verified(SECRET, signature, body),
            "bad signature {signature} on {body}"
        );
        assert!(!verified(OPERATOR_SECRET, signature, body));
    }
    assert_eq!(
        delivered[0].1, delivered[1].1,
        "a retry sends the same event"
    );
    let event: Value = serde_json::from_str(&delivered[0].1).expect("json");
    assert_eq!(event["type"], "account.low_balance");
    assert_eq!(event["data"]["balance"], "3.00");
    assert_eq!(event["data"]["low_balance"], "5.00");
    assert_eq!(event["account_id"], app.account_id.0);
    assert!(event["id"].as_str().is_some_and(|i| i.starts_with("evt_")));

    // The operator got the same event, signed with the operator's secret.
    let operator = wait_for("the operator's delivery", async || {
        operator_got.lock().expect("lock").first().cloned()
    })
    .await;
    assert!(verified(OPERATOR_SECRET, &operator.0, &operator.1));
    let operator_event: Value = serde_json::from_str(&operator.1).expect("json");
    assert_eq!(operator_event["id"], event["id"]);

    // The log says what happened, with no secret in it.
    let log = wait_for("the log to show the delivery", async || {
        let log: Value = app
            .get(
                &format!("/v1/account/webhooks/{id}/deliveries"),
                &app.prov_key,
            )
            .await
            .json()
            .await
            .ok()?;
        (log["deliveries"][0]["status"] == "delivered").then_some(log)
    })
    .await;
    let entry = &log["deliveries"][0];
    assert_eq!(entry["attempts"], 2);
    assert_eq!(entry["last_status_code"], 200);
    assert_eq!(entry["event_type"], "account.low_balance");
    assert_eq!(entry["payload"], event);
    assert!(!log.to_string().contains(SECRET));

    // Key thresholds, each once: 85 % of the limit crosses 50 and 80, then 100.
    let (key_id, _) = app
        .create_key(json!({"name": "ci", "credit_limit": 1}))
        .await;
    let record = |id: &str, cost: i64| tollgate::store::UsageRecord {
        request_id: id.into(),
        account_id: app.account_id,
        key_id: tollgate::store::KeyId(key_id),
        model: "m".into(),
        endpoint: "/v1/chat/completions".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost: tollgate::billing::Credits::from_nanos(cost),
        status: 200,
        latency_ms: 1,
        created_at: tollgate::now(),
        detail: Default::default(),
    };
    app.state
        .store
        .record_usage(&[record("r1", 850_000_000)])
        .await
        .expect("usage");
    let thresholds = |events: &[Value]| -> Vec<i64> {
        let mut t: Vec<i64> = events
            .iter()
            .filter(|e| e["type"] == "key.usage_threshold")
            .filter_map(|e| e["data"]["threshold_percent"].as_i64())
            .collect();
        t.sort();
        t.dedup();
        t
    };
    wait_for("50 and 80 %", async || {
        (thresholds(&events(&got).await) == vec![50, 80]).then_some(())
    })
    .await;
    app.state
        .store
        .record_usage(&[record("r2", 150_000_000)])
        .await
        .expect("usage");
    wait_for("100 %", async || {
        (thresholds(&events(&got).await) == vec![50, 80, 100]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = events(&got).await;
    let per_threshold = |t: i64| {
        all.iter()
            .filter(|e| e["data"]["threshold_percent"] == t)
            .map(|e| e["id"].clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert_eq!(
        (per_threshold(50), per_threshold(80), per_threshold(100)),
        (1, 1, 1)
    );
    let crossed = all
        .iter()
        .find(|e| e["data"]["threshold_percent"] == 100)
        .expect("100 %");
    assert_eq!(crossed["data"]["usage"], "1.00");
    assert_eq!(crossed["data"]["credit_limit"], "1.00");
    assert_eq!(crossed["data"]["window"], "lifetime");

    // Credits expiring within 7 days are announced once.
    let expiry = tollgate::now() + 3 * 86_400;
    app.state
        .accounts
        .grant(
            app.account_id,
            "2".parse().expect("amount"),
            None,
            Some(expiry),
        )
        .await
        .expect("grant");
    let expiring = wait_for("credits.expiring", async || {
        events(&got)
            .await
            .into_iter()
            .find(|e| e["type"] == "credits.expiring")
    })
    .await;
    assert_eq!(expiring["data"]["remaining"], "2.00");
    assert_eq!(expiring["data"]["expires_at"], tollgate::rfc3339(expiry));

    // Deleted: gone from the list; another account cannot see or delete it.
    let (_, other) = app.new_account("other").await;
    let path = format!("/v1/account/webhooks/{id}");
    assert_eq!(app.delete(&path, &other).await.status(), 404);
    assert_eq!(
        app.get(&format!("{path}/deliveries"), &other)
            .await
            .status(),
        404
    );
    assert_eq!(app.delete(&path, &app.prov_key).await.status(), 204);
    assert_eq!(app.delete(&path, &app.prov_key).await.status(), 404);
}

#[tokio::test]
async fn private_targets_and_bad_input_are_refused() {
    let app = spawn_app_with("").await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/",
    ] {
        let response = create(&app, json!({"url": url, "secret": SECRET})).await;
        let message = assert_error(response, 400, "invalid_request_error", "invalid_field").await;
        assert!(
            message.contains("private") || message.contains("loopback"),
            "{url}: {message}"
        );
    }
    for (body, field) in [
        (
            json!({"url": "ftp://example.com/x", "secret": SECRET}),
            "url",
        ),
        (
            json!({"url": "https://user:pw@example.com/x", "secret": SECRET}),
            "url",
        ),
        (
            json!({"url": "https://example.com/x", "secret": "short"}),
            "secret",
        ),
        (json!({"url": "https://example.com/x"}), "secret"),
        (
            json!({"url": "https://example.com/x", "secret": SECRET, "low_balance": "-1"}),
            "low_balance",
        ),
        (
            json!({"url": "https://example.com/x", "secret": SECRET, "low_balance": "0.0000000001"}),
            "low_balance",
        ),
        (
            json!({"url": "https://example.com/x", "secret": SECRET, "low_balance": true}),
            "low_balance",
        ),
    ] {
        let response = create(&app, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], field, "{body}: {error}");
        assert!(!error.to_string().contains(SECRET));
    }
    let response = create(
        &app,
        json!({"url": "https://example.com/x", "secret": SECRET, "extra": 1}),
    )
    .await;
    assert_eq!(response.status(), 400);
    // An inference key cannot manage webhooks.
    let key = app.inference_key().await;
    assert_eq!(app.get("/v1/account/webhooks", &key).await.status(), 401);
    let listed: Value = app
        .get("/v1/account/webhooks", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed, json!({"webhooks": []}));
}

/// A receiver that accepts connections and never answers: deliveries hang on it while
/// model requests are answered.
#[tokio::test]
async fn a_hanging_receiver_does_not_hold_model_requests() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let held = Arc::new(Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Read nothing, answer nothing, keep it open.
            holding.lock().expect("lock").push(socket);
        }
    });
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-openai-secret".into()),
        anthropic_api_key: Some("up-anthropic-secret".into()),
        ..Default::default()
    })
    .await
    .expect("fake upstream");
    let env = |name: &str| match name {
        "UP_OPENAI" => Some("up-openai-secret".to_string()),
        "UP_ANTHROPIC" => Some("up-anthropic-secret".to_string()),
        _ => None,
    };
    let app = spawn_app_env(
        &format!(
            "{}\n[webhook_policy]\nallow_private_targets = true\ntimeout_ms = 600000\n",
            catalog(&upstream)
        ),
        &env,
    )
    .await;
    app.grant("1").await;
    let key = app.inference_key().await;
    // Several webhooks, each with an event to deliver to the hanging receiver.
    for _ in 0..4 {
        let response = create(
            &app,
            json!({"url": url, "secret": SECRET, "low_balance": "100"}),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    wait_for("the receiver to hold every delivery", async || {
        (held.lock().expect("lock").len() >= 4).then_some(())
    })
    .await;
    // Every delivery is hanging now: model requests are answered all the same.
    for i in 0..10 {
        let response = app
            .post(
                "/v1/chat/completions",
                &key,
                &chat("gpt-test", &format!("hello {i}")),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let balance = app.get("/v1/account/balance", &app.prov_key).await;
    assert_eq!(balance.status(), 200);
    // The deliveries are still in flight: held open, not answered, not logged as done.
    assert!(held.lock().expect("lock").len() >= 4);
    let hooks: Value = app
        .get("/v1/account/webhooks", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    let id = hooks["webhooks"][0]["id"].as_i64().expect("id");
    let log: Value = app
        .get(
            &format!("/v1/account/webhooks/{id}/deliveries"),
            &app.prov_key,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(log["deliveries"][0]["status"], "pending");
    assert_eq!(log["deliveries"][0]["attempts"], 0);
}

/// Two replicas on one PostgreSQL database scan and send at once: every event reaches
/// the receiver exactly once.
#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    crate::overflow::with_postgres_database(|url| async move {
        let (hook_url, got) = receiver(0).await;
        let store = tollgate::store::open(&url).await.expect("store");
        let policy = tollgate::config::WebhookPolicy {
            allow_private_targets: true,
            retry_base: Duration::from_millis(100),
            ..Default::default()
        };
        let replicas: Vec<Arc<tollgate::webhooks::Webhooks>> = (0..2)
            .map(|_| {
                Arc::new(
                    tollgate::webhooks::Webhooks::new(&url, store.clone(), policy.clone())
                        .expect("webhooks"),
                )
            })
            .collect();
        let now = tollgate::now();
        let account = store.create_account("acme", now).await.expect("account");
        let key = store
            .create_key(tollgate::store::NewKey {
                account_id: account.id,
                kind: tollgate::store::KeyKind::Inference,
                name: "k".into(),
                key_hash: "hash".into(),
                hint: "hint".into(),
                created_at: now,
                expires_at: None,
                credit_limit: Some(tollgate::billing::Credits::from_nanos(1_000)),
                rate_limit_rpm: None,
                clamp_max_tokens: false,
                limit_reset: None,
                allowed_models: None,
            })
            .await
            .expect("key");
        replicas[0]
            .create(
                account.id,
                &hook_url,
                SECRET,
                Some("1".parse().expect("amount")),
            )
            .await
            .expect("webhook");
        for replica in &replicas {
            tokio::spawn(replica.clone().run_deliveries());
        }
        // Usage to 100 % in ten steps, each followed by both replicas scanning at once.
        for i in 0..10 {
            let record = tollgate::store::UsageRecord {
                request_id: format!("r{i}"),
                account_id: account.id,
                key_id: key.id,
                model: "m".into(),
                endpoint: "/v1/chat/completions".into(),
                input_tokens: 1,
                cached_input_tokens: 0,
                output_tokens: 1,
                cost: tollgate::billing::Credits::from_nanos(100),
                status: 200,
                latency_ms: 1,
                created_at: now,
                detail: Default::default(),
            };
            store.record_usage(&[record]).await.expect("usage");
            let (a, b) = tokio::join!(replicas[0].scan(0, true), replicas[1].scan(0, true));
            a.expect("scan");
            b.expect("scan");
        }
        // 50, 80, 100 % and the low balance (0 < 1): four events.
        wait_for("four deliveries", async || {
            (got.lock().expect("lock").len() >= 4).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let all = events(&got).await;
        assert_eq!(all.len(), 4, "each event once: {all:?}");
        let mut kinds: Vec<String> = all
            .iter()
            .map(|e| format!("{} {}", e["type"], e["data"]["threshold_percent"]))
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "\"account.low_balance\" null",
                "\"key.usage_threshold\" 100",
                "\"key.usage_threshold\" 50",
                "\"key.usage_threshold\" 80",
            ]
        );
    })
    .await;
}

/// A key whose limit resets daily crosses its thresholds once per day, counted on that
/// day's usage alone: yesterday's spending neither raises nor holds back today's events.
#[tokio::test]
async fn a_windowed_key_crosses_its_thresholds_once_per_window() {
    let (hook_url, got) = receiver(0).await;
    let app = spawn_app_env(
        "[webhook_policy]\nallow_private_targets = true\nretry_base_ms = 200\n",
        &|_| None,
    )
    .await;
    let day_one = tollgate::parse_rfc3339("2026-12-01T12:00:00Z").expect("time");
    app.state.config.clock.set(day_one);
    app.grant("10").await;
    let response = create(&app, json!({"url": hook_url, "secret": SECRET})).await;
    assert_eq!(response.status(), 201);
    let (key_id, _) = app
        .create_key(json!({"name": "ci", "credit_limit": 1, "limit_reset": "daily"}))
        .await;
    let spend = |id: &str, cost: i64, at: i64| tollgate::store::UsageRecord {
        request_id: id.into(),
        account_id: app.account_id,
        key_id: tollgate::store::KeyId(key_id),
        model: "m".into(),
        endpoint: "/v1/chat/completions".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost: tollgate::billing::Credits::from_nanos(cost),
        status: 200,
        latency_ms: 1,
        created_at: at,
        detail: Default::default(),
    };
    let crossings = async || -> Vec<String> {
        let mut seen: Vec<String> = events(&got)
            .await
            .iter()
            .filter(|e| e["type"] == "key.usage_threshold")
            .map(|e| format!("{} {}", e["data"]["window"], e["data"]["threshold_percent"]))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };

    // Day one: 60 % of the day's limit.
    app.state
        .store
        .record_usage(&[spend("d1", 600_000_000, day_one)])
        .await
        .expect("usage");
    wait_for("day one's 50 %", async || {
        (crossings().await == ["\"d2026-12-01\" 50"]).then_some(())
    })
    .await;

    // Day two: 30 % more (90 % of the lifetime, 30 % of the day) raises nothing...
    let day_two = day_one + 86_400;
    app.state.config.clock.set(day_two);
    app.state
        .store
        .record_usage(&[spend("d2a", 300_000_000, day_two)])
        .await
        .expect("usage");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(crossings().await, ["\"d2026-12-01\" 50"]);

    // ...and 55 % of the day is day two's own 50 %, sent although day one's was.
    app.state
        .store
        .record_usage(&[spend("d2b", 250_000_000, day_two)])
        .await
        .expect("usage");
    wait_for("day two's 50 %", async || {
        (crossings().await == ["\"d2026-12-01\" 50", "\"d2026-12-02\" 50"]).then_some(())
    })
    .await;
    let view: Value = app
        .get(&format!("/v1/account/keys/{key_id}"), &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(view["usage_daily"], "0.55", "{view}");
}
