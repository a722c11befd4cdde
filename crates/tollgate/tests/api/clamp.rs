//! `clamp_max_tokens`: a key that opts in is served, instead of a 402, with the output
//! limit its budget pays for, told in `x-tollgate-max-tokens`; the provider receives that
//! limit; the key never spends past its limit; without the option, or when not even the
//! input fits, the 402 stands.

use fake_upstream::{FakeUpstream, Options};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app_env, TestApp};

/// "mini" costs 2.40 micro-credits per input token and 4.00 per output token; "hi" in a
/// chat body has a worst case of 9 input tokens (21.6 micro-credits).
async fn app() -> (TestApp, FakeUpstream) {
    let upstream = fake_upstream::start(Options::default())
        .await
        .expect("fake upstream");
    let config = format!(
        "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"UP_KEY\"\n\
         [[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"UP_KEY\"\n\
         [[models]]\nid = \"mini\"\nprovider = \"up\"\nupstream_model = \"gpt-4.1-mini\"\nendpoints = [\"chat.completions\", \"responses\"]\nmax_output_tokens = 1000\npricing = {{ input = \"2.40\", output = \"4.00\" }}\n\
         [[models]]\nid = \"sonnet\"\nprovider = \"claude\"\nupstream_model = \"claude-sonnet-4-5\"\nendpoints = [\"messages\"]\nmax_output_tokens = 1000\npricing = {{ input = \"3.00\", output = \"15.00\" }}\n",
        base = upstream.base_url()
    );
    let app = spawn_app_env(&config, &|name| {
        (name == "UP_KEY").then(|| "up-secret".into())
    })
    .await;
    app.grant("10").await;
    (app, upstream)
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "mini", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
}

fn clamped_to(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-tollgate-max-tokens")
        .map(|v| v.to_str().expect("ascii").parse().expect("number"))
}

/// The last request the fake received, as JSON.
fn last_sent(upstream: &FakeUpstream) -> Value {
    upstream
        .received()
        .last()
        .and_then(|r| r.json())
        .expect("a JSON request upstream")
}

/// The worst case (nanos) a 402's message says the request could cost.
fn worst_case_in(message: &str) -> i64 {
    crate::gateway::nanos(
        message
            .strip_prefix("This request could cost up to ")
            .and_then(|m| m.split(' ').next())
            .expect("the worst case in the message"),
    )
}

async fn usage_of(app: &TestApp, key: &str) -> String {
    let own: Value = app.get("/v1/key", key).await.json().await.expect("json");
    own["usage"].as_str().expect("usage").to_string()
}

#[tokio::test]
async fn a_clamping_key_gets_the_output_its_budget_pays_for_and_never_more() {
    let (app, upstream) = app().await;
    let (_, plain) = app
        .create_key(json!({"name": "plain", "credit_limit": 0.0002}))
        .await;
    let (_, clamping) = app
        .create_key(json!({"name": "clamping", "credit_limit": 0.0002, "clamp_max_tokens": true}))
        .await;

    // 100 output tokens are too many for the plain key; the refusal says what the
    // request could cost: the input's worst case and 100 output tokens at 4,000 nanos.
    let message = assert_error(
        app.post("/v1/chat/completions", &plain, &chat(100)).await,
        402,
        "insufficient_quota",
        "credit_limit_exceeded",
    )
    .await;
    assert_eq!(upstream.stats().requests, 0);
    let worst = worst_case_in(&message);
    let input = worst - 100 * 4_000;
    let affordable = ((200_000 - input) / 4_000) as u64;
    assert!(affordable > 0 && affordable < 100, "{affordable}");

    // The clamping key is served with exactly the most its limit pays for.
    let served = app
        .post("/v1/chat/completions", &clamping, &chat(100))
        .await;
    assert_eq!(served.status(), 200);
    assert_eq!(clamped_to(&served), Some(affordable));
    assert_eq!(
        last_sent(&upstream)["max_tokens"].as_u64(),
        Some(affordable)
    );
    let body: Value = served.json().await.expect("json");
    assert!(body["usage"]["completion_tokens"].as_u64().expect("out") <= affordable);

    // A request that fits is not touched.
    let small = app.post("/v1/chat/completions", &clamping, &chat(5)).await;
    assert_eq!(small.status(), 200);
    assert_eq!(clamped_to(&small), None);
    assert_eq!(last_sent(&upstream)["max_tokens"], 5);

    // Spend the rest: each call is clamped lower, until not even one token fits.
    let mut last = u64::MAX;
    let mut refused = false;
    for _ in 0..60 {
        let response = app
            .post("/v1/chat/completions", &clamping, &chat(100))
            .await;
        if response.status() == 402 {
            refused = true;
            break;
        }
        assert_eq!(response.status(), 200);
        let limit = clamped_to(&response).expect("clamped");
        assert!(limit <= last && limit >= 1, "{limit} after {last}");
        last = limit;
    }
    assert!(refused, "the budget ran out");
    let usage = crate::gateway::nanos(&usage_of(&app, &clamping).await);
    assert!(usage <= 200_000, "usage {usage} within the limit");
}

