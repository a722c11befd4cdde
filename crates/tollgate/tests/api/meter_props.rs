//! A property test of the meter: random mixes of misbehaving providers, endpoint
//! families, streams, concurrency, key limits and clients that hang up mid-answer. After
//! every run: no key past its limit, the ledger equal to the keys' usage and to the
//! account's charges, one record per admitted request, and every account endpoint up.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::gateway::{ledger, nanos, setup};
use crate::helpers::TestApp;

const PATHS: [(&str, &str); 5] = [
    ("/v1/chat/completions", "gpt-test"),
    ("/v1/chat/completions", "claude-test"),
    ("/v1/messages", "claude-test"),
    ("/v1/messages", "gpt-test"),
    ("/v1/responses", "gpt-test"),
];

const DIRECTIVES: [&str; 9] = [
    "",
    "no_usage",
    "wrong_type",
    "cut_after=2",
    "error_after=2",
    "no_terminator",
    "ignore_max_tokens,words=200",
    "report_output=1000000000000000000",
    "chunk_ms=2,words=40",
];

/// One request of a run.
#[derive(Debug, Clone)]
struct Call {
    path: usize,
    directive: usize,
    stream: bool,
    key: usize,
    /// Hang up after this many bytes of the answer (if it is that long).
    hang_up_after: Option<usize>,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0..PATHS.len(),
        0..DIRECTIVES.len(),
        any::<bool>(),
        0..3usize,
        proptest::option::of(1..400usize),
    )
        .prop_map(|(path, directive, stream, key, hang_up_after)| Call {
            path,
            directive,
            stream,
            key,
            hang_up_after,
        })
}

fn body(call: &Call, i: usize) -> Value {
    let (path, model) = PATHS[call.path];
    let text = format!("Call {i} [[fake:{}]]", DIRECTIVES[call.directive]);
    match path {
        "/v1/responses" => {
            json!({"model": model, "max_output_tokens": 30, "stream": call.stream, "input": text})
        }
        _ => json!({"model": model, "max_tokens": 30, "stream": call.stream,
                    "messages": [{"role": "user", "content": text}]}),
    }
}

/// Sends one call; returns whether it was admitted (anything but a 402).
async fn send(app: &TestApp, key: &str, call: &Call, i: usize) -> bool {
    let path = PATHS[call.path].0;
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(key)
        .json(&body(call, i))
        .send()
        .await
        .expect("request");
    let admitted = response.status() != 402;
    let mut response = response;
    let mut read = 0;
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_secs(30), response.chunk()).await
    {
        read += chunk.len();
        if call.hang_up_after.is_some_and(|n| read >= n) {
            break; // dropping the response hangs up
        }
    }
    admitted
}

async fn run(limits: [i64; 3], calls: Vec<Call>) {
    let (app, _upstream, _) = setup().await;
    let mut keys = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let limit = tollgate::billing::Credits::from_nanos(*limit).to_decimal_string(0);
        let (id, key) = app
            .create_key(json!({"name": format!("k{i}"), "credit_limit": limit.parse::<f64>().expect("limit")}))
            .await;
        keys.push((id, key));
    }
    let sends = calls.iter().enumerate().map(|(i, call)| {
        let app = &app;
        let key = keys[call.key].1.clone();
        async move { send(app, &key, call, i).await }
    });
    let admitted = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .filter(|a| *a)
        .count();
    // Hung-up streams settle in the background: wait until each admitted call has its
    // record (a generous bound, polled).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ledger = loop {
        let ledger = ledger(&app).await;
        if ledger.len() >= admitted || std::time::Instant::now() > deadline {
            break ledger;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ledger.len(), admitted, "one record per admitted call");
    let total: i64 = ledger.iter().map(|r| r.4).sum();
    let mut usage_sum = 0;
    for ((id, _), limit) in keys.iter().zip(limits) {
        let response = app
            .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
            .await;
        assert_eq!(response.status(), 200);
        let key: Value = response.json().await.expect("json");
        let usage = nanos(key["usage"].as_str().expect("usage"));
        assert!(usage <= limit, "key {id}: {usage} past its limit {limit}");
        usage_sum += usage;
    }
    assert_eq!(usage_sum, total, "keys' usage against the ledger");
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        nanos(balance["balance"].as_str().expect("balance")),
        100_000_000_000 - total
    );
    for path in ["/v1/account/keys", "/v1/account/activity?days=1"] {
        assert_eq!(app.get(path, &app.prov_key).await.status(), 200, "{path}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_meter_holds_under_random_misbehaviour_concurrency_and_hang_ups(
        // Limits from nothing to a few requests' worth (a request reserves up to ~0.0006).
        limits in [0..3_000_000i64, 0..3_000_000i64, 0..3_000_000i64],
        calls in proptest::collection::vec(call(), 1..24),
    ) {
        let limits = limits.map(|l| l - l % 1000);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(run(limits, calls));
    }
}
