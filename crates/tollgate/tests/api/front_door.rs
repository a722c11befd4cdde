//! The front door: connections that send too little are closed within their timeout, the
//! HTTP layer's own refusals are JSON, CORS answers only the origins allowed, output
//! limits above a model's maximum are refused by name, and start-up refuses a model its
//! provider cannot serve.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{catalog, chat, setup};
use crate::helpers::{assert_error, spawn_app, spawn_app_with, TestApp};

const FAST: &str = "[server]\nheader_timeout_ms = 300\nbody_timeout_ms = 300\n";

/// Waits for the server to close the connection; returns what it sent first.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .expect("the server closed the connection");
    seen
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connect")
}

#[tokio::test]
async fn connections_that_send_too_little_are_closed() {
    let app = spawn_app_with(FAST).await;
    // Generous: the timeout is 300 ms; the machine may be loaded.
    let bound = Duration::from_secs(20);
    let partial: [&[u8]; 4] = [
        b"",
        b"POST /v1/chat/compl",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n",
    ];
    for sent in partial {
        let mut stream = connect(&app).await;
        stream.write_all(sent).await.expect("write");
        let started = Instant::now();
        closed_by_server(&mut stream, bound).await;
        assert!(started.elapsed() < bound);
    }

    // A body shorter than its Content-Length: 408 in the API's shape, then closed.
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-inf-x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
        )
        .await
        .expect("write");
    let answer = closed_by_server(&mut stream, bound).await;
    let text = String::from_utf8_lossy(&answer);
    // The key is checked before the body is read: an unknown key is refused at once;
    // with a real key the body read times out.
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");

    let key = app.inference_key().await;
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let answer = closed_by_server(&mut stream, bound).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).expect("a JSON body");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");

    // An idle keep-alive connection is closed after its answer.
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = closed_by_server(&mut stream, bound).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

/// Sends raw bytes and reads the whole answer (the server closes after an error).
async fn raw(app: &TestApp, request: &[u8]) -> (u16, Value) {
    let mut stream = connect(app).await;
    stream.write_all(request).await.expect("write");
    let answer = closed_by_server(&mut stream, Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body in {text}"));
    (status, body)
}

#[tokio::test]
async fn the_http_layers_own_refusals_are_json() {
    let app = spawn_app().await;
    let (status, body) = raw(&app, b"GET /healthz HTTP/1.1\r\nNot a header\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    let (status, body) = raw(
        &app,
        b"POST /v1/messages HTTP/1.1\r\nBad\x01Header: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["type"], "error",
        "Anthropic's shape under /v1/messages: {body}"
    );

    let long_uri = format!(
        "GET /v1/models?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let (status, body) = raw(&app, long_uri.as_bytes()).await;
    assert_eq!(status, 414);
    assert_eq!(body["error"]["code"], "uri_too_long", "{body}");

    let big_headers = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("x-filler-{i}: {}\r\n", "b".repeat(3000)))
            .collect::<String>()
    );
    let (status, body) = raw(&app, big_headers.as_bytes()).await;
    assert_eq!(status, 431);
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
}

/// Reads one answer (its head, then its body by `content-length`): its status, or `None`
/// when the server closed the connection instead.
async fn answer_on(stream: &mut TcpStream) -> Option<u16> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while seen.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    head.get(9..12).and_then(|s| s.parse().ok())
}

