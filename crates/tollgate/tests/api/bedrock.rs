//! A Bedrock provider against the fake upstream's Bedrock Runtime, which checks every SigV4
//! signature: Converse for a Nova model from every client format, whole and streamed with
//! tools and cache usage; Claude through InvokeModel with the Messages body and its betas;
//! the built-in catalog's Bedrock models are in `builtin.rs`, AWS's refusals in
//! `bedrock_refusals.rs`. Each metered to the unit.

use fake_upstream::{FakeUpstream, Options, TEST_AWS_ACCESS_KEY_ID, TEST_AWS_SECRET_ACCESS_KEY};
use serde_json::{json, Value};

use crate::gateway::{cost, ledger, Prices, CLAUDE};
use crate::helpers::{spawn_app_env, TestApp};

/// amazon.nova-pro: $0.80 input, $0.20 cached, $3.20 output per million tokens.
pub(crate) const NOVA: Prices = Prices {
    input: 800_000_000,
    cached: 200_000_000,
    output: 3_200_000_000,
};

pub(crate) const NOVA_ID: &str = "amazon.nova-pro-v1:0";
const CLAUDE_ID: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

fn config(up: &FakeUpstream) -> String {
    format!(
        "[[providers]]\nname = \"bedrock\"\nkind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\n\
[[models]]\nid = \"nova\"\nprovider = \"bedrock\"\nupstream_model = \"{NOVA_ID}\"\nendpoints = [\"chat.completions\", \"messages\", \"responses\"]\nmax_output_tokens = 1000\npricing = {{ input = \"0.80\", cached_input = \"0.20\", output = \"3.20\" }}\n\
[[models]]\nid = \"claude-bedrock\"\nprovider = \"bedrock\"\nupstream_model = \"{CLAUDE_ID}\"\nendpoints = [\"chat.completions\", \"messages\", \"responses\"]\nmax_output_tokens = 1000\npricing = {{ input = \"3\", cached_input = \"0.30\", cache_write = \"3.75\", output = \"15\" }}\n",
        up.root_url()
    )
}

pub(crate) async fn start_with(
    up: &FakeUpstream,
    secret: &str,
    token: Option<&str>,
) -> (TestApp, String) {
    let secret = secret.to_string();
    let token = token.map(str::to_string);
    let env = move |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(TEST_AWS_ACCESS_KEY_ID.to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(secret.clone()),
        "AWS_SESSION_TOKEN" => token.clone(),
        _ => None,
    };
    let app = spawn_app_env(&config(up), &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    (app, key)
}

pub(crate) async fn setup() -> (TestApp, FakeUpstream, String) {
    let up = fake_upstream::start(Options::default())
        .await
        .expect("fake upstream");
    let (app, key) = start_with(&up, TEST_AWS_SECRET_ACCESS_KEY, None).await;
    (app, up, key)
}

pub(crate) fn last(up: &FakeUpstream) -> fake_upstream::Received {
    up.received()
        .last()
        .cloned()
        .expect("a request reached the fake")
}

fn data_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect()
}

#[tokio::test]
async fn converse_whole_is_signed_translated_and_metered_with_cache_reads() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "nova", "max_tokens": 200, "temperature": 0.5,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello there [[fake:cached=3,words=5]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let sent = last(&up);
    assert_eq!(sent.path, "/model/amazon.nova-pro-v1%3A0/converse");
    let auth = sent.header("authorization").expect("signed");
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={TEST_AWS_ACCESS_KEY_ID}/"
        )) && auth.contains("/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="),
        "{auth}"
    );
    assert!(!auth.contains(TEST_AWS_SECRET_ACCESS_KEY));
    let native = sent.json().expect("json");
    assert_eq!(native["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        native["inferenceConfig"],
        json!({"maxTokens": 200, "temperature": 0.5})
    );
    assert!(native.get("model").is_none());
    assert_eq!(answer["model"], "nova");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .map(|t| t.split(' ').count()),
        Some(5)
    );
    // Input: system (4 + 2) + user (4 + 3) = 13, of which 3 read from the cache.
    assert_eq!(answer["usage"]["prompt_tokens"], 13);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1, rows[0].2, rows[0].3), (13, 3, 5));
    assert_eq!(rows[0].4, cost(&NOVA, 13, 3, 5));
}

