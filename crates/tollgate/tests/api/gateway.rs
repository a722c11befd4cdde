//! The gateway and the meter against the fake upstream: every endpoint forwarded,
//! streams relayed, every request charged exactly once, faults not charged.

use std::time::Duration;

use fake_upstream::{FakeUpstream, Options};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::{assert_error, spawn_app_env, spawn_app_with, TestApp};

/// Prices in nano-dollars per million tokens (i.e. femto-dollars per token), per unit
/// prices in femto-dollars: written here independently of the gateway's parser.
pub struct Prices {
    pub input: i128,
    pub cached: i128,
    pub output: i128,
}

pub const GPT: Prices = Prices {
    input: 400_000_000,
    cached: 100_000_000,
    output: 1_600_000_000,
};
pub const CLAUDE: Prices = Prices {
    input: 3_000_000_000,
    cached: 300_000_000,
    output: 15_000_000_000,
};

/// Exact cost in nano-dollars, rounded up once per request.
pub fn cost(p: &Prices, input: i128, cached: i128, output: i128) -> i64 {
    let femtos = (input - cached) * p.input + cached * p.cached + output * p.output;
    ((femtos + 999_999) / 1_000_000) as i64
}

pub fn catalog(upstream: &FakeUpstream) -> String {
    format!(
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{base}"
api_key_env = "UP_OPENAI"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{base}"
api_key_env = "UP_ANTHROPIC"

[[providers]]
name = "chat-only"
kind = "openai"
base_url = "{base}"
api_key_env = "UP_OPENAI"
chat_only = true

[[models]]
id = "gpt-test"
provider = "openai"
endpoints = ["chat.completions", "responses", "messages"]
max_output_tokens = 1000
pricing = {{ input = "0.40", cached_input = "0.10", output = "1.60" }}

[[models]]
id = "gpt-renamed"
provider = "openai"
upstream_model = "gpt-upstream-name"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = {{ input = "0.40", cached_input = "0.10", output = "1.60" }}

[[models]]
id = "claude-test"
provider = "anthropic"
endpoints = ["messages", "chat.completions", "responses"]
max_output_tokens = 1000
pricing = {{ input = "3.00", cached_input = "0.30", output = "15.00" }}

[[models]]
id = "chat-only-test"
provider = "chat-only"
endpoints = ["responses", "chat.completions"]
max_output_tokens = 1000
pricing = {{ input = "0.40", cached_input = "0.10", output = "1.60" }}

[[models]]
id = "embed-test"
provider = "openai"
endpoints = ["embeddings"]
pricing = {{ input = "0.02" }}

[[models]]
id = "image-test"
provider = "openai"
endpoints = ["images.generations"]
pricing = {{ per_image = "0.04" }}

[[models]]
id = "tts-test"
provider = "openai"
endpoints = ["audio.speech"]
pricing = {{ per_character = "0.000015" }}

[[models]]
id = "whisper-test"
provider = "openai"
endpoints = ["audio.transcriptions", "audio.translations"]
pricing = {{ per_audio_second = "0.0001" }}

[[models]]
id = "gpt-4o-transcribe"
provider = "openai"
endpoints = ["audio.transcriptions"]
max_output_tokens = 2000
pricing = {{ input = "2.50", output = "10.00" }}

[[models]]
id = "moderation-test"
provider = "openai"
endpoints = ["moderations"]
pricing = {{ per_request = "0.0002" }}
"#,
        base = upstream.base_url()
    )
}

pub async fn setup_with(options: Options) -> (TestApp, FakeUpstream, String) {
    let upstream = fake_upstream::start(Options {
        openai_api_key: Some("up-openai-secret".into()),
        anthropic_api_key: Some("up-anthropic-secret".into()),
        ..options
    })
    .await
    .expect("fake upstream");
    let env = |name: &str| match name {
        "UP_OPENAI" => Some("up-openai-secret".to_string()),
        "UP_ANTHROPIC" => Some("up-anthropic-secret".to_string()),
        _ => None,
    };
    let app = spawn_app_env(&catalog(&upstream), &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    (app, upstream, key)
}

pub async fn setup() -> (TestApp, FakeUpstream, String) {
    setup_with(Options::default()).await
}

pub fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 100})
}

