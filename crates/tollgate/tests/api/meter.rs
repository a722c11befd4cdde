//! The meter against a misbehaving provider: every misbehaviour of the fake upstream,
//! through every text endpoint family, natively and translated, streamed and not. After
//! all of it: no delivered output was free, no charge went past what was reserved, the
//! ledger equals the keys' usage and the balance, every account endpoint still answers,
//! and no provider secret reached a client.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::gateway::{ledger, nanos, setup};
use crate::helpers::TestApp;

/// An endpoint family: the path, a model, and whether it is translated.
const FAMILIES: [(&str, &str); 7] = [
    ("/v1/chat/completions", "gpt-test"),
    ("/v1/chat/completions", "claude-test"),
    ("/v1/messages", "claude-test"),
    ("/v1/messages", "gpt-test"),
    ("/v1/responses", "gpt-test"),
    ("/v1/responses", "chat-only-test"),
    ("/v1/responses", "claude-test"),
];

/// Each misbehaviour of the fake upstream, as a directive.
const MISBEHAVIOURS: [&str; 11] = [
    "",
    "no_usage",
    "wrong_type",
    "cut_after=3",
    "error_after=3",
    "no_terminator",
    "ignore_max_tokens,words=300",
    "report_input=1000000000000000000,report_output=1000000000000000000",
    "endless,chunk_ms=1",
    "status=400,echo_headers",
    "trickle_ms=1",
];

/// The output limit every request sets.
const MAX_TOKENS: u64 = 20;

