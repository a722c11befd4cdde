//! The model surface beyond the seeds: `GET /v1/models/{id}` (and Anthropic's shapes),
//! `POST /v1/messages/count_tokens`, the legacy `POST /v1/completions` and
//! `POST /v1/images/edits`, each metered like the rest (count_tokens free).

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::gateway::{cost, ledger, nanos, GPT};
use crate::helpers::TestApp;
use crate::passthrough::{setup_extra, CLAUDE_CODE_BETAS};

const EXTRA: &str = r#"
[[models]]
id = "instruct-test"
provider = "openai"
upstream_model = "gpt-3.5-turbo-instruct"
endpoints = ["completions"]
max_output_tokens = 1000
pricing = { input = "0.40", cached_input = "0.10", output = "1.60" }

[[models]]
id = "chat-as-completions"
provider = "openai"
upstream_model = "gpt-4.1-mini"
endpoints = ["completions"]
max_output_tokens = 1000
pricing = { input = "0.40", output = "1.60" }

[[models]]
id = "claude-renamed"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
endpoints = ["messages"]
max_output_tokens = 64000
pricing = { input = "3.00", output = "15.00" }

[[models]]
id = "org/edit-model"
provider = "openai"
upstream_model = "gpt-image-1"
endpoints = ["images.edits", "images.generations"]
pricing = { input = "5.00", output = "40.00" }

[[models]]
id = "dalle-edit"
provider = "openai"
upstream_model = "dall-e-2"
endpoints = ["images.edits"]
pricing = { per_image = "0.02" }
"#;

async fn get(app: &TestApp, path: &str, anthropic: bool) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if anthropic {
        request = request.header("anthropic-version", "2023-06-01");
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn a_model_is_retrieved_in_each_apis_shape() {
    let (app, _upstream, key) = setup_extra(EXTRA).await;
    let response = get(&app, "/v1/models/gpt-test", false).await;
    assert_eq!(response.status(), 200);
    let model: Value = response.json().await.expect("json");
    assert_eq!(model["id"], "gpt-test");
    assert_eq!(model["object"], "model");
    assert_eq!(model["max_output_tokens"], 1000);
    assert!(model["pricing"]["per_input_token"].is_number(), "{model}");

    // Ids may hold slashes; an inference key is checked when given.
    let response = app
        .client
        .get(app.url("/v1/models/org/edit-model"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    let model: Value = response.json().await.expect("json");
    assert_eq!(model["id"], "org/edit-model");
    let response = app
        .client
        .get(app.url("/v1/models/gpt-test"))
        .bearer_auth("tg-inf-wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);

    let response = get(&app, "/v1/models/claude-test", true).await;
    let model: Value = response.json().await.expect("json");
    assert_eq!(
        model,
        json!({"type": "model", "id": "claude-test", "display_name": "claude-test",
               "created_at": "1970-01-01T00:00:00Z"})
    );
    let response = get(&app, "/v1/models", true).await;
    let list: Value = response.json().await.expect("json");
    let data = list["data"].as_array().expect("data");
    assert!(data
        .iter()
        .all(|m| m["type"] == "model" && m.get("pricing").is_none()));
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], data[0]["id"]);
    assert_eq!(list["last_id"], data[data.len() - 1]["id"]);

    let response = get(&app, "/v1/models/nope", false).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "model_not_found");
    let response = get(&app, "/v1/models/nope", true).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["type"], "not_found_error", "{error}");
}

