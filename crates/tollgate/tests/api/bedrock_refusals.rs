//! AWS's refusals and broken streams on a Bedrock provider: a signing bug (AWS's 403), a
//! session token left out, a corrupted event-stream CRC, throttling and validation errors,
//! an exception mid-stream, and a throttled deployment failing over to OpenAI, charged
//! once.

use fake_upstream::{Options, TEST_AWS_ACCESS_KEY_ID, TEST_AWS_SECRET_ACCESS_KEY};
use serde_json::{json, Value};

use crate::bedrock::{last, setup, start_with, NOVA, NOVA_ID};
use crate::gateway::{cost, ledger};
use crate::helpers::spawn_app_env;

#[tokio::test]
async fn a_signing_bug_fails_as_aws_fails_it_and_costs_nothing() {
    let up = fake_upstream::start(Options::default())
        .await
        .expect("fake upstream");
    // A secret one character off signs every request wrongly.
    let wrong = format!("{}x", TEST_AWS_SECRET_ACCESS_KEY);
    let (app, key) = start_with(&up, &wrong, None).await;
    let body = json!({"model": "nova", "messages": [{"role": "user", "content": "Hi"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert!(status >= 500, "{status} {text}");
    assert!(!text.contains(&wrong));
    let received = up.received();
    assert!(!received.is_empty(), "the request reached the fake");
    let rows = ledger(&app).await;
    assert!(rows.iter().all(|r| r.4 == 0), "{rows:?}");
    // The fake answered as AWS does.
    let direct = reqwest::Client::new()
        .post(format!("{}/model/{NOVA_ID}/converse", up.root_url()))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIATOLLGATEFAKETEST/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00")
        .header("x-amz-date", "20250101T000000Z")
        .body("{}")
        .send()
        .await
        .expect("direct");
    assert_eq!(direct.status(), 403);
    assert!(direct
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("InvalidSignatureException")));
}

#[tokio::test]
async fn a_session_token_is_sent_and_signed() {
    let up = fake_upstream::start(Options {
        aws_session_token: Some("session-token-for-tests".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream");
    let (app, key) = start_with(
        &up,
        TEST_AWS_SECRET_ACCESS_KEY,
        Some("session-token-for-tests"),
    )
    .await;
    let body = json!({"model": "nova", "messages": [{"role": "user", "content": "Hi"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200);
    let sent = last(&up);
    assert_eq!(
        sent.header("x-amz-security-token"),
        Some("session-token-for-tests")
    );
    assert!(sent.header("authorization").is_some_and(
        |a| a.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token")
    ));
    // Without it, AWS refuses the credentials.
    let (app, key) = start_with(&up, TEST_AWS_SECRET_ACCESS_KEY, None).await;
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_ne!(response.status(), 200);
}

#[tokio::test]
async fn a_corrupted_event_stream_crc_ends_the_stream_with_an_error() {
    let (app, _up, key) = setup().await;
    for model in ["nova", "claude-bedrock"] {
        let body = json!({"model": model, "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "Count [[fake:words=5,bad_crc]]"}]});
        let response = app.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("stream");
        assert!(!text.contains("[DONE]"), "{model}: {text}");
        assert!(
            text.contains("CRC") && text.contains("error"),
            "{model}: {text}"
        );
    }
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.5 == 502), "{rows:?}");
}

#[tokio::test]
async fn aws_throttling_and_validation_errors_reach_the_client_as_theirs() {
    let (app, _up, key) = setup().await;
    let body = json!({"model": "nova",
        "messages": [{"role": "user", "content": "Hi [[fake:status=429]]"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 429);
    let text = response.text().await.expect("body");
    assert!(text.contains("ThrottlingException"), "{text}");

    // Converse wants the user to speak first: Bedrock's 400, passed on.
    let body = json!({"model": "nova", "messages": [
        {"role": "assistant", "content": "I start."},
        {"role": "user", "content": "Hi"}]});
    let response = app.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("body");
    assert!(
        text.contains("ValidationException") && text.contains("must start with a user message"),
        "{text}"
    );
    let rows = ledger(&app).await;
    assert!(rows.iter().all(|r| r.4 == 0));
}

#[tokio::test]
async fn a_throttled_bedrock_deployment_fails_over_to_openai_charged_once() {
    let (bedrock, openai) = (
        fake_upstream::start(Options::default())
            .await
            .expect("fake"),
        fake_upstream::start(Options::default())
            .await
            .expect("fake"),
    );
    let config = format!(
        "[[providers]]\nname = \"bedrock\"\nkind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\n\
[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"OA_KEY\"\n\
[[models]]\nid = \"smart\"\nendpoints = [\"chat.completions\"]\nmax_output_tokens = 100\npricing = {{ input = \"0.80\", cached_input = \"0.20\", output = \"3.20\" }}\n\
[[models.deployments]]\nprovider = \"bedrock\"\nupstream_model = \"{NOVA_ID}\"\npriority = 1\n\
[[models.deployments]]\nprovider = \"openai\"\nupstream_model = \"gpt-4.1-mini\"\npriority = 2\n",
        bedrock.root_url(),
        openai.base_url()
    );
    let env = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(TEST_AWS_ACCESS_KEY_ID.to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(TEST_AWS_SECRET_ACCESS_KEY.to_string()),
        "OA_KEY" => Some("sk-any".to_string()),
        _ => None,
    };
    let app = spawn_app_env(&config, &env).await;
    app.grant("10").await;
    let key = app.inference_key().await;
    // Bedrock's first answer is a 429 (the fake's fault injection).
    let throttled = json!({"model": "smart", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hi [[fake:words=3]]"}]});
    bedrock
        .faults()
        .next(
            1,
            fake_upstream::Fault::Status {
                status: 429,
                retry_after: None,
            },
        )
        .await
        .expect("fault");
    let response = app.post("/v1/chat/completions", &key, &throttled).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-tollgate-provider")
            .and_then(|v| v.to_str().ok()),
        Some("openai")
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(bedrock.stats().faulted, 1);
    assert_eq!(openai.received()[0].path, "/v1/chat/completions");
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1, "charged once");
    let input = answer["usage"]["prompt_tokens"].as_i64().expect("input");
    let output = answer["usage"]["completion_tokens"]
        .as_i64()
        .expect("output");
    assert_eq!(rows[0].4, cost(&NOVA, input.into(), 0, output.into()));
    assert_eq!(rows[0].5, 200);
}

#[tokio::test]
async fn an_exception_mid_stream_ends_it_with_an_error_and_charges_what_was_delivered() {
    let (app, _up, key) = setup().await;
    for model in ["claude-bedrock", "nova"] {
        let body = json!({"model": model, "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "Count [[fake:words=6,error_after=2]]"}]});
        let response = app.post("/v1/messages", &key, &body).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("stream");
        assert!(text.contains("event: error"), "{model}: {text}");
        assert!(!text.contains("event: message_stop"), "{model}: {text}");
    }
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.5, 502, "{rows:?}");
        assert!(
            row.3 >= 2 && row.4 > 0,
            "the delivered words are charged: {rows:?}"
        );
    }
}
