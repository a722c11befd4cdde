//! A Gemini provider against the fake upstream's Gemini API: every client format, whole
//! and streamed, with tools, thoughts and cached tokens metered to the unit; blocks as
//! clear errors; embeddings; a bad key.

use fake_upstream::{FakeUpstream, Options};
use serde_json::{json, Value};

use crate::gateway::{cost, ledger, Prices};
use crate::helpers::{spawn_app_env, TestApp};
use crate::scrape::Metrics;

/// gemini-2.5-flash: $0.30 input, $0.03 cached, $2.50 output per million tokens.
pub const FLASH: Prices = Prices {
    input: 300_000_000,
    cached: 30_000_000,
    output: 2_500_000_000,
};

async fn setup() -> (TestApp, FakeUpstream, String) {
    let up = fake_upstream::start(Options {
        gemini_api_key: Some("up-gemini".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream");
    let app = start(&up, "up-gemini").await;
    let key = app.inference_key().await;
    (app, up, key)
}

async fn start(up: &FakeUpstream, secret: &str) -> TestApp {
    let config = format!(
        "[[providers]]\nname = \"gemini\"\nkind = \"gemini\"\nbase_url = \"{}/v1beta\"\napi_key_env = \"GEM_KEY\"\n\
[[models]]\nid = \"flash\"\nprovider = \"gemini\"\nupstream_model = \"gemini-2.5-flash\"\nendpoints = [\"chat.completions\", \"messages\", \"responses\"]\nmax_output_tokens = 1000\npricing = {{ input = \"0.30\", cached_input = \"0.03\", output = \"2.50\" }}\n\
[[models]]\nid = \"gem-embed\"\nprovider = \"gemini\"\nupstream_model = \"gemini-embedding-001\"\nendpoints = [\"embeddings\"]\npricing = {{ input = \"0.15\" }}\n",
        up.root_url()
    );
    let secret = secret.to_string();
    let env = move |name: &str| (name == "GEM_KEY").then(|| secret.clone());
    let app = spawn_app_env(&config, &env).await;
    app.grant("100").await;
    app
}

fn last(up: &FakeUpstream) -> fake_upstream::Received {
    up.received()
        .last()
        .cloned()
        .expect("a request reached the fake")
}

#[tokio::test]
async fn chat_whole_with_thoughts_and_cache_is_metered_exactly() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "flash", "max_tokens": 200, "reasoning_effort": "low",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello there [[fake:cached=3,thoughts=7,words=5]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let sent = last(&up);
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.header("x-goog-api-key"), Some("up-gemini"));
    assert_eq!(sent.header("authorization"), None);
    let native = sent.json().expect("json");
    assert_eq!(
        native["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(native["generationConfig"]["maxOutputTokens"], 200);
    assert_eq!(
        native["generationConfig"]["thinkingConfig"]["includeThoughts"],
        true
    );
    assert_eq!(answer["model"], "flash");
    assert_eq!(answer["object"], "chat.completion");
    let message = &answer["choices"][0]["message"];
    assert_eq!(
        message["content"].as_str().map(|t| t.split(' ').count()),
        Some(5)
    );
    assert!(message["reasoning_content"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    // Input: system (4 + 2) + user (4 + 2 words + the directive's one) = 13.
    let usage = &answer["usage"];
    assert_eq!(usage["prompt_tokens"], 13);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 3);
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 7);
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1, rows[0].2, rows[0].3), (13, 3, 12));
    assert_eq!(rows[0].4, cost(&FLASH, 13, 3, 12));
    // The thoughts are counted apart in the metrics, as part of the output.
    let (metrics, _) = Metrics::scrape(&app, None).await;
    let tokens = |kind: &str| {
        metrics.value(
            "tollgate_tokens_total",
            &[("model", "flash"), ("type", kind)],
        )
    };
    assert_eq!((tokens("output"), tokens("reasoning")), (12.0, 7.0));
}

#[tokio::test]
async fn chat_streamed_reads_the_final_usage() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "flash", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Count [[fake:words=4,thoughts=2]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    let sent = last(&up);
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(sent.query.as_deref(), Some("alt=sse"));
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(content.split(' ').count(), 4);
    assert!(chunks.iter().all(|c| c["model"] == "flash"));
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage chunk");
    // Input 4 + 2; output 4 words + 2 thoughts.
    assert_eq!(usage["usage"]["prompt_tokens"], 6);
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let rows = ledger(&app).await;
    assert_eq!(
        (rows[0].1, rows[0].3, rows[0].4),
        (6, 6, cost(&FLASH, 6, 0, 6))
    );

    // Without include_usage the client gets no usage chunk; the charge is the same.
    let body = json!({"model": "flash", "stream": true,
        "messages": [{"role": "user", "content": "Count [[fake:words=4,thoughts=2]]"}]});
    let text = app
        .post("/v1/chat/completions", &key, &body)
        .await
        .text()
        .await
        .expect("stream");
    assert!(!text.contains("\"usage\":{"), "{text}");
    let rows = ledger(&app).await;
    assert_eq!(
        (rows[1].1, rows[1].3, rows[1].4),
        (6, 6, cost(&FLASH, 6, 0, 6))
    );
}

#[tokio::test]
async fn messages_client_with_tools_round_trips_through_gemini() {
    let (app, up, key) = setup().await;
    let tools = json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let body = json!({"model": "flash", "max_tokens": 300, "tools": tools, "stream": true,
        "messages": [{"role": "user", "content": "Weather? [[fake:tool]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    assert!(text.contains("\"type\":\"tool_use\""), "{text}");
    assert!(text.contains("\"name\":\"get_weather\""), "{text}");
    assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    let native = last(&up).json().expect("json");
    assert_eq!(
        native["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    // The call's id, sent back with the result, names the function for Gemini.
    let id = text
        .split("\"id\":\"")
        .filter_map(|s| s.split('"').next())
        .find(|id| id.starts_with("call_"))
        .expect("a tool_use id")
        .to_string();
    let body = json!({"model": "flash", "max_tokens": 300, "tools": tools,
    "messages": [
        {"role": "user", "content": "Weather? [[fake:tool]]"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny and warm"}]}
    ]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["type"], "text");
    let native = last(&up).json().expect("json");
    assert_eq!(
        native["contents"][2]["parts"][0]["functionResponse"],
        json!({"name": "get_weather", "response": {"result": "sunny and warm"}})
    );
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.3 > 0);
        assert_eq!(
            row.4,
            cost(&FLASH, row.1.into(), row.2.into(), row.3.into())
        );
    }
    assert_eq!(answer["usage"]["input_tokens"].as_i64(), Some(rows[1].1));
    assert_eq!(answer["usage"]["output_tokens"].as_i64(), Some(rows[1].3));
}

#[tokio::test]
async fn responses_client_reaches_gemini() {
    let (app, up, key) = setup().await;
    let response = app
        .post(
            "/v1/responses",
            &key,
            &json!({"model": "flash", "input": "Hi [[fake:words=3]]", "instructions": "Be kind."}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["usage"]["output_tokens"], 3);
    assert_eq!(
        last(&up).json().expect("json")["systemInstruction"]["parts"][0]["text"],
        "Be kind."
    );
    let rows = ledger(&app).await;
    assert_eq!(rows[0].4, cost(&FLASH, rows[0].1.into(), 0, 3));
}

#[tokio::test]
async fn blocked_prompts_and_answers_are_clear_errors() {
    let (app, _up, key) = setup().await;
    let body = json!({"model": "flash", "messages": [{"role": "user", "content": "bad [[fake:blocked=prompt]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "content_policy_violation");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("blocked the prompt (SAFETY)")),
        "{error}"
    );
    let body = json!({"model": "flash", "stream": true,
        "messages": [{"role": "user", "content": "bad [[fake:blocked=answer]]"}]});
    let text = app
        .post("/v1/chat/completions", &key, &body)
        .await
        .text()
        .await
        .expect("stream");
    assert!(text.contains("blocked the answer (SAFETY)"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.4 == 0 && r.5 != 200), "{rows:?}");
}

#[tokio::test]
async fn a_cut_stream_is_charged_by_estimate_and_a_bad_key_is_the_operators() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "flash", "stream": true,
        "messages": [{"role": "user", "content": "go [[fake:words=6,cut_after=3]]"}]});
    let text = app
        .post("/v1/chat/completions", &key, &body)
        .await
        .text()
        .await
        .expect("stream");
    assert!(text.contains("error"), "{text}");
    let rows = ledger(&app).await;
    // The three words delivered, counted by the gateway (at least one token a word).
    assert!(rows[0].3 >= 3 && rows[0].5 == 502, "{rows:?}");
    assert_eq!(
        rows[0].4,
        cost(&FLASH, rows[0].1.into(), 0, rows[0].3.into())
    );

    let wrong = start(&up, "not-the-key").await;
    let key = wrong.inference_key().await;
    let response = wrong
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "flash", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.expect("body");
    assert!(!text.contains("not-the-key"), "{text}");
}

#[tokio::test]
async fn embeddings_go_through_batch_embed_contents() {
    let (app, up, key) = setup().await;
    let response = app
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "gem-embed", "input": ["one two", "three"], "dimensions": 4}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let sent = last(&up);
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "gem-embed");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        answer["data"][1]["embedding"].as_array().map(Vec::len),
        Some(4)
    );
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].1 > 0 && rows[0].4 > 0,
        "charged by estimate: {rows:?}"
    );
}
