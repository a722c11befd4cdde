//! What the meter cannot price is not served, and what it prices is exact: background
//! jobs, service tiers, hosted tools with per-call fees, output limits above the model's
//! maximum; and a tight worst case, so a key spends its budget to the last call it pays for.

use fake_upstream::{FakeUpstream, Options};
use serde_json::{json, Value};

use crate::gateway::nanos;
use crate::helpers::{spawn_app_env, TestApp};

async fn app(models: &str) -> (TestApp, FakeUpstream, String) {
    let upstream = fake_upstream::start(Options::default())
        .await
        .expect("fake upstream");
    let config = format!(
        "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"UP_KEY\"\n\
         [[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"UP_KEY\"\n{models}",
        base = upstream.base_url()
    );
    let app = spawn_app_env(&config, &|name| {
        (name == "UP_KEY").then(|| "up-secret".into())
    })
    .await;
    app.grant("10").await;
    let key = app.inference_key().await;
    (app, upstream, key)
}

fn cost_of(response: &reqwest::Response) -> i64 {
    nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    )
}

async fn error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    response.json().await.expect("json")
}

#[tokio::test]
async fn a_key_spends_its_budget_to_the_last_call_it_pays_for() {
    // "hi" costs 5 input tokens at the fake and 12 output: 5 x 2.40 + 12 x 4.00 = 60
    // micro-credits. Its worst case is 9 input tokens (the text's bytes and OpenAI's
    // framing) and the 12 asked for: 69.6. Bounded by the body's 79 bytes, it was 237.6,
    // and a key with 0.0002 could not make even one call.
    let (app, upstream, _) = app(
        "[[models]]\nid = \"mini\"\nprovider = \"up\"\nupstream_model = \"gpt-4.1-mini\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = { input = \"2.40\", output = \"4.00\" }\n",
    )
    .await;
    let (_, key) = app
        .create_key(json!({"name": "frugal", "credit_limit": 0.0002}))
        .await;
    let body =
        json!({"model": "mini", "max_tokens": 12, "messages": [{"role": "user", "content": "hi"}]});
    for call in 0..3 {
        let response = app.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(response.status(), 200, "call {call}");
        assert_eq!(cost_of(&response), 60_000, "call {call}");
    }
    let refused = error(app.post("/v1/chat/completions", &key, &body).await, 402).await;
    assert_eq!(refused["error"]["code"], "credit_limit_exceeded");
    assert_eq!(upstream.stats().requests, 3);
    let own: Value = app.get("/v1/key", &key).await.json().await.expect("json");
    assert_eq!(own["usage"], "0.00018");
}

#[tokio::test]
async fn stateful_background_responses_are_refused_before_any_call() {
    let (app, upstream, key) = app(
        "[[models]]\nid = \"gpt\"\nprovider = \"up\"\nendpoints = [\"responses\"]\nmax_output_tokens = 100\npricing = { input = \"1\", output = \"2\" }\n",
    )
    .await;
    let body = json!({"model": "gpt", "input": "Work on it", "background": true});
    let refused = error(app.post("/v1/responses", &key, &body).await, 400).await;
    assert_eq!(refused["error"]["code"], "unsupported_stateful_request");
    assert_eq!(refused["error"]["param"], "background");
    assert!(refused["error"]["message"]
        .as_str()
        .expect("m")
        .contains("stateless"));
    assert_eq!(upstream.stats().requests, 0);
}

#[tokio::test]
async fn service_tiers_are_priced_from_the_catalog_or_refused() {
    let (app, upstream, key) = app(
        "[[models]]\nid = \"gpt\"\nprovider = \"up\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = { input = \"1.00\", output = \"2.00\" }\nservice_tiers = { priority = { input = \"3.00\", output = \"6.00\" } }\n",
    )
    .await;
    let ask = |tier: &str| {
        json!({"model": "gpt", "max_tokens": 50, "service_tier": tier,
        "messages": [{"role": "user", "content": "Hello"}]})
    };
    let standard = app.post("/v1/chat/completions", &key, &ask("auto")).await;
    assert_eq!(standard.status(), 200);
    let standard_cost = cost_of(&standard);
    let priority = app
        .post("/v1/chat/completions", &key, &ask("priority"))
        .await;
    assert_eq!(priority.status(), 200);
    // The same usage at three times the price (rounded up once each).
    let body: Value = priority.json().await.expect("json");
    let (input, output) = (
        body["usage"]["prompt_tokens"].as_i64().expect("in"),
        body["usage"]["completion_tokens"].as_i64().expect("out"),
    );
    assert_eq!(standard_cost, input * 1000 + output * 2000);
    let expected = input * 3000 + output * 6000;
    let ledger = crate::gateway::ledger(&app).await;
    assert_eq!(ledger[1].4, expected);
    let refused = error(
        app.post("/v1/chat/completions", &key, &ask("flex")).await,
        400,
    )
    .await;
    assert_eq!(refused["error"]["code"], "unpriced_service_tier");
    assert!(refused["error"]["message"]
        .as_str()
        .expect("m")
        .contains("priority"));
    assert_eq!(upstream.stats().requests, 2);
}

