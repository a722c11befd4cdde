//! Azure OpenAI providers against the fake upstream's Azure paths: both URL forms, the
//! `api-key` header and the bearer form, Azure's refusals, and a model whose Azure
//! deployment fails over to its OpenAI deployment, charged once.

use fake_upstream::{FakeUpstream, Fault, Options};
use serde_json::{json, Value};

use crate::gateway::{chat, cost, ledger, GPT};
use crate::helpers::{spawn_app_env, TestApp};

async fn upstream() -> FakeUpstream {
    fake_upstream::start(Options {
        openai_api_key: Some("up-openai".into()),
        azure_api_key: Some("up-azure".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream")
}

const MODEL: &str = "[[models]]\nid = \"gpt-test\"\nendpoints = [\"chat.completions\", \"messages\", \"responses\", \"embeddings\"]\nmax_output_tokens = 100\npricing = { input = \"0.40\", output = \"1.60\", cached_input = \"0.10\" }\n";

fn azure(name: &str, root: &str, extra: &str) -> String {
    format!("[[providers]]\nname = \"{name}\"\nkind = \"azure\"\nbase_url = \"{root}\"\napi_key_env = \"AZ_KEY\"\n{extra}")
}

async fn start(config: &str, azure_key: &str) -> (TestApp, String) {
    let azure_key = azure_key.to_string();
    let env = move |name: &str| match name {
        "AZ_KEY" => Some(azure_key.clone()),
        "OA_KEY" => Some("up-openai".to_string()),
        _ => None,
    };
    let app = spawn_app_env(config, &env).await;
    app.grant("100").await;
    let key = app.inference_key().await;
    (app, key)
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_deployment_form_sends_api_key_and_version_and_is_metered() {
    let up = upstream().await;
    let config = format!(
        "{}{MODEL}[[models.deployments]]\nprovider = \"az\"\nupstream_model = \"gpt4o-east\"\n",
        azure("az", &up.root_url(), "api_version = \"2024-10-21\"\n")
    );
    let (app, key) = start(&config, "up-azure").await;
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "hi there [[fake:cached=2]]"),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-provider"), "az");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["model"], "gpt-test");
    let usage = &body["usage"];
    let sent = &up.received()[0];
    assert_eq!(sent.path, "/openai/deployments/gpt4o-east/chat/completions");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.header("api-key"), Some("up-azure"));
    assert_eq!(sent.header("authorization"), None);
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1);
    let input = usage["prompt_tokens"].as_i64().expect("input");
    let output = usage["completion_tokens"].as_i64().expect("output");
    assert_eq!((rows[0].1, rows[0].2, rows[0].3), (input, 2, output));
    assert_eq!(rows[0].4, cost(&GPT, input.into(), 2, output.into()));

    // A Messages client, streamed, through the same deployment.
    let response = app
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "gpt-test", "max_tokens": 50, "stream": true,
                    "messages": [{"role": "user", "content": "stream please"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    assert!(text.contains("event: message_stop"), "{text}");
    let sent = &up.received()[1];
    assert_eq!(sent.path, "/openai/deployments/gpt4o-east/chat/completions");
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 2);
    assert!(rows[1].3 > 0 && rows[1].4 == cost(&GPT, rows[1].1.into(), 0, rows[1].3.into()));

    // Responses go to Azure's deployment-less path.
    let response = app
        .post(
            "/v1/responses",
            &key,
            &json!({"model": "gpt-test", "input": "hello"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let sent = &up.received()[2];
    assert_eq!(sent.path, "/openai/responses");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.json().expect("json")["model"], "gpt4o-east");
}

#[tokio::test]
async fn the_v1_form_with_a_bearer_token() {
    let up = upstream().await;
    let config = format!(
        "{}{MODEL}[[models.deployments]]\nprovider = \"az\"\n",
        azure("az", &up.root_url(), "auth = \"bearer\"\n")
    );
    let (app, key) = start(&config, "up-azure").await;
    let response = app
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "gpt-test", "input": "one two three"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let sent = &up.received()[0];
    assert_eq!(sent.path, "/openai/v1/embeddings");
    assert_eq!(sent.query, None);
    assert_eq!(sent.header("authorization"), Some("Bearer up-azure"));
    assert_eq!(sent.header("api-key"), None);
    let rows = ledger(&app).await;
    assert_eq!((rows[0].1, rows[0].4), (3, cost(&GPT, 3, 0, 0)));
}

#[tokio::test]
async fn azure_refusals_are_upstream_errors_and_free() {
    let up = upstream().await;
    // A wrong key: Azure's 401.
    let config = format!(
        "{}{MODEL}[[models.deployments]]\nprovider = \"az\"\n",
        azure("az", &up.root_url(), "api_version = \"2024-10-21\"\n")
    );
    let (app, key) = start(&config, "wrong").await;
    let response = app
        .post("/v1/chat/completions", &key, &chat("gpt-test", "hi"))
        .await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.expect("body");
    assert!(!text.contains("wrong"), "{text}");
    // An API version Azure does not know: its 400, relayed as the provider's refusal.
    let config = format!(
        "{}{MODEL}[[models.deployments]]\nprovider = \"az\"\n",
        azure("az", &up.root_url(), "api_version = \"1999-01-01\"\n")
    );
    let (app2, key2) = start(&config, "up-azure").await;
    let response = app2
        .post("/v1/chat/completions", &key2, &chat("gpt-test", "hi"))
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("API version not supported")),
        "{body}"
    );
    for app in [&app, &app2] {
        let rows = ledger(app).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].4, 0);
    }
}

#[tokio::test]
async fn a_failing_azure_deployment_fails_over_to_openai_charged_once() {
    let (az, oa) = (upstream().await, upstream().await);
    az.faults()
        .next(
            1,
            Fault::Status {
                status: 503,
                retry_after: None,
            },
        )
        .await
        .expect("fault");
    let config = format!(
        "{}[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"OA_KEY\"\n{MODEL}[[models.deployments]]\nprovider = \"az\"\nupstream_model = \"gpt4o-east\"\npriority = 1\n[[models.deployments]]\nprovider = \"openai\"\nupstream_model = \"gpt-4.1-mini\"\npriority = 2\n",
        azure("az", &az.root_url(), "api_version = \"2024-10-21\"\n"),
        oa.base_url()
    );
    let (app, key) = start(&config, "up-azure").await;
    let response = app
        .post("/v1/chat/completions", &key, &chat("gpt-test", "failover"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-tollgate-provider"), "openai");
    assert_eq!(header(&response, "x-tollgate-attempts"), "2");
    let body: Value = response.json().await.expect("json");
    assert_eq!(az.stats().faulted, 1);
    assert_eq!(oa.received()[0].path, "/v1/chat/completions");
    assert_eq!(
        oa.received()[0].json().expect("json")["model"],
        "gpt-4.1-mini"
    );
    let rows = ledger(&app).await;
    assert_eq!(rows.len(), 1, "charged once");
    let input = body["usage"]["prompt_tokens"].as_i64().expect("input");
    let output = body["usage"]["completion_tokens"].as_i64().expect("output");
    assert_eq!(rows[0].4, cost(&GPT, input.into(), 0, output.into()));
    assert_eq!(rows[0].5, 200);
}
