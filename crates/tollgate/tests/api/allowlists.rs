//! Model allow-lists: a key with `allowed_models` is refused every other model with a 403
//! `permission_error` naming the model and the allowed ones, on every model endpoint and
//! with either key header, before any upstream call; `GET /v1/models` with that key lists
//! only its models; and a fallback never takes it to a model it may not use.

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::gateway::{chat, ledger};
use crate::helpers::{assert_error, TestApp};
use crate::passthrough::setup_extra;

const EXTRA: &str = r#"
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
api_key_env = "UP_OPENAI"

[[models]]
id = "instruct-test"
provider = "openai"
upstream_model = "gpt-3.5-turbo-instruct"
endpoints = ["completions"]
max_output_tokens = 1000
pricing = { input = "0.40", cached_input = "0.10", output = "1.60" }

[[models]]
id = "dalle-edit"
provider = "openai"
upstream_model = "dall-e-2"
endpoints = ["images.edits"]
pricing = { per_image = "0.02" }

[[models]]
id = "primary-test"
provider = "dead"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = { input = "0.40", output = "1.60" }
fallbacks = ["claude-test", "gpt-test"]
"#;

/// Each model endpoint with a model of the catalog that serves it, and its request.
enum Call {
    Json(&'static str, Value),
    Form(&'static str, &'static str),
}

fn calls() -> Vec<Call> {
    let text = |model: &str| json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    vec![
        Call::Json("/v1/chat/completions", text("claude-test")),
        Call::Json("/v1/messages", text("claude-test")),
        Call::Json(
            "/v1/messages/count_tokens",
            json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        Call::Json(
            "/v1/responses",
            json!({"model": "claude-test", "input": "hi", "max_output_tokens": 10}),
        ),
        Call::Json(
            "/v1/completions",
            json!({"model": "instruct-test", "prompt": "hi", "max_tokens": 5}),
        ),
        Call::Json(
            "/v1/embeddings",
            json!({"model": "embed-test", "input": "hi"}),
        ),
        Call::Json(
            "/v1/images/generations",
            json!({"model": "image-test", "prompt": "a cat", "n": 1}),
        ),
        Call::Json(
            "/v1/audio/speech",
            json!({"model": "tts-test", "input": "hi", "voice": "alloy"}),
        ),
        Call::Json(
            "/v1/moderations",
            json!({"model": "moderation-test", "input": "hi"}),
        ),
        Call::Form("/v1/audio/transcriptions", "whisper-test"),
        Call::Form("/v1/audio/translations", "whisper-test"),
        Call::Form("/v1/images/edits", "dalle-edit"),
    ]
}

fn form(path: &str, model: &str) -> Form {
    let (field, name, mime) = if path.ends_with("edits") {
        ("image", "a.png", "image/png")
    } else {
        ("file", "a.wav", "audio/wav")
    };
    Form::new()
        .text("model", model.to_string())
        .text("prompt", "x")
        .part(
            field,
            Part::bytes(vec![7u8; 4_000])
                .file_name(name)
                .mime_str(mime)
                .expect("mime"),
        )
}

/// Sends `call` with the key in `Authorization: Bearer` or in `x-api-key`.
async fn send(app: &TestApp, key: &str, call: &Call, x_api_key: bool) -> reqwest::Response {
    let (path, request) = match call {
        Call::Json(path, body) => (*path, app.client.post(app.url(path)).json(body)),
        Call::Form(path, model) => (
            *path,
            app.client.post(app.url(path)).multipart(form(path, model)),
        ),
    };
    let request = if x_api_key {
        request
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
    } else {
        request.bearer_auth(key)
    };
    let _ = path;
    request.send().await.expect("request")
}

fn model_of(call: &Call) -> String {
    match call {
        Call::Json(_, body) => body["model"].as_str().expect("model").to_string(),
        Call::Form(_, model) => model.to_string(),
    }
}

#[tokio::test]
async fn every_model_endpoint_refuses_a_model_outside_the_allow_list() {
    let (app, upstream, _) = setup_extra(EXTRA).await;
    let (_, key) = app
        .create_key(json!({"name": "ci", "allowed_models": ["gpt-test", "gpt-renamed"]}))
        .await;
    upstream.clear_received();
    for call in calls() {
        for x_api_key in [false, true] {
            let response = send(&app, &key, &call, x_api_key).await;
            let path = match &call {
                Call::Json(p, _) | Call::Form(p, _) => *p,
            };
            let model = model_of(&call);
            assert_eq!(
                response.status(),
                403,
                "{path} {model} x-api-key={x_api_key}"
            );
            let body: Value = response.json().await.expect("json");
            let (kind, message) = if path.starts_with("/v1/messages") {
                assert_eq!(body["type"], "error", "{body}");
                (
                    &body["error"]["type"],
                    body["error"]["message"].as_str().expect("message"),
                )
            } else {
                assert_eq!(body["error"]["code"], "model_not_allowed", "{body}");
                assert_eq!(body["error"]["param"], "model", "{body}");
                (
                    &body["error"]["type"],
                    body["error"]["message"].as_str().expect("message"),
                )
            };
            assert_eq!(kind, "permission_error", "{path}: {body}");
            assert!(message.contains(&format!("'{model}'")), "{path}: {message}");
            assert!(
                message.contains("gpt-test, gpt-renamed"),
                "{path}: {message}"
            );
        }
    }
    assert!(upstream.received().is_empty(), "nothing reached a provider");
    assert!(
        ledger(&app).await.is_empty(),
        "nothing was charged or recorded"
    );

    // The allowed models work, with either header.
    for x_api_key in [false, true] {
        let call = Call::Json("/v1/chat/completions", chat("gpt-test", "hi"));
        assert_eq!(send(&app, &key, &call, x_api_key).await.status(), 200);
    }
    // A key without a list uses everything; an empty list allows nothing.
    let (_, open) = app.create_key(json!({"name": "open"})).await;
    let call = Call::Json("/v1/chat/completions", chat("claude-test", "hi"));
    assert_eq!(send(&app, &open, &call, false).await.status(), 200);
    let (_, none) = app
        .create_key(json!({"name": "none", "allowed_models": []}))
        .await;
    let refused = send(&app, &none, &call, false).await;
    let message = assert_error(refused, 403, "permission_error", "model_not_allowed").await;
    assert!(message.contains("it may use: no model"), "{message}");
}

#[tokio::test]
async fn the_model_list_shows_a_key_only_its_models() {
    let (app, _up, _) = setup_extra(EXTRA).await;
    let (id, key) = app
        .create_key(json!({"name": "ci", "allowed_models": ["claude-test", "embed-test"]}))
        .await;
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    let all: Value = app
        .client
        .get(app.url("/v1/models"))
        .send()
        .await
        .expect("r")
        .json()
        .await
        .expect("json");
    assert!(ids(&all).len() > 5, "anonymous: the whole catalog");
    for x_api_key in [false, true] {
        for anthropic in [false, true] {
            let mut request = app.client.get(app.url("/v1/models"));
            request = if x_api_key {
                request.header("x-api-key", &key)
            } else {
                request.bearer_auth(&key)
            };
            if anthropic {
                request = request.header("anthropic-version", "2023-06-01");
            }
            let list: Value = request.send().await.expect("r").json().await.expect("json");
            assert_eq!(
                ids(&list),
                vec!["claude-test", "embed-test"],
                "x-api-key={x_api_key} anthropic={anthropic}"
            );
        }
    }
    let hidden = app
        .client
        .get(app.url("/v1/models/gpt-test"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("r");
    assert_error(hidden, 404, "not_found_error", "model_not_found").await;
    let shown = app
        .client
        .get(app.url("/v1/models/claude-test"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("r");
    assert_eq!(shown.status(), 200);
    // The key object shows the list; a PATCH to null lifts it.
    let view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(view["allowed_models"], json!(["claude-test", "embed-test"]));
    let patched: Value = app
        .patch(
            &format!("/v1/account/keys/{id}"),
            &app.prov_key,
            &json!({"allowed_models": null}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(patched["allowed_models"], Value::Null);
    let list: Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("r")
        .json()
        .await
        .expect("json");
    assert_eq!(ids(&list), ids(&all));
}

#[tokio::test]
async fn a_fallback_never_leads_a_key_to_a_model_it_may_not_use() {
    let (app, upstream, _) = setup_extra(EXTRA).await;
    // The primary's provider is down; its fallbacks are claude-test, then gpt-test.
    let (_, both) = app
        .create_key(json!({"name": "both", "allowed_models": ["primary-test", "gpt-test"]}))
        .await;
    upstream.clear_received();
    let served = app
        .post("/v1/chat/completions", &both, &chat("primary-test", "hi"))
        .await;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["x-tollgate-model"],
        "gpt-test",
        "claude-test was skipped"
    );
    assert!(
        upstream.received().iter().all(|r| r.path != "/v1/messages"),
        "no request went to the Anthropic model"
    );
    let (_, alone) = app
        .create_key(json!({"name": "alone", "allowed_models": ["primary-test"]}))
        .await;
    upstream.clear_received();
    let failed = app
        .post("/v1/chat/completions", &alone, &chat("primary-test", "hi"))
        .await;
    assert!(failed.status().is_server_error(), "{}", failed.status());
    assert!(upstream.received().is_empty(), "no fallback was tried");
}

#[tokio::test]
async fn allowed_models_are_validated() {
    let (app, _up, _) = setup_extra(EXTRA).await;
    for (bad, says) in [
        (json!("gpt-test"), "a list of model ids"),
        (json!([1]), "strings"),
        (json!(["gpt-test", "no-such-model"]), "'no-such-model'"),
    ] {
        let response = app
            .post(
                "/v1/account/keys",
                &app.prov_key,
                &json!({"name": "k", "allowed_models": bad}),
            )
            .await;
        let message = assert_error(response, 400, "invalid_request_error", "invalid_field").await;
        assert!(message.contains(says), "{message}");
    }
    let (_, key) = app
        .create_key(json!({"name": "k", "allowed_models": ["gpt-test", "gpt-test"]}))
        .await;
    let view: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(view["allowed_models"], json!(["gpt-test"]), "each once");
}