#[tokio::test]
async fn converse_stream_with_a_tool_call_arrives_as_chat_chunks_and_is_metered() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "nova", "stream": true,
        "messages": [{"role": "user", "content": "Weather in Paris? [[fake:tool]]"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let text = response.text().await.expect("stream");
    assert_eq!(
        last(&up).path,
        "/model/amazon.nova-pro-v1%3A0/converse-stream"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = data_lines(&text);
    let arguments: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    let first_call = chunks
        .iter()
        .find_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
        .expect("a call");
    assert_eq!(first_call["function"]["name"], "get_weather");
    assert!(first_call["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("tooluse_")));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    // The client did not ask for usage: none is sent, the charge is exact all the same.
    assert!(chunks.iter().all(|c| !c["usage"].is_object()));
    // Input 4 + 4 words; output: 16 characters of arguments in 8-character fragments.
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].3), (8, 2));
    assert_eq!(rows[0].4, cost(&NOVA, 8, 0, 2));
}

#[tokio::test]
async fn a_messages_client_reaches_converse_streamed() {
    let (app, _up, key) = setup().await;
    let body = json!({"model": "nova", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Count [[fake:words=4]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    let deltas: String = data_lines(&text)
        .iter()
        .filter_map(|d| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(deltas.split(' ').count(), 4);
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].3), (6, 4));
    assert_eq!(rows[0].4, cost(&NOVA, 6, 0, 4));
}

#[tokio::test]
async fn claude_through_invoke_model_is_a_near_pass_through_with_cache_writes() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "claude-bedrock", "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello there [[fake:cached=2,cache_write=4,words=3]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let sent = last(&up);
    assert_eq!(
        sent.path,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    );
    let native = sent.json().expect("json");
    assert_eq!(native["anthropic_version"], "bedrock-2023-05-31");
    assert!(native.get("model").is_none() && native.get("stream").is_none());
    assert_eq!(native["system"], "Be brief.");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["model"], "claude-bedrock");
    // Input: system (4 + 2) + user (4 + 3) = 13: 2 read, 4 written, 7 plain.
    assert_eq!(answer["usage"]["input_tokens"], 7);
    assert_eq!(answer["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(answer["usage"]["cache_creation_input_tokens"], 4);
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].2, rows[0].3), (13, 2, 3));
    // $3 plain, $0.30 read, $3.75 written, $15 output per million.
    let femtos: i128 = 7 * 3_000_000_000 + 2 * 300_000_000 + 4 * 3_750_000_000 + 3 * 15_000_000_000;
    assert_eq!(rows[0].4, ((femtos + 999_999) / 1_000_000) as i64);
}

#[tokio::test]
async fn claude_streamed_through_invoke_model_unwraps_the_chunks() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "claude-bedrock", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "Count [[fake:words=6]]"}]});
    let response = app.post("/v1/messages", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    assert_eq!(
        last(&up).path,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    );
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    let data = data_lines(&text);
    assert_eq!(data[0]["message"]["model"], "claude-bedrock");
    let stop = data.last().expect("stop");
    assert_eq!(
        stop["amazon-bedrock-invocationMetrics"]["outputTokenCount"],
        6
    );
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].3), (6, 6));
    assert_eq!(rows[0].4, cost(&CLAUDE, 6, 0, 6));

    // A Chat Completions client reaches the same model, translated.
    let body = json!({"model": "claude-bedrock", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Count [[fake:words=2]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    let text = response.text().await.expect("stream");
    let chunks = data_lines(&text);
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage");
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn anthropic_betas_travel_in_the_invoke_model_body() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "claude-bedrock", "max_tokens": 20,
        "context_management": {"edits": []},
        "messages": [{"role": "user", "content": "Hi [[fake:words=2]]"}]});
    let send = |beta: Option<&str>| {
        let mut request = app
            .client
            .post(app.url("/v1/messages"))
            .bearer_auth(&key)
            .json(&body);
        if let Some(beta) = beta {
            request = request.header("anthropic-beta", beta);
        }
        request.send()
    };
    let response = send(Some("context-management-2025-06-27"))
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        last(&up).json().expect("json")["anthropic_beta"],
        json!(["context-management-2025-06-27"])
    );
    // Without the beta, the fake refuses the field as Bedrock's Claude does.
    let response = send(None).await.expect("send");
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_responses_client_reaches_converse_whole_and_streamed() {
    let (app, up, key) = setup().await;
    let body = json!({"model": "nova", "instructions": "Be brief.", "max_output_tokens": 50,
        "input": "Hello there [[fake:words=3]]"});
    let response = app.post("/v1/responses", &key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["usage"]["output_tokens"], 3);
    let native = last(&up).json().expect("json");
    assert_eq!(native["system"], json!([{"text": "Be brief."}]));
    assert_eq!(native["inferenceConfig"]["maxTokens"], 50);

    let body = json!({"model": "nova", "stream": true, "input": "Count [[fake:words=4]]"});
    let response = app.post("/v1/responses", &key, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    assert!(text.contains("event: response.completed"), "{text}");
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    // Whole: system (4 + 2) + user (4 + 3); streamed: 4 + 2.
    assert_eq!((rows[0].1, rows[0].3), (13, 3));
    assert_eq!((rows[1].1, rows[1].3), (6, 4));
    assert_eq!(rows[1].4, cost(&NOVA, 6, 0, 4));
}
