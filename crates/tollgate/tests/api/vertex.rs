//! A Vertex AI provider against the fake upstream's token endpoint and Vertex paths: Claude
//! through rawPredict / streamRawPredict with the Messages body, Gemini through
//! generateContent with tools, the service account's OAuth token fetched once, cached and
//! fetched again after it expires, a token from the environment, and refusals; metered to
//! the unit.

use std::time::Duration;

use fake_upstream::{FakeUpstream, Options, TEST_VERTEX_CLIENT_EMAIL, TEST_VERTEX_PRIVATE_KEY_PEM};
use serde_json::{json, Value};

use crate::gateway::{cost, ledger, Prices, CLAUDE};
use crate::helpers::{spawn_app_env, TestApp};

/// gemini-2.5-flash: $0.30 input, $0.03 cached, $2.50 output per million tokens.
const FLASH: Prices = Prices {
    input: 300_000_000,
    cached: 30_000_000,
    output: 2_500_000_000,
};

const MODELS: &str = "[[models]]\nid = \"claude-vertex\"\nprovider = \"vertex\"\nupstream_model = \"claude-sonnet-4-5@20250929\"\nendpoints = [\"chat.completions\", \"messages\", \"responses\"]\nmax_output_tokens = 1000\npricing = { input = \"3\", cached_input = \"0.30\", output = \"15\" }\n\
[[models]]\nid = \"gemini-vertex\"\nprovider = \"vertex\"\nupstream_model = \"gemini-2.5-flash\"\nendpoints = [\"chat.completions\", \"messages\", \"responses\"]\nmax_output_tokens = 1000\npricing = { input = \"0.30\", cached_input = \"0.03\", output = \"2.50\" }\n";