#[tokio::test]
async fn hosted_tools_are_priced_per_call_or_refused() {
    let (app, upstream, key) = app(
        "[[models]]\nid = \"searcher\"\nprovider = \"up\"\nendpoints = [\"responses\"]\nmax_output_tokens = 100\npricing = { input = \"1.00\", output = \"2.00\", web_search = \"0.01\" }\n\
         [[models]]\nid = \"plain\"\nprovider = \"up\"\nendpoints = [\"responses\"]\nmax_output_tokens = 100\npricing = { input = \"1.00\", output = \"2.00\" }\n\
         [[models]]\nid = \"claude\"\nprovider = \"claude\"\nendpoints = [\"messages\"]\nmax_output_tokens = 100\npricing = { input = \"3.00\", output = \"15.00\", web_search = \"0.01\" }\n",
    )
    .await;
    let search = |model: &str, stream: bool| {
        json!({"model": model, "input": "Look it up",
        "stream": stream, "max_output_tokens": 50, "tools": [{"type": "web_search"}]})
    };
    let refused = error(
        app.post("/v1/responses", &key, &search("plain", false))
            .await,
        400,
    )
    .await;
    assert_eq!(refused["error"]["code"], "unpriced_hosted_tool");
    assert!(refused["error"]["message"]
        .as_str()
        .expect("m")
        .contains("web_search"));
    assert_eq!(upstream.stats().requests, 0);

    let answered = app
        .post("/v1/responses", &key, &search("searcher", false))
        .await;
    assert_eq!(answered.status(), 200);
    let cost = cost_of(&answered);
    let body: Value = answered.json().await.expect("json");
    let calls = body["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|i| i["type"] == "web_search_call")
        .count() as i64;
    assert_eq!(calls, 1);
    let usage = &body["usage"];
    let tokens = usage["input_tokens"].as_i64().expect("in") * 1000
        + usage["output_tokens"].as_i64().expect("out") * 2000;
    assert_eq!(cost, tokens + calls * 10_000_000);
    // The gateway bounded the calls it reserved for, upstream.
    let sent = upstream
        .received()
        .last()
        .and_then(|r| r.json())
        .expect("sent");
    assert_eq!(sent["max_tool_calls"], 10);

    // Streamed, the calls are counted from the output items.
    let streamed = app
        .post("/v1/responses", &key, &search("searcher", true))
        .await;
    assert_eq!(streamed.status(), 200);
    let _ = streamed.text().await.expect("stream");
    let ledger = crate::gateway::ledger(&app).await;
    assert!(ledger[1].4 >= 10_000_000, "{ledger:?}");

    // Anthropic's server tool: counted from usage and blocks, bounded by max_uses.
    let body = json!({"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Search"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let answered = app.post("/v1/messages", &key, &body).await;
    assert_eq!(answered.status(), 200);
    let cost = cost_of(&answered);
    assert!((10_000_000..20_000_000).contains(&cost), "{cost}");
    let sent = upstream
        .received()
        .last()
        .and_then(|r| r.json())
        .expect("sent");
    assert_eq!(sent["tools"][0]["max_uses"], 10);
}

#[tokio::test]
async fn an_output_limit_above_the_models_maximum_is_a_400_and_absent_limits_are_sent() {
    let (app, upstream, key) = app(
        "[[models]]\nid = \"gpt\"\nprovider = \"up\"\nendpoints = [\"chat.completions\", \"responses\"]\nmax_output_tokens = 100\npricing = { input = \"1\", output = \"2\" }\n",
    )
    .await;
    let too_much = json!({"model": "gpt", "max_tokens": 1_000_000_000_000u64, "messages": [{"role": "user", "content": "x"}]});
    let refused = error(app.post("/v1/chat/completions", &key, &too_much).await, 400).await;
    assert_eq!(refused["error"]["code"], "max_tokens_too_large");
    assert!(refused["error"]["message"]
        .as_str()
        .expect("m")
        .contains("100"));
    assert_eq!(upstream.stats().requests, 0);
    // Without a limit, the model's maximum goes upstream: the provider cannot be asked
    // for more than the reservation covers.
    let open = json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(
        app.post("/v1/chat/completions", &key, &open).await.status(),
        200
    );
    let sent = upstream
        .received()
        .last()
        .and_then(|r| r.json())
        .expect("sent");
    assert_eq!(sent["max_completion_tokens"], 100);
    let open = json!({"model": "gpt", "input": "x"});
    assert_eq!(app.post("/v1/responses", &key, &open).await.status(), 200);
    let sent = upstream
        .received()
        .last()
        .and_then(|r| r.json())
        .expect("sent");
    assert_eq!(sent["max_output_tokens"], 100);
}