async fn count(app: &TestApp, key: &str, body: &Value, betas: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/messages/count_tokens"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(betas) = betas {
        request = request.header("anthropic-beta", betas);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn count_tokens_is_forwarded_or_counted_locally_and_free() {
    let (app, upstream, key) = setup_extra(EXTRA).await;
    let body = json!({"model": "claude-renamed", "system": "Be brief.",
                      "messages": [{"role": "user", "content": "one two three"}]});
    let response = count(&app, &key, &body, None).await;
    assert_eq!(response.status(), 200);
    let counted: Value = response.json().await.expect("json");
    // The fake's formula: (4 + 2) for the system prompt, (4 + 3) for the message.
    assert_eq!(counted, json!({"input_tokens": 13}));
    let sent = upstream.received().last().expect("received").clone();
    assert_eq!(sent.path, "/v1/messages/count_tokens");
    assert_eq!(sent.json().expect("json")["model"], "claude-sonnet-4-5");
    assert_eq!(sent.header("x-api-key"), Some("up-anthropic-secret"));

    // Beta fields need their beta, upstream as at Anthropic.
    let mut beta = body.clone();
    beta["context_management"] = json!({"edits": [{"type": "clear_thinking_20251015"}]});
    let refused = count(&app, &key, &beta, None).await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["type"], "error", "{error}");
    let response = count(&app, &key, &beta, Some(CLAUDE_CODE_BETAS)).await;
    assert_eq!(response.status(), 200);

    // An OpenAI-compatible model is counted by the gateway: nothing goes upstream.
    let before = upstream.received().len();
    let local = json!({"model": "gpt-test",
                       "messages": [{"role": "user", "content": "one two three"}]});
    let response = count(&app, &key, &local, None).await;
    assert_eq!(response.status(), 200);
    let counted: Value = response.json().await.expect("json");
    let tokens = counted["input_tokens"].as_u64().expect("count");
    assert!((3..100).contains(&tokens), "{counted}");
    assert_eq!(upstream.received().len(), before);

    // Free and unrecorded; errors in Anthropic's shape.
    assert!(ledger(&app).await.is_empty());
    let response = count(&app, &key, &json!({"model": "nope", "messages": []}), None).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["type"], "not_found_error");
    let response = count(&app, "tg-inf-wrong", &local, None).await;
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn legacy_completions_pass_through_and_are_charged_exactly() {
    let (app, upstream, key) = setup_extra(EXTRA).await;
    let response = app
        .post(
            "/v1/completions",
            &key,
            &json!({"model": "instruct-test", "prompt": "Say this is a test [[fake:words=40]]"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let charged = nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["model"], "instruct-test", "renamed to the public id");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    let sent = upstream
        .received()
        .last()
        .expect("received")
        .json()
        .expect("json");
    // OpenAI's default output limit, sent explicitly (servers differ).
    assert_eq!(sent["max_tokens"], 16);
    assert_eq!(sent["model"], "gpt-3.5-turbo-instruct");
    let (input, output) = (
        answer["usage"]["prompt_tokens"].as_i64().expect("usage"),
        answer["usage"]["completion_tokens"]
            .as_i64()
            .expect("usage"),
    );
    assert_eq!(output, 16);
    assert_eq!(charged, cost(&GPT, input.into(), 0, 16));

    // Streamed: usage asked of the provider, not shown to a client that did not ask.
    let response = app
        .post(
            "/v1/completions",
            &key,
            &json!({"model": "instruct-test", "prompt": "Say this [[fake:words=7]]",
                    "max_tokens": 50, "stream": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"usage\""), "{text}");
    let words: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(words.split_whitespace().count(), 7, "{words}");
    let sent = upstream
        .received()
        .last()
        .expect("received")
        .json()
        .expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // A chat model is refused by the provider as OpenAI does (its 404 passed on).
    let response = app
        .post(
            "/v1/completions",
            &key,
            &json!({"model": "chat-as-completions", "prompt": "hi"}),
        )
        .await;
    assert_eq!(response.status(), 404);
    // A model without the endpoint is the gateway's 400.
    let response = app
        .post(
            "/v1/completions",
            &key,
            &json!({"model": "claude-test", "prompt": "hi"}),
        )
        .await;
    assert_eq!(response.status(), 400);

    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0].1, rows[0].3, rows[0].4), (input, 16, charged));
    assert_eq!((rows[1].3, rows[1].5), (7, 200));
    assert_eq!(rows[1].4, cost(&GPT, rows[1].1.into(), 0, 7));
    assert_eq!((rows[2].4, rows[2].5), (0, 404));
}

fn png() -> Part {
    Part::bytes(vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10, 1, 2, 3])
        .file_name("in.png")
        .mime_str("image/png")
        .expect("mime")
}

async fn edit(app: &TestApp, key: &str, form: Form) -> reqwest::Response {
    app.client
        .post(app.url("/v1/images/edits"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn image_edits_are_uploaded_and_charged_per_image_or_token() {
    let (app, upstream, key) = setup_extra(EXTRA).await;
    // The OpenAI SDK's order: the image first, then the fields.
    let form = Form::new()
        .part("image", png())
        .text("prompt", "add a hat")
        .text("model", "dalle-edit")
        .text("n", "2")
        .text("response_format", "url");
    let response = edit(&app, &key, form).await;
    assert_eq!(response.status(), 200);
    let charged = nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(charged, 40_000_000, "two images at 0.02");
    let sent = upstream.received().last().expect("received").clone();
    assert_eq!(sent.path, "/v1/images/edits");
    assert!(sent.body_len > 11);

    // gpt-image-1: charged by the tokens it reports, text and image input alike.
    let form = Form::new()
        .text("model", "org/edit-model")
        .part("image", png())
        .part("mask", png())
        .text("prompt", "add a hat");
    let response = edit(&app, &key, form).await;
    assert_eq!(response.status(), 200);
    let charged = nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    );
    let answer: Value = response.json().await.expect("json");
    let usage = &answer["usage"];
    let input = usage["input_tokens"].as_i64().expect("input");
    let output = usage["output_tokens"].as_i64().expect("output");
    assert_eq!(usage["input_tokens_details"]["image_tokens"], 2 * 194);
    let femtos = i128::from(input) * 5_000_000_000 + i128::from(output) * 40_000_000_000;
    assert_eq!(i128::from(charged), (femtos + 999_999) / 1_000_000);

    // A streamed edit is refused before anything is sent; so is a form without an image.
    let before = upstream.received().len();
    let form = Form::new()
        .text("model", "dalle-edit")
        .part("image", png())
        .text("prompt", "x")
        .text("stream", "true");
    let response = edit(&app, &key, form).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["param"], "stream");
    let form = Form::new().text("model", "dalle-edit").text("prompt", "x");
    let response = edit(&app, &key, form).await;
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["param"], "image", "{error}");
    assert_eq!(upstream.received().len(), before);
    assert_eq!(ledger(&app).await.len(), 2);
}
