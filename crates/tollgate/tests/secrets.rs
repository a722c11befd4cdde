//! Provider secrets never leave in relayed text: a provider whose 400 echoes the request's
//! headers (raw, JSON-escaped and URL-encoded) has them scrubbed before the client or the
//! log sees them.
//!
//! A test process of its own: the log subscriber is global. A scoped one
//! (`set_default`) in the shared api binary missed events whenever another test thread
//! registered the same callsites first (tracing's interest cache), and the "logs were
//! captured" check then failed at random.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tracing_subscriber::fmt::MakeWriter;

use crate::helpers::spawn_app_env;

/// Provider keys with characters that JSON and URLs escape; `QZXJ` and `WVKP` mark them
/// in every form (letters are never escaped).
const OPENAI_SECRET: &str = r#"sk-echo/QZXJ+123="quoted"\end"#;
const ANTHROPIC_SECRET: &str = "sk-ant-WVKP/only=plain";
/// Bedrock's: the secret key signs and is never sent; the session token is sent.
const AWS_SECRET: &str = "HJTDsecret/key+0123456789abcdefghijklmn";
const AWS_TOKEN: &str = "FwoGZXIvYXdzMKRB//token+with=signs";
const MARKERS: [&str; 4] = ["qzxj", "wvkp", "hjtd", "mkrb"];

/// Every message the echoing provider sent, to check the test shows what it claims.
type Sent = Arc<Mutex<Vec<String>>>;

/// A provider that answers every request with a 400 whose message repeats the request's
/// headers three ways: as they came, as a JSON array, and URL-encoded.
async fn echoing_provider() -> (SocketAddr, Sent) {
    let sent: Sent = Arc::default();
    let log = sent.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            let lines: Vec<String> = headers
                .iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                .collect();
            let as_json = serde_json::to_string(&lines).expect("json");
            let encoded: Vec<String> = headers
                .iter()
                .map(|(name, value)| {
                    let value = value.to_str().unwrap_or("?");
                    format!("{name}={}", utf8_percent_encode(value, NON_ALPHANUMERIC))
                })
                .collect();
            let message = format!(
                "Invalid request. Headers: {}. As JSON: {as_json}. As a query: {}",
                lines.join("; "),
                encoded.join("&")
            );
            log.lock().expect("log").push(message.clone());
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, sent)
}

/// Log lines written while the test runs (its runtime is one thread: the server's tasks
/// log through this subscriber too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn assert_no_secret(text: &str, what: &str) {
    let lower = text.to_lowercase();
    for marker in MARKERS {
        assert!(
            !lower.contains(marker),
            "a provider secret in the {what}: {text}"
        );
    }
}

#[tokio::test]
async fn a_provider_echoing_its_credentials_never_shows_them() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let (addr, sent) = echoing_provider().await;
    let config = format!(
        r#"
[[providers]]
name = "echo-openai"
kind = "openai"
base_url = "http://{addr}/v1"
api_key_env = "ECHO_OPENAI"

[[providers]]
name = "echo-anthropic"
kind = "anthropic"
base_url = "http://{addr}/v1"
api_key_env = "ECHO_ANTHROPIC"

[[providers]]
name = "echo-bedrock"
kind = "bedrock"
region = "us-east-1"
base_url = "http://{addr}"

[[models]]
id = "echo-nova"
provider = "echo-bedrock"
upstream_model = "amazon.nova-pro-v1:0"
endpoints = ["chat.completions"]
max_output_tokens = 100
pricing = {{ input = "1", output = "1" }}

[[models]]
id = "echo-gpt"
provider = "echo-openai"
endpoints = ["chat.completions"]
max_output_tokens = 100
pricing = {{ input = "1", output = "1" }}

[[models]]
id = "echo-claude"
provider = "echo-anthropic"
endpoints = ["messages"]
max_output_tokens = 100
pricing = {{ input = "1", output = "1" }}
"#
    );
    let env = |name: &str| match name {
        "ECHO_OPENAI" => Some(OPENAI_SECRET.to_string()),
        "ECHO_ANTHROPIC" => Some(ANTHROPIC_SECRET.to_string()),
        "AWS_ACCESS_KEY_ID" => Some("AKIAECHOTEST".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(AWS_SECRET.to_string()),
        "AWS_SESSION_TOKEN" => Some(AWS_TOKEN.to_string()),
        _ => None,
    };
    let app = spawn_app_env(&config, &env).await;
    app.grant("10").await;
    let key = app.inference_key().await;

    let chat = app
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "echo-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(chat.status(), 400);
    let text = chat.text().await.expect("body");
    assert_no_secret(&text, "chat error");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"]["code"], "upstream_refused");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("Invalid request."), "{message}");
    // Raw, JSON-escaped and URL-encoded: three redactions, the rest of the text kept.
    assert_eq!(message.matches("[REDACTED]").count(), 3, "{message}");
    assert!(
        message.contains("authorization: Bearer [REDACTED]"),
        "{message}"
    );

    let messages = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "echo-claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(messages.status(), 400);
    let text = messages.text().await.expect("body");
    assert_no_secret(&text, "messages error");
    let body: Value = serde_json::from_str(&text).expect("json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("x-api-key: [REDACTED]"), "{message}");

    let bedrock = app
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "echo-nova", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(bedrock.status(), 400);
    let text = bedrock.text().await.expect("body");
    assert_no_secret(&text, "bedrock error");
    let body: Value = serde_json::from_str(&text).expect("json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("x-amz-security-token: [REDACTED]"),
        "{message}"
    );

    // The provider did echo both secrets, in every form: the test saw real leaks stopped.
    let sent = sent.lock().expect("sent").join("\n");
    assert!(sent.contains(OPENAI_SECRET) && sent.contains(ANTHROPIC_SECRET));
    assert!(sent.contains(AWS_TOKEN) && !sent.contains(AWS_SECRET));
    assert!(
        sent.contains(r#"QZXJ+123=\"quoted\"\\end"#),
        "JSON-escaped form"
    );
    assert!(
        sent.contains("QZXJ%2B123%3D%22quoted%22%5Cend"),
        "URL-encoded form"
    );

    let logs = String::from_utf8(logs.0.lock().expect("log").clone()).expect("utf-8");
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "logs were captured"
    );
    assert_no_secret(&logs, "log");
}