fn body(path: &str, model: &str, text: &str, stream: bool) -> Value {
    match path {
        "/v1/chat/completions" => {
            json!({"model": model, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": text}]})
        }
        "/v1/messages" => json!({"model": model, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": text}]}),
        _ => {
            json!({"model": model, "max_output_tokens": MAX_TOKENS, "stream": stream, "input": text})
        }
    }
}

/// One request's outcome as the client saw it.
struct Seen {
    request_id: String,
    status: u16,
    /// The client received some of the fake's text.
    delivered: bool,
    what: String,
}

async fn send(app: &TestApp, key: &str, path: &str, body: &Value, what: String) -> Seen {
    let request = app
        .client
        .post(app.url(path))
        .bearer_auth(key)
        .json(body)
        .send();
    let response = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 60 s"))
        .expect("request");
    let status = response.status().as_u16();
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    // A relayed body may end in an error (a cut answer): what arrived is what counts.
    let mut bytes = Vec::new();
    let mut response = response;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), response.chunk()).await {
            Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("{what}: the body did not end in 60 s"),
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        !text.contains("up-openai-secret") && !text.contains("up-anthropic-secret"),
        "{what}: a provider secret reached the client: {text}"
    );
    Seen {
        request_id,
        status,
        // A stream delivers when the fake's text arrives; a whole answer whenever any of
        // it does (an endless answer cut at its limit is a 200 with part of a body).
        delivered: status == 200 && (text.contains("Hello") || (!streamed && !bytes.is_empty())),
        what,
    }
}

#[tokio::test]
async fn no_misbehaving_provider_gets_output_free_or_past_the_reservation() {
    let (app, _upstream, _) = setup().await;
    let mut seen = Vec::new();
    let mut keys = Vec::new();
    for (path, model) in FAMILIES {
        for stream in [false, true] {
            let (id, key) = app
                .create_key(
                    json!({"name": format!("{path} {model} {stream}"), "credit_limit": 0.05}),
                )
                .await;
            keys.push(id);
            for directive in MISBEHAVIOURS {
                let text = format!("Hello there [[fake:{directive}]]");
                let what = format!("{path} {model} stream={stream} [{directive}]");
                seen.push(send(&app, &key, path, &body(path, model, &text, stream), what).await);
            }
        }
    }
    let ledger = ledger(&app).await;
    let cost: HashMap<&str, (i64, i64)> =
        ledger.iter().map(|r| (r.0.as_str(), (r.4, r.5))).collect();
    for s in &seen {
        let (charged, status) = cost
            .get(s.request_id.as_str())
            .copied()
            .unwrap_or_else(|| panic!("{}: no ledger record", s.what));
        if s.delivered {
            assert!(
                charged > 0,
                "{}: output delivered free (status {status}, client saw {}) {:?}",
                s.what,
                s.status,
                ledger.iter().find(|r| r.0 == s.request_id)
            );
        } else {
            assert_eq!(
                charged, 0,
                "{}: charged {charged} for nothing delivered",
                s.what
            );
            assert_ne!(
                s.status, 200,
                "{}: a 200 with nothing of the answer",
                s.what
            );
        }
        // 20 output tokens and a short prompt cost well under 0.001 at these prices:
        // absurd usage and ignored limits are charged at most the reservation.
        assert!(
            charged <= 1_000_000,
            "{}: charged {charged} nano-credits",
            s.what
        );
    }
    // Every misbehaviour that delivers something was charged through each family.
    assert!(seen.iter().filter(|s| s.delivered).count() >= FAMILIES.len() * 2 * 8);

    // The ledger, the keys' usage and the balance agree, and every endpoint answers.
    let total: i64 = ledger.iter().map(|r| r.4).sum();
    let mut usage_sum = 0;
    for id in &keys {
        let response = app
            .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
            .await;
        assert_eq!(response.status(), 200);
        let key: Value = response.json().await.expect("json");
        let usage = nanos(key["usage"].as_str().expect("usage"));
        assert!(usage <= 50_000_000, "key {id} past its limit: {usage}");
        usage_sum += usage;
    }
    assert_eq!(usage_sum, total);
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

async fn transcribe(
    app: &TestApp,
    key: &str,
    model: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new().text("model", model.to_string());
    // 40,000 bytes: the fake hears 3 seconds (ceil(bytes / 16,000)).
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; 40_000])
            .file_name("a.wav")
            .mime_str("audio/wav")
            .expect("mime"),
    );
    // Fields after the upload too, as some clients send them.
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    app.client
        .post(app.url("/v1/audio/transcriptions"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn transcripts_without_usage_are_metered_by_duration() {
    let (app, _upstream, key) = setup().await;
    // whisper-test is priced 0.0001 a second: 3 seconds is 300,000 nano-credits.
    for (format, starts) in [
        ("text", "Hello"),
        ("srt", "1\n00:00:00,000 --> "),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> "),
    ] {
        let response = transcribe(&app, &key, "whisper-test", &[("response_format", format)]).await;
        assert_eq!(response.status(), 200, "{format}");
        assert!(response.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/plain"));
        assert_eq!(
            nanos(
                response.headers()["x-tollgate-cost"]
                    .to_str()
                    .expect("cost")
            ),
            300_000,
            "{format}"
        );
        let text = response.text().await.expect("text");
        assert!(text.starts_with(starts), "{format}: {text}");
        if format != "text" {
            // The last cue ends at the audio's duration.
            assert!(text.contains("00:00:03"), "{format}: {text}");
        }
    }
    // A token-priced model: text is asked as json (which carries usage).
    let response = transcribe(
        &app,
        &key,
        "gpt-4o-transcribe",
        &[("response_format", "text")],
    )
    .await;
    assert_eq!(response.status(), 200);
    let cost = nanos(
        response.headers()["x-tollgate-cost"]
            .to_str()
            .expect("cost"),
    );
    assert!(cost > 0);
    assert!(response.text().await.expect("text").starts_with("Hello"));
    // Streamed: charged from the usage of transcript.text.done.
    let response = transcribe(&app, &key, "gpt-4o-transcribe", &[("stream", "true")]).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    assert!(text.contains("transcript.text.done"), "{text}");
    let ledger = ledger(&app).await;
    assert_eq!(ledger.len(), 5);
    assert!(ledger.iter().all(|r| r.4 > 0 && r.5 == 200), "{ledger:?}");
    // The streamed one was charged at its reported tokens, not estimated.
    let done: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "transcript.text.done")
        .expect("done");
    let usage = &done["usage"];
    let expected = crate::gateway::cost(
        &crate::gateway::Prices {
            input: 2_500_000_000,
            cached: 2_500_000_000,
            output: 10_000_000_000,
        },
        usage["input_tokens"].as_i64().expect("in").into(),
        0,
        usage["output_tokens"].as_i64().expect("out").into(),
    );
    assert_eq!(ledger[4].4, expected);
}