/// A request refused before its body is read (here an unknown key) leaves its connection
/// open for the client's next request: the server reads the rest of the body and drops
/// it. (hyper closes a connection whose request body was not read to its end, without
/// saying so in the answer, so the client's next request on it failed: a broken pipe.)
/// Also for a chunked body. A body past the bound is not read: the connection closes after
/// the answer, as before.
#[tokio::test]
async fn a_refusal_before_the_body_is_read_keeps_the_connection_open() {
    let app = spawn_app().await;
    let timeout = Duration::from_secs(30);
    let mut stream = connect(&app).await;
    for size in [100, 300_000, 1_000_000] {
        let body = format!(
            "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
            "a".repeat(size)
        );
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-inf-unknown\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let refused = tokio::time::timeout(timeout, answer_on(&mut stream)).await;
        assert_eq!(
            refused.expect("answered"),
            Some(401),
            "body of {size} bytes"
        );
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("the connection closed after a {size}-byte body: {e}"));
        let next = tokio::time::timeout(timeout, answer_on(&mut stream)).await;
        assert_eq!(
            next.expect("answered"),
            Some(200),
            "the next request on the connection, after a refused body of {size} bytes"
        );
    }

    // A chunked body, whose length is not known until its last chunk.
    let chunked = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-inf-unknown\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n";
    stream.write_all(chunked.as_bytes()).await.expect("write");
    let refused = tokio::time::timeout(timeout, answer_on(&mut stream)).await;
    assert_eq!(refused.expect("answered"), Some(401));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("the connection is open after a refused chunked body");
    let next = tokio::time::timeout(timeout, answer_on(&mut stream)).await;
    assert_eq!(next.expect("answered"), Some(200));

    let mut stream = connect(&app).await;
    let body = "a".repeat(3 << 20);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-inf-unknown\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let refused = tokio::time::timeout(timeout, answer_on(&mut stream)).await;
    assert_eq!(refused.expect("answered"), Some(401));
    closed_by_server(&mut stream, timeout).await;
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_only_allowed_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let off = spawn_app().await;
    let response = preflight(&off, "https://app.example.com")
        .await
        .expect("send");
    assert_eq!(response.status(), 405);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let app = spawn_app_with("[cors]\nallowed_origins = [\"https://app.example.com\"]\n").await;
    let response = preflight(&app, "https://app.example.com")
        .await
        .expect("send");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = response.headers()["access-control-allow-methods"]
        .to_str()
        .expect("methods")
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    let response = preflight(&app, "https://evil.example").await.expect("send");
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // An actual request from the allowed origin can read the answer and its headers.
    let response = app
        .client
        .get(app.url("/v1/models"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .expect("exposed")
        .to_string();
    assert!(exposed.contains("x-request-id"), "{exposed}");
}

#[tokio::test]
async fn an_output_limit_above_the_models_maximum_names_it() {
    let (app, upstream, key) = setup().await;
    let mut body = chat("gpt-test", "hi");
    body["max_tokens"] = json!(1_000_000_000_000u64);
    let response = app.post("/v1/chat/completions", &key, &body).await;
    let message = assert_error(
        response,
        400,
        "invalid_request_error",
        "max_tokens_too_large",
    )
    .await;
    assert!(message.contains("1000 tokens"), "{message}");
    // Both limits given: the larger one is checked, whichever the provider reads.
    let mut body = chat("gpt-test", "hi");
    body["max_tokens"] = json!(10);
    body["max_completion_tokens"] = json!(5000);
    let response = app.post("/v1/chat/completions", &key, &body).await;
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["param"], "max_completion_tokens", "{error}");
    let response = app
        .post(
            "/v1/responses",
            &key,
            &json!({"model": "gpt-test", "input": "hi", "max_output_tokens": 1001}),
        )
        .await;
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["param"], "max_output_tokens", "{error}");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn start_up_refuses_a_model_its_provider_cannot_serve() {
    let upstream = fake_upstream::start(fake_upstream::Options::default())
        .await
        .expect("fake");
    let bad = format!(
        "{}\n[[models]]\nid = \"claude-embed\"\nprovider = \"anthropic\"\nendpoints = [\"embeddings\"]\npricing = {{ input = \"1\" }}\n",
        catalog(&upstream)
    );
    // Every variable is set but the base URLs and regions (which would have to be URLs and
    // regions).
    let env = |name: &str| {
        (!name.ends_with("_BASE_URL") && !name.ends_with("_REGION"))
            .then(|| format!("{name}-value"))
    };
    let dir = tempfile::tempdir().expect("dir");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}/t.db\"\n{bad}",
        dir.path().display()
    );
    let config =
        tollgate::config::Config::from_toml(&toml, &tollgate::config::Overrides::default(), &env)
            .expect("the file itself is valid");
    let error = match tollgate::server::Server::bind(config).await {
        Ok(_) => panic!("start-up accepted an Anthropic model serving embeddings"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("claude-embed") && error.contains("embeddings"),
        "{error}"
    );
    // Responses on an Anthropic model is served (translated), so it starts.
    let good = format!(
        "{}\n[[models]]\nid = \"claude-codex\"\nprovider = \"anthropic\"\nendpoints = [\"responses\"]\npricing = {{ input = \"1\", output = \"2\" }}\n",
        catalog(&upstream)
    );
    let app = spawn_app_with_env(&good).await;
    let models: Value = app
        .client
        .get(app.url("/v1/models"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(models["data"]
        .as_array()
        .expect("data")
        .iter()
        .any(|m| m["id"] == "claude-codex"));
}

async fn spawn_app_with_env(config: &str) -> TestApp {
    // Every variable is set but the base URLs and regions (which would have to be URLs and
    // regions).
    let env = |name: &str| {
        (!name.ends_with("_BASE_URL") && !name.ends_with("_REGION"))
            .then(|| format!("{name}-value"))
    };
    crate::helpers::spawn_app_env(config, &env).await
}