#[tokio::test]
async fn every_limit_field_the_client_used_is_lowered_on_every_endpoint() {
    let (app, upstream) = app().await;
    // A fresh key for each request (0.002: 500 output tokens on mini, 133 on sonnet).
    let clamping = || async {
        app.create_key(json!({"name": "c", "credit_limit": 0.002, "clamp_max_tokens": true}))
            .await
            .1
    };

    // Chat with both of its fields.
    let both = json!({"model": "mini", "max_tokens": 1000, "max_completion_tokens": 900,
        "messages": [{"role": "user", "content": "hi"}]});
    let response = app
        .post("/v1/chat/completions", &clamping().await, &both)
        .await;
    assert_eq!(response.status(), 200);
    let limit = clamped_to(&response).expect("clamped");
    let sent = last_sent(&upstream);
    assert_eq!(
        (
            sent["max_tokens"].as_u64(),
            sent["max_completion_tokens"].as_u64()
        ),
        (Some(limit), Some(limit))
    );

    // Chat with no field: the model's 1,000 is too much; the gateway's field carries it.
    let none = json!({"model": "mini", "messages": [{"role": "user", "content": "hi"}]});
    let response = app
        .post("/v1/chat/completions", &clamping().await, &none)
        .await;
    assert_eq!(response.status(), 200);
    let limit = clamped_to(&response).expect("clamped");
    assert_eq!(last_sent(&upstream)["max_tokens"].as_u64(), Some(limit));

    // Responses: max_output_tokens.
    let responses = json!({"model": "mini", "input": "hi", "max_output_tokens": 1000});
    let response = app
        .post("/v1/responses", &clamping().await, &responses)
        .await;
    assert_eq!(response.status(), 200);
    let limit = clamped_to(&response).expect("clamped");
    assert_eq!(
        last_sent(&upstream)["max_output_tokens"].as_u64(),
        Some(limit)
    );

    // Messages to Anthropic: max_tokens (15 micro-credits an output token).
    let messages = json!({"model": "sonnet", "max_tokens": 900, "messages": [{"role": "user", "content": "hi"}]});
    let response = app.post("/v1/messages", &clamping().await, &messages).await;
    assert_eq!(response.status(), 200);
    let limit = clamped_to(&response).expect("clamped");
    assert!(limit < 900);
    assert_eq!(last_sent(&upstream)["max_tokens"].as_u64(), Some(limit));
}

#[tokio::test]
async fn a_clamped_stream_from_a_provider_that_ignores_the_limit_is_cut_at_it() {
    let (app, upstream) = app().await;
    let (_, key) = app
        .create_key(json!({"name": "c", "credit_limit": 0.0002, "clamp_max_tokens": true}))
        .await;
    let body = json!({"model": "mini", "max_tokens": 1000, "stream": true,
        "messages": [{"role": "user", "content": "hi [[fake:ignore_max_tokens,words=400]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    let limit = clamped_to(&response).expect("the header comes with the stream");
    assert_eq!(last_sent(&upstream)["max_tokens"].as_u64(), Some(limit));
    let mut stream = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.expect("chunk"));
    }
    assert!(
        String::from_utf8_lossy(&text).contains("[DONE]"),
        "well-formed end"
    );
    let usage = crate::gateway::nanos(&usage_of(&app, &key).await);
    assert!(usage > 0 && usage <= 200_000, "usage {usage}");
}

#[tokio::test]
async fn clamp_max_tokens_is_a_key_field() {
    let (app, _) = app().await;
    let (id, _) = app.create_key(json!({"name": "k"})).await;
    let path = format!("/v1/account/keys/{id}");
    let key: Value = app
        .get(&path, &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(key["clamp_max_tokens"], false);
    let on: Value = app
        .patch(&path, &app.prov_key, &json!({"clamp_max_tokens": true}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(on["clamp_max_tokens"], true);
    let listed: Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["keys"][0]["clamp_max_tokens"], true);
    assert_error(
        app.patch(&path, &app.prov_key, &json!({"clamp_max_tokens": "yes"}))
            .await,
        400,
        "invalid_request_error",
        "invalid_field",
    )
    .await;
}

/// OpenAI's Responses API takes no `max_output_tokens` below 16: a budget that pays for
/// fewer output tokens gets the 402, not a clamped request the provider refuses; one that
/// pays for more is clamped as on any endpoint.
#[tokio::test]
async fn a_responses_request_is_never_clamped_below_what_the_api_takes() {
    let (app, upstream) = app().await;
    let body = json!({"model": "mini", "input": "hi", "max_output_tokens": 100});
    let (_, probe) = app
        .create_key(json!({"name": "probe", "credit_limit": 0.0002}))
        .await;
    let message = assert_error(
        app.post("/v1/responses", &probe, &body).await,
        402,
        "insufficient_quota",
        "credit_limit_exceeded",
    )
    .await;
    let worst = worst_case_in(&message);
    let input = worst - 100 * 4_000;
    // A limit that pays for the input and `tokens` output tokens at 4,000 nanos each.
    let limit_for = |tokens: i64| -> Value {
        serde_json::from_str(&format!("0.{:09}", input + tokens * 4_000)).expect("a number")
    };

    let (_, ten) = app
        .create_key(json!({"name": "ten", "credit_limit": limit_for(10), "clamp_max_tokens": true}))
        .await;
    assert_error(
        app.post("/v1/responses", &ten, &body).await,
        402,
        "insufficient_quota",
        "credit_limit_exceeded",
    )
    .await;
    assert_eq!(upstream.stats().requests, 0, "nothing was sent upstream");

    let (_, twenty) = app
        .create_key(
            json!({"name": "twenty", "credit_limit": limit_for(20), "clamp_max_tokens": true}),
        )
        .await;
    let served = app.post("/v1/responses", &twenty, &body).await;
    assert_eq!(served.status(), 200);
    assert_eq!(clamped_to(&served), Some(20));
    assert_eq!(last_sent(&upstream)["max_output_tokens"].as_u64(), Some(20));
}