/// All usage records of the test's database, once the usage writer has committed every
/// record handed to it (on SQLite a response waits only for the usage journal).
pub async fn ledger(app: &TestApp) -> Vec<(String, i64, i64, i64, i64, i64)> {
    app.state.writer.flushed().await;
    let url = format!("sqlite://{}", app.dir.path().join("tollgate.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("db");
    let rows = sqlx::query(
        "SELECT request_id, input_tokens, cached_input_tokens, output_tokens, cost, status FROM usage_records ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    rows.iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                r.get::<i64, _>(1),
                r.get::<i64, _>(2),
                r.get::<i64, _>(3),
                r.get::<i64, _>(4),
                r.get::<i64, _>(5),
            )
        })
        .collect()
}

pub fn nanos(text: &str) -> i64 {
    text.parse::<tollgate::billing::Credits>()
        .expect("decimal")
        .nanos()
}

async fn post(app: &TestApp, key: &str, path: &str, body: &Value) -> reqwest::Response {
    app.post(path, key, body).await
}

#[tokio::test]
async fn chat_is_forwarded_and_charged_exactly() {
    let (app, upstream, key) = setup().await;
    let response = post(
        &app,
        &key,
        "/v1/chat/completions",
        &chat("gpt-test", "Say hello to the gateway"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let charged = response.headers()["x-tollgate-cost"]
        .to_str()
        .expect("cost")
        .to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    let input = body["usage"]["prompt_tokens"].as_i64().expect("usage");
    let output = body["usage"]["completion_tokens"].as_i64().expect("usage");
    // 4 per message + 5 words; 12 words answered.
    assert_eq!((input, output), (9, 12));
    let expected = cost(&GPT, input.into(), 0, output.into());
    assert_eq!(nanos(&charged), expected);

    // The upstream saw the provider's key, never the client's.
    let seen = upstream.received();
    let last = seen.last().expect("received");
    assert_eq!(
        last.header("authorization"),
        Some("Bearer up-openai-secret")
    );
    assert!(!String::from_utf8_lossy(&last.body).contains(&key));

    let ledger = ledger(&app).await;
    assert_eq!(ledger, vec![(request_id, 9, 0, 12, expected, 200)]);
    let key_view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(nanos(key_view["usage"].as_str().expect("usage")), expected);
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        nanos(balance["balance"].as_str().expect("balance")),
        100_000_000_000 - expected
    );
}

#[tokio::test]
async fn unknown_fields_pass_through_untouched_and_models_are_renamed() {
    let (app, upstream, key) = setup().await;
    let raw = r#"{"model":"gpt-renamed","messages":[{"role":"user","content":"hi"}],"max_tokens":20,"x_custom":{"deep":[1,2.50,"z"]},"temperature":0.7}"#;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen = upstream.received();
    let body = String::from_utf8(seen.last().expect("received").body.to_vec()).expect("utf-8");
    assert_eq!(body, raw.replace("gpt-renamed", "gpt-upstream-name"));

    // Without any change needed, the body goes upstream byte for byte.
    let raw = r#"{ "model" : "gpt-test", "messages":[{"role":"user","content":"hi"}], "max_tokens": 20, "odd":  1e3 }"#;
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("request");
    let seen = upstream.received();
    assert_eq!(seen.last().expect("received").body, raw.as_bytes());
}

#[tokio::test]
async fn streams_are_relayed_and_usage_is_stripped_unless_asked() {
    let (app, upstream, key) = setup().await;
    let mut body = chat("gpt-test", "stream please [[fake:words=5]]");
    body["stream"] = json!(true);
    let response = post(&app, &key, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/event-stream"));
    let text = response.text().await.expect("text");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "usage leaked to a client that did not ask: {text}"
    );
    let chunks = text.matches("chat.completion.chunk").count();
    assert!(chunks >= 5, "{text}");
    // The gateway asked the upstream for usage anyway.
    let sent = upstream
        .received()
        .last()
        .expect("received")
        .json()
        .expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let ledger = ledger(&app).await;
    assert_eq!(ledger[0].3, 5);
    assert_eq!(ledger[0].4, cost(&GPT, ledger[0].1.into(), 0, 5));

    body["stream_options"] = json!({"include_usage": true});
    let text = post(&app, &key, "/v1/chat/completions", &body)
        .await
        .text()
        .await
        .expect("text");
    assert!(text.contains("\"usage\":{\"prompt_tokens\""), "{text}");
    assert!(text.contains("\"usage\":null"), "{text}");
}

#[tokio::test]
async fn every_endpoint_is_forwarded_and_metered() {
    let (app, _upstream, key) = setup().await;
    let mut expected_total = 0i64;

    let r = post(
        &app,
        &key,
        "/v1/responses",
        &json!({"model": "gpt-test", "input": "Say hello.", "max_output_tokens": 50}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = nanos(r.headers()["x-tollgate-cost"].to_str().expect("cost"));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["object"], "response");
    let (i, o) = (
        body["usage"]["input_tokens"].as_i64().expect("i"),
        body["usage"]["output_tokens"].as_i64().expect("o"),
    );
    assert_eq!(c, cost(&GPT, i.into(), 0, o.into()));
    expected_total += c;

    let r = post(
        &app,
        &key,
        "/v1/embeddings",
        &json!({"model": "embed-test", "input": ["one two", "three"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = nanos(r.headers()["x-tollgate-cost"].to_str().expect("cost"));
    let body: Value = r.json().await.expect("json");
    let tokens = body["usage"]["prompt_tokens"].as_i64().expect("tokens");
    assert_eq!(tokens, 3);
    assert_eq!(
        c,
        ((tokens as i128 * 20_000_000 + 999_999) / 1_000_000) as i64
    );
    expected_total += c;

    let r = post(
        &app,
        &key,
        "/v1/images/generations",
        &json!({"model": "image-test", "prompt": "a cat", "n": 2}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = nanos(r.headers()["x-tollgate-cost"].to_str().expect("cost"));
    assert_eq!(c, 80_000_000);
    expected_total += c;

    let r = post(
        &app,
        &key,
        "/v1/moderations",
        &json!({"model": "moderation-test", "input": "hello"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = nanos(r.headers()["x-tollgate-cost"].to_str().expect("cost"));
    assert_eq!(c, 200_000);
    expected_total += c;

    let input = "Read this aloud";
    let r = post(
        &app,
        &key,
        "/v1/audio/speech",
        &json!({"model": "tts-test", "input": input, "voice": "alloy"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let audio = r.bytes().await.expect("audio");
    assert_eq!(audio.len(), 1024 + 64 * input.chars().count());
    expected_total += 15 * input.chars().count() as i64 * 1000; // 0.000015 USD = 15,000 nanos per char

    // Multipart upload, streamed through: 40,000 bytes -> 3 seconds.
    for path in ["/v1/audio/transcriptions", "/v1/audio/translations"] {
        let form = reqwest::multipart::Form::new()
            .text("model", "whisper-test")
            .part(
                "file",
                reqwest::multipart::Part::bytes(vec![7u8; 40_000])
                    .file_name("a.wav")
                    .mime_str("audio/wav")
                    .expect("mime"),
            )
            .text("response_format", "json");
        let r = app
            .client
            .post(app.url(path))
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{path}");
        let c = nanos(r.headers()["x-tollgate-cost"].to_str().expect("cost"));
        assert_eq!(c, 300_000, "{path}");
        let body: Value = r.json().await.expect("json");
        assert!(body["text"].is_string());
        expected_total += c;
    }

    // Give the speech stream's detached bookkeeping no chance to matter: it commits
    // before its last bytes are sent.
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 7);
    assert!(ledger.iter().all(|r| r.5 == 200));
    assert_eq!(ledger.iter().map(|r| r.4).sum::<i64>(), expected_total);
    let activity: Value = app
        .get("/v1/account/activity?days=1", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(activity["total_stats"]["total_requests"], 7);
    assert_eq!(
        nanos(
            activity["total_stats"]["total_cost"]
                .as_str()
                .expect("cost")
        ),
        expected_total
    );
    let key_view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(
        nanos(key_view["usage"].as_str().expect("usage")),
        expected_total
    );
}

#[tokio::test]
async fn concurrent_requests_never_overspend_the_credit_limit() {
    let (app, _upstream, _) = setup().await;
    let body = chat("gpt-test", "race [[fake:first_byte_ms=400]]");
    // Worst case: the input bound of the body (its text's bytes and the documented
    // allowances), max_tokens output tokens.
    let input = tollgate_formats::estimate::estimate_input(
        tollgate_formats::Format::ChatCompletions,
        &serde_json::to_vec(&body).expect("json"),
        &tollgate_formats::estimate::Profile::for_model("gpt-test").with_bytes(),
    )
    .expect("estimate")
    .tokens;
    let worst = cost(&GPT, input.into(), 0, 100);
    let limit = 10 * worst;
    let limit_text = tollgate::billing::Credits::from_nanos(limit).to_decimal_string(1);
    let created: Value = app
        .client
        .post(app.url("/v1/account/keys"))
        .bearer_auth(&app.prov_key)
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"racer","credit_limit":{limit_text}}}"#))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let key = created["key"].as_str().expect("key").to_string();

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/v1/chat/completions");
            let key = key.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                let text = r.text().await.expect("body");
                (status, text)
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        let (status, text) = task.await.expect("task");
        match status {
            200 => ok += 1,
            402 => {
                refused += 1;
                assert!(
                    text.contains("credit_limit_exceeded") && text.contains("credit limit"),
                    "{text}"
                );
            }
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    assert!(ok <= 10, "{ok} succeeded");
    assert_eq!(ok + refused, 100);
    assert_eq!(
        ok, 10,
        "exactly the affordable number should get through when all race at once"
    );
    let ledger = ledger(&app).await;
    let total: i64 = ledger.iter().map(|r| r.4).sum();
    assert!(total <= limit);
    assert_eq!(ledger.len(), ok);
    let key_view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(nanos(key_view["usage"].as_str().expect("usage")), total);
    let activity: Value = app
        .get("/v1/account/activity?days=1", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        nanos(
            activity["total_stats"]["total_cost"]
                .as_str()
                .expect("cost")
        ),
        total
    );
}

#[tokio::test]
async fn quota_refusals_say_which_limit_and_what_remains() {
    let (app, upstream, _) = setup().await;
    let (_, key) = app
        .create_key(json!({"name": "tiny", "credit_limit": 0.000001}))
        .await;
    let before = upstream.stats().requests;
    let message = assert_error(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi")).await,
        402,
        "insufficient_quota",
        "credit_limit_exceeded",
    )
    .await;
    assert!(
        message.contains("0.000001") && message.contains("left"),
        "{message}"
    );
    assert_eq!(
        upstream.stats().requests,
        before,
        "refused before any upstream call"
    );

    let (other, other_prov) = app.new_account("poor").await;
    let _ = other;
    let response = app
        .post("/v1/account/keys", &other_prov, &json!({"name": "k"}))
        .await;
    let poor_key = response.json::<Value>().await.expect("json")["key"]
        .as_str()
        .expect("key")
        .to_string();
    let message = assert_error(
        post(
            &app,
            &poor_key,
            "/v1/chat/completions",
            &chat("gpt-test", "hi"),
        )
        .await,
        402,
        "insufficient_quota",
        "insufficient_balance",
    )
    .await;
    assert!(message.contains("balance"), "{message}");
}

#[tokio::test]
async fn client_disconnect_mid_stream_pays_for_what_was_generated_once() {
    let (app, upstream, key) = setup().await;
    let mut body = chat("gpt-test", "long story [[fake:words=60,chunk_ms=40]]");
    body["stream"] = json!(true);
    let response = post(&app, &key, "/v1/chat/completions", &body).await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("chat.completion.chunk").count() < 4 {
        let chunk = stream.next().await.expect("chunk").expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    // The charge is recorded once, as a client-closed request.
    let mut record = None;
    for _ in 0..100 {
        record = app
            .state
            .store
            .usage_record(&request_id)
            .await
            .expect("store");
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let record = record.expect("a usage record for the disconnected request");
    assert_eq!(record.status, 499);
    assert!(
        record.output_tokens >= 3 && record.output_tokens < 60,
        "{record:?}"
    );
    assert!(record.input_tokens > 0);
    assert_eq!(
        record.cost.nanos(),
        cost(
            &GPT,
            record.input_tokens.into(),
            0,
            record.output_tokens.into()
        )
    );
    // The upstream request was stopped.
    for _ in 0..100 {
        if upstream.stats().streams_cancelled >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.stats().streams_cancelled, 1);
    assert_eq!(upstream.stats().streams_completed, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 1);
    let key_view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(
        nanos(key_view["usage"].as_str().expect("usage")),
        record.cost.nanos()
    );
}

#[tokio::test]
async fn upstream_faults_are_not_charged() {
    let (app, _upstream, key) = setup().await;
    for (directive, status, code) in [
        ("[[fake:status=500]]", 502, "upstream_error"),
        ("[[fake:status=503]]", 502, "upstream_error"),
        ("[[fake:reset]]", 502, "upstream_error"),
        ("[[fake:malformed]]", 502, "upstream_malformed"),
    ] {
        let response = post(
            &app,
            &key,
            "/v1/chat/completions",
            &chat("gpt-test", &format!("fail {directive}")),
        )
        .await;
        let message = assert_error(response, status, "upstream_error", code).await;
        assert!(!message.contains("up-openai-secret"));
    }
    // A client error from the provider is passed on, also not charged.
    let response = post(
        &app,
        &key,
        "/v1/chat/completions",
        &chat("gpt-test", "bad [[fake:status=400]]"),
    )
    .await;
    assert_eq!(response.status(), 400);
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 5);
    assert!(ledger.iter().all(|r| r.4 == 0), "{ledger:?}");
    let key_view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(key_view["usage"], "0.00");
}

#[tokio::test]
async fn unreachable_and_silent_providers_are_clear_errors_and_cost_nothing() {
    let upstream = fake_upstream::start(Options::default())
        .await
        .expect("fake upstream");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let app = spawn_app_with(&format!(
        r#"
[[providers]]
name = "gone"
kind = "openai"
base_url = "http://127.0.0.1:{closed_port}/v1"

[[providers]]
name = "slow"
kind = "openai"
base_url = "{base}"
first_byte_timeout_ms = 200

[[models]]
id = "gone-test"
provider = "gone"
endpoints = ["chat.completions"]
pricing = {{ input = "1", output = "1" }}

[[models]]
id = "slow-test"
provider = "slow"
endpoints = ["chat.completions"]
pricing = {{ input = "1", output = "1" }}
"#,
        base = upstream.base_url()
    ))
    .await;
    app.grant("100").await;
    let key = app.inference_key().await;

    let response = post(&app, &key, "/v1/chat/completions", &chat("gone-test", "hi")).await;
    let message = assert_error(response, 502, "upstream_error", "upstream_unreachable").await;
    assert!(message.contains("'gone'"), "{message}");

    let started = std::time::Instant::now();
    let body = chat("slow-test", "late [[fake:first_byte_ms=3000]]");
    let response = post(&app, &key, "/v1/chat/completions", &body).await;
    assert_error(response, 504, "upstream_error", "upstream_timeout").await;
    // Two attempts of 200 ms each, not the provider's 3 s.
    assert!(started.elapsed() < Duration::from_millis(2500));

    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 2, "{ledger:?}");
    assert!(ledger.iter().all(|r| r.4 == 0), "{ledger:?}");
}

#[tokio::test]
async fn a_stream_broken_by_the_upstream_ends_with_an_error_event_and_is_charged_for_what_it_delivered(
) {
    let (app, _upstream, key) = setup().await;
    for directive in [
        "[[fake:cut_after=3]]",
        "[[fake:error_after=2]]",
        "[[fake:malformed]]",
    ] {
        let mut body = chat("gpt-test", &format!("story {directive}"));
        body["stream"] = json!(true);
        let response = post(&app, &key, "/v1/chat/completions", &body).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("text");
        assert!(
            text.contains("upstream_stream_failed") || text.contains("\"error\""),
            "{directive}: {text}"
        );
        assert!(!text.contains("[DONE]"), "{directive}: {text}");
    }
    // Each stream delivered some of the answer before it broke: that is charged (no
    // delivered output is free), at the content it relayed, and recorded as a failure.
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 3);
    assert!(ledger.iter().all(|r| r.4 > 0 && r.5 == 502), "{ledger:?}");
    assert!(
        ledger[0].3 >= 3 && ledger[1].3 >= 2 && ledger[2].3 >= 1,
        "{ledger:?}"
    );
}

#[tokio::test]
async fn an_upstream_error_before_the_first_byte_is_a_real_status_on_streams() {
    let (app, _upstream, key) = setup().await;
    let mut body = chat("gpt-test", "x [[fake:status=503]]");
    body["stream"] = json!(true);
    assert_error(
        post(&app, &key, "/v1/chat/completions", &body).await,
        502,
        "upstream_error",
        "upstream_error",
    )
    .await;
}

#[tokio::test]
async fn bad_model_requests_are_clear_400s() {
    let (app, _upstream, key) = setup().await;
    let cases = [
        (json!({"messages": []}), "model"),
        (json!({"model": 5}), "model"),
        (json!({"model": "embed-test", "messages": []}), "model"),
        (json!({"model": "gpt-test", "stream": "yes"}), "stream"),
        (json!({"model": "gpt-test", "max_tokens": -1}), "max_tokens"),
        (
            json!({"model": "gpt-test", "max_tokens": "10"}),
            "max_tokens",
        ),
    ];
    for (body, param) in cases {
        let response = post(&app, &key, "/v1/chat/completions", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let r = post(
        &app,
        &key,
        "/v1/chat/completions",
        &json!({"model": "nope"}),
    )
    .await;
    let message = assert_error(r, 404, "not_found_error", "model_not_found").await;
    assert!(message.contains("/v1/models"));
    for raw in ["{", "[]", "", "null"] {
        let response = app.post_raw("/v1/chat/completions", &key, raw).await;
        assert_error(response, 400, "invalid_request_error", "invalid_json").await;
    }
    // Wrong auth comes first, in the OpenAI shape.
    let response = app
        .post_raw("/v1/chat/completions", "tg-inf-nope", "{")
        .await;
    assert_error(response, 401, "authentication_error", "invalid_api_key").await;
    let response = app
        .post_raw("/v1/chat/completions", &app.prov_key, "{")
        .await;
    assert_error(response, 401, "authentication_error", "wrong_key_kind").await;
    let ledger = ledger(&app).await;
    assert!(ledger.is_empty());
}

#[tokio::test]
async fn messages_errors_are_in_anthropic_shape() {
    let (app, _upstream, key) = setup().await;
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", "tg-inf-wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-test", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "nope", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn deleted_keys_stop_at_once_on_model_endpoints() {
    let (app, _upstream, _) = setup().await;
    let (id, key) = app.create_key(json!({"name": "short-lived"})).await;
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
    app.patch(
        &format!("/v1/account/keys/{id}"),
        &app.prov_key,
        &json!({"is_enabled": false}),
    )
    .await;
    assert_error(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi")).await,
        401,
        "authentication_error",
        "key_disabled",
    )
    .await;
    app.patch(
        &format!("/v1/account/keys/{id}"),
        &app.prov_key,
        &json!({"is_enabled": true}),
    )
    .await;
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
    app.delete(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await;
    assert_error(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi")).await,
        401,
        "authentication_error",
        "key_deleted",
    )
    .await;
}

#[tokio::test]
async fn a_lowered_credit_limit_applies_to_the_next_request() {
    let (app, _upstream, _) = setup().await;
    let (id, key) = app
        .create_key(json!({"name": "k", "credit_limit": 1}))
        .await;
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
    app.patch(
        &format!("/v1/account/keys/{id}"),
        &app.prov_key,
        &json!({"credit_limit": 0}),
    )
    .await;
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        402
    );
    app.patch(
        &format!("/v1/account/keys/{id}"),
        &app.prov_key,
        &json!({"credit_limit": null}),
    )
    .await;
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn grants_made_outside_the_server_are_seen_within_seconds() {
    let (app, _upstream, _) = setup().await;
    let (_, poor_prov) = app.new_account("later-rich").await;
    let response = app
        .post("/v1/account/keys", &poor_prov, &json!({"name": "k"}))
        .await;
    let key = response.json::<Value>().await.expect("json")["key"]
        .as_str()
        .expect("key")
        .to_string();
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        402
    );
    let account = app
        .state
        .accounts
        .find_account("later-rich")
        .await
        .expect("store")
        .expect("account");
    // Written straight to the database, as `tollgate credits grant` does from another process.
    app.state
        .store
        .grant_credits(account.id, "5".parse().expect("amount"), None, 0)
        .await
        .expect("grant");
    let mut status = 0;
    for _ in 0..40 {
        status = post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let (app, upstream, _) = setup().await;
    let (id, key) = app
        .create_key(json!({"name": "slow", "rate_limit_rpm": 3}))
        .await;
    for _ in 0..3 {
        assert_eq!(
            post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
                .await
                .status(),
            200
        );
    }
    let before = upstream.stats().requests;
    let response = post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi")).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    assert_error(response, 429, "rate_limit_exceeded", "rate_limited").await;
    assert_eq!(upstream.stats().requests, before);
    // Shown on the key, and lifted with PATCH.
    let view: Value = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(view["rate_limit_rpm"], 3);
    app.patch(
        &format!("/v1/account/keys/{id}"),
        &app.prov_key,
        &json!({"rate_limit_rpm": null}),
    )
    .await;
    assert_eq!(
        post(&app, &key, "/v1/chat/completions", &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn hostile_bodies_never_make_a_server_error() {
    let (app, _upstream, key) = setup().await;
    let bodies: Vec<String> = vec![
        "{}".into(),
        r#"{"model":null}"#.into(),
        r#"{"model":"gpt-test","messages":"nope","max_tokens":10}"#.into(),
        r#"{"model":"gpt-test","messages":[{"role":5}],"max_tokens":10}"#.into(),
        r#"{"model":"gpt-test","n":0,"max_tokens":10,"messages":[]}"#.into(),
        r#"{"model":"gpt-test","n":18446744073709551615,"max_tokens":18446744073709551615,"messages":[]}"#.into(),
        r#"{"model":"gpt-test","stream":true,"stream_options":"x","messages":[]}"#.into(),
        r#"{"model":"gpt-test","stream":true,"stream_options":null,"messages":[],"max_tokens":5}"#.into(),
        r#"{"model":"claude-test","messages":[{"role":"user","content":[{"type":"mystery"}]}]}"#.into(),
        r#"{"model":"gpt-test","model":"claude-test","messages":[],"max_tokens":5}"#.into(),
        format!(r#"{{"model":"gpt-test","messages":[{{"role":"user","content":"{}"}}],"max_tokens":5}}"#, "\\u0000".repeat(50)),
        "[".repeat(10_000),
        "\"\u{feff}\"".into(),
    ];
    for path in [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/audio/speech",
        "/v1/moderations",
    ] {
        for body in &bodies {
            let response = app
                .client
                .post(app.url(path))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("the server answers");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            assert!(
                status < 500 || status == 502,
                "{path} {body:.80} -> {status} {text}"
            );
            assert!(
                !text.contains("up-openai-secret") && !text.contains(&key[7..]),
                "secret in {text}"
            );
        }
    }
    // Multipart endpoints with broken forms.
    for content_type in [
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/json",
        "text/plain",
    ] {
        let response = app
            .client
            .post(app.url("/v1/audio/transcriptions"))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body("--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-test\r\n--x\r\nbroken")
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 400, "{content_type}");
    }
    // Upload over the limit.
    let form = reqwest::multipart::Form::new()
        .text("model", "whisper-test")
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![0u8; 27 << 20]).file_name("big.wav"),
        );
    let response = app
        .client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 413);
    // Still serving.
    assert_eq!(
        app.post("/v1/chat/completions", &key, &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn oversized_headers_are_refused_and_the_server_keeps_serving() {
    let (app, _upstream, key) = setup().await;
    let mut request = app.client.get(app.url("/v1/models"));
    for i in 0..200 {
        request = request.header(format!("x-filler-{i}"), "y".repeat(100));
    }
    match request.send().await {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    let huge = app
        .client
        .get(app.url("/v1/models"))
        .header("x-huge", "z".repeat(1 << 20))
        .send()
        .await;
    if let Ok(response) = huge {
        assert!(response.status().is_client_error());
    }
    assert_eq!(
        app.post("/v1/chat/completions", &key, &chat("gpt-test", "hi"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn streams_are_not_buffered() {
    let (app, _upstream, key) = setup().await;
    let mut body = chat("gpt-test", "slowly [[fake:words=4,chunk_ms=300]]");
    body["stream"] = json!(true);
    let started = std::time::Instant::now();
    let response = post(&app, &key, "/v1/chat/completions", &body).await;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut first_content = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if first_content.is_none() && text.contains("\"content\":\"Hello\"") {
            first_content = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first = first_content.expect("content arrived");
    assert!(total >= Duration::from_millis(900), "{total:?}");
    assert!(
        first < Duration::from_millis(600),
        "first chunk after {first:?} of {total:?}: buffered"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
}