async fn upstream(lifetime: Option<Duration>) -> FakeUpstream {
    fake_upstream::start(Options {
        vertex_token_lifetime: lifetime,
        vertex_access_token: Some("env-token-for-tests".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream")
}

/// A gateway whose Vertex provider uses a service-account key file for `email`.
async fn with_account(up: &FakeUpstream, email: &str) -> (TestApp, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("sa.json");
    let key = json!({"type": "service_account", "project_id": "fake-project",
        "private_key_id": "test", "private_key": TEST_VERTEX_PRIVATE_KEY_PEM,
        "client_email": email, "token_uri": format!("{}/token", up.root_url())});
    std::fs::write(&path, key.to_string()).expect("key file");
    let config = format!(
        "[[providers]]\nname = \"vertex\"\nkind = \"vertex\"\nproject = \"fake-project\"\nregion = \"us-east5\"\nbase_url = \"{}\"\ncredentials_file = \"{}\"\n{MODELS}",
        up.root_url(),
        path.display()
    );
    let app = spawn_app_env(&config, &|_: &str| None).await;
    app.grant("100").await;
    let inference = app.inference_key().await;
    (app, inference, dir)
}

fn last(up: &FakeUpstream) -> fake_upstream::Received {
    up.received()
        .into_iter()
        .rev()
        .find(|r| r.path != "/token")
        .expect("a model request reached the fake")
}

fn token_requests(up: &FakeUpstream) -> usize {
    up.received().iter().filter(|r| r.path == "/token").count()
}

fn data_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect()
}

#[tokio::test]
async fn claude_on_vertex_whole_and_streamed_through_raw_predict() {
    let up = upstream(None).await;
    let (app, key, _dir) = with_account(&up, TEST_VERTEX_CLIENT_EMAIL).await;
    let body = json!({"model": "claude-vertex", "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello there [[fake:cached=2,words=3]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let sent = last(&up);
    assert_eq!(
        sent.path,
        "/v1/projects/fake-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    );
    assert!(sent
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ya29.")));
    let native = sent.json().expect("json");
    assert_eq!(native["anthropic_version"], "vertex-2023-10-16");
    assert!(native.get("model").is_none());
    assert_eq!(answer["model"], "claude-vertex");
    assert_eq!(answer["usage"]["input_tokens"], 11);
    assert_eq!(answer["usage"]["cache_read_input_tokens"], 2);
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].2, rows[0].3), (13, 2, 3));
    assert_eq!(rows[0].4, cost(&CLAUDE, 13, 2, 3));

    let body = json!({"model": "claude-vertex", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "Count [[fake:words=4]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    let sent = last(&up);
    assert!(sent.path.ends_with(":streamRawPredict"));
    assert_eq!(sent.json().expect("json")["stream"], true);
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    let rows = ledger(&app).await;
    assert_eq!((rows[1].1, rows[1].3), (6, 4));
    assert_eq!(rows[1].4, cost(&CLAUDE, 6, 0, 4));
    assert_eq!(token_requests(&up), 1, "one token for both requests");
}

#[tokio::test]
async fn gemini_on_vertex_streams_tools_through_the_gemini_translation() {
    let up = upstream(None).await;
    let (app, key, _dir) = with_account(&up, TEST_VERTEX_CLIENT_EMAIL).await;
    let body = json!({"model": "gemini-vertex", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Weather? [[fake:tool,cached=1]]"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    let sent = last(&up);
    assert_eq!(
        sent.path,
        "/v1/projects/fake-project/locations/us-east5/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(sent.query.as_deref(), Some("alt=sse"));
    assert!(sent.header("x-goog-api-key").is_none());
    let chunks = data_lines(&text);
    let call = chunks
        .iter()
        .find_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
        .expect("a tool call");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage");
    // Input: 4 + two words (the directive is one).
    assert_eq!(usage["usage"]["prompt_tokens"], 6);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].2), (6, 1));
    let output = rows[0].3;
    assert!(output > 0);
    assert_eq!(rows[0].4, cost(&FLASH, 6, 1, output as i128));
}

#[tokio::test]
async fn gemini_on_vertex_whole_from_a_messages_client() {
    let up = upstream(None).await;
    let (app, key, _dir) = with_account(&up, TEST_VERTEX_CLIENT_EMAIL).await;
    let body = json!({"model": "gemini-vertex", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello [[fake:words=3]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["model"], "gemini-vertex");
    assert_eq!(answer["usage"]["output_tokens"], 3);
    assert!(last(&up)
        .path
        .ends_with("/publishers/google/models/gemini-2.5-flash:generateContent"));
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].3), (6, 3));
    assert_eq!(rows[0].4, cost(&FLASH, 6, 0, 3));
}

#[tokio::test]
async fn the_token_is_fetched_once_for_many_requests_and_again_after_it_expires() {
    // Five seconds: refreshed 0.5 s ahead, long enough for five requests on a loaded
    // machine.
    let up = upstream(Some(Duration::from_secs(5))).await;
    let (app, key, _dir) = with_account(&up, TEST_VERTEX_CLIENT_EMAIL).await;
    let body = json!({"model": "claude-vertex", "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hi [[fake:words=2]]"}]});
    let requests = (0..5).map(|_| app.post("/v1/messages", &key, &body));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(token_requests(&up), 1);
    let first = last(&up).header("authorization").map(str::to_string);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200, "a fresh token was used");
    assert_eq!(token_requests(&up), 2);
    assert_ne!(last(&up).header("authorization").map(str::to_string), first);
    assert_eq!(ledger(&app).await.len(), 6);
}

#[tokio::test]
async fn a_token_from_the_environment_and_refusals() {
    let up = upstream(None).await;
    let config = |var: &str| {
        format!(
            "[[providers]]\nname = \"vertex\"\nkind = \"vertex\"\nproject = \"fake-project\"\nregion = \"us-east5\"\nbase_url = \"{}\"\naccess_token_env = \"{var}\"\n{MODELS}",
            up.root_url()
        )
    };
    let env = |name: &str| match name {
        "GOOD_TOKEN" => Some("env-token-for-tests".to_string()),
        "BAD_TOKEN" => Some("expired-or-forged".to_string()),
        _ => None,
    };
    let body = json!({"model": "claude-vertex", "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hi [[fake:words=2]]"}]});
    let app = spawn_app_env(&config("GOOD_TOKEN"), &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        last(&up).header("authorization"),
        Some("Bearer env-token-for-tests")
    );
    assert_eq!(token_requests(&up), 0);

    let app = spawn_app_env(&config("BAD_TOKEN"), &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    let response = app.post("/v1/messages", &key, &body).await;
    assert_ne!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(!text.contains("expired-or-forged"), "{text}");
    assert!(ledger(&app).await.iter().all(|r| r.4 == 0));

    // A service account the token endpoint does not know gets no token, and no answer.
    let (app, key, _dir) =
        with_account(&up, "someone-else@fake-project.iam.gserviceaccount.com").await;
    let response = app.post("/v1/messages", &key, &body).await;
    assert_ne!(response.status(), 200);
    assert!(ledger(&app).await.iter().all(|r| r.4 == 0));
}

/// The service account's access token is obtained at run time, not configured: an
/// upstream that quotes the request's headers in an error must not hand it to the client
/// (before, only configured secrets were scrubbed, and this answer carried the token).
#[tokio::test]
async fn a_fetched_access_token_echoed_by_the_upstream_is_redacted() {
    let up = upstream(None).await;
    let (app, key, _dir) = with_account(&up, TEST_VERTEX_CLIENT_EMAIL).await;
    for (path, stream) in [("/v1/messages", false), ("/v1/chat/completions", true)] {
        let body = json!({"model": "claude-vertex", "max_tokens": 20, "stream": stream,
            "messages": [{"role": "user", "content": "Hi [[fake:status=400,echo_headers]]"}]});
        let response = app.post(path, &key, &body).await;
        assert_eq!(response.status(), 400, "{path}");
        let text = response.text().await.expect("body");
        let sent = last(&up)
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .expect("a bearer token reached the upstream")
            .to_string();
        assert_eq!(token_requests(&up), 1);
        assert!(
            !text.contains(&sent),
            "{path}: the token reached the client: {text}"
        );
        assert!(
            text.contains("authorization: Bearer [REDACTED]"),
            "{path}: the echo is relayed, scrubbed: {text}"
        );
    }
}
