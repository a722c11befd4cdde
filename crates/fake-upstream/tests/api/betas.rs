//! Anthropic refuses beta-only fields without their `anthropic-beta`, system messages where it
//! has none, and adaptive thinking on older models; `count_tokens` and model retrieval.

use serde_json::{json, Value};

use crate::{client, post_anthropic, spawn};

/// POSTs `body` to `path` (under `/v1`) with Anthropic's headers and `betas` as
/// `anthropic-beta` (none when empty).
async fn post_beta(
    up: &fake_upstream::FakeUpstream,
    path: &str,
    betas: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let mut request = client()
        .post(format!("{}{path}", up.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if !betas.is_empty() {
        request = request.header("anthropic-beta", betas);
    }
    let resp = request.send().await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

fn base(model: &str) -> Value {
    json!({"model": model, "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello there"}]})
}

fn error_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn beta_fields_need_their_beta_header() -> anyhow::Result<()> {
    let up = spawn().await?;
    let cases = [
        (
            "context_management",
            json!({"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}),
            "context-management-2025-06-27",
            "context_management: Extra inputs are not permitted",
        ),
        (
            "output_config",
            json!({"effort": "low"}),
            "effort-2025-11-24",
            "output_config.effort: Extra inputs are not permitted",
        ),
    ];
    for (field, value, beta, message) in cases {
        let mut body = base("claude-opus-4-6");
        body[field] = value;
        let (status, v) = post_beta(&up, "/messages", "", &body).await?;
        assert_eq!(status, 400, "{field} without its beta: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(error_message(&v), message);
        // Another beta does not enable it; its own does, among others.
        let (status, _) = post_beta(&up, "/messages", "claude-code-20250219", &body).await?;
        assert_eq!(status, 400);
        let betas = format!("claude-code-20250219, {beta},interleaved-thinking-2025-05-14");
        let (status, v) = post_beta(&up, "/messages", &betas, &body).await?;
        assert_eq!(status, 200, "{field} with {betas}: {v}");
    }
    let mut body = base("claude-sonnet-4-5");
    body["tools"] = json!([{"name": "Read", "input_schema": {"type": "object"}},
        {"name": "Later", "input_schema": {"type": "object"}, "defer_loading": true}]);
    let (status, v) = post_beta(&up, "/messages", "", &body).await?;
    assert_eq!(status, 400);
    assert_eq!(
        error_message(&v),
        "tools.1.custom.defer_loading: Extra inputs are not permitted"
    );
    let (status, _) = post_beta(&up, "/messages", "advanced-tool-use-2025-11-20", &body).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn adaptive_thinking_only_on_models_that_have_it() -> anyhow::Result<()> {
    let up = spawn().await?;
    for (model, want) in [
        ("claude-haiku-4-5", 400),
        ("claude-sonnet-4-5", 400),
        ("claude-opus-4-6", 200),
        ("claude-opus-4-8", 200),
    ] {
        let mut body = base(model);
        body["thinking"] = json!({"type": "adaptive", "display": "omitted"});
        let (status, v) = post_beta(&up, "/messages", "", &body).await?;
        assert_eq!(status, want, "{model}: {v}");
        if want == 400 {
            assert!(error_message(&v).contains("adaptive thinking is not supported"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn system_messages_inside_messages_need_the_beta_and_a_model() -> anyhow::Result<()> {
    let up = spawn().await?;
    let beta = "mid-conversation-system-2026-04-07";
    let later = json!([{"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Skills: pdf"}]},
        {"role": "user", "content": "go"}]);
    let first = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}]);
    let directive_first = json!([{"role": "system", "content": [], "output_config": {"effort": "low"}},
        {"role": "user", "content": "hi"}]);
    let cases = [
        (
            "claude-opus-4-8",
            "",
            &later,
            400,
            "messages.1.role: Unexpected role \"system\"",
        ),
        (
            "claude-sonnet-4-5",
            beta,
            &later,
            400,
            "role 'system' is not supported on this model",
        ),
        ("claude-opus-4-8", beta, &later, 200, ""),
        (
            "claude-opus-4-8",
            beta,
            &first,
            400,
            "messages.0: use the top-level 'system' parameter",
        ),
        ("claude-opus-4-8", beta, &directive_first, 200, ""),
    ];
    for (model, betas, messages, want, message) in cases {
        let mut body = base(model);
        body["messages"] = messages.clone();
        let (status, v) = post_beta(&up, "/messages", betas, &body).await?;
        assert_eq!(status, want, "{model} {betas}: {v}");
        assert!(error_message(&v).starts_with(message), "{v}");
    }
    Ok(())
}

#[tokio::test]
async fn claude_codes_recorded_request_needs_its_betas() -> anyhow::Result<()> {
    let up = spawn().await?;
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../tollgate-formats/tests/golden/messages_to_chat/claude_code_first_turn/request.in.json"
    ))?;
    body["stream"] = json!(false); // read the answer as one JSON body
                                   // As a gateway that drops the header would send it.
    let (status, v) = post_beta(&up, "/messages", "", &body).await?;
    assert_eq!(status, 400, "{v}");
    let betas = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20";
    let (status, v) = post_beta(&up, "/messages", betas, &body).await?;
    assert_eq!(status, 200, "{v}");
    Ok(())
}

#[tokio::test]
async fn count_tokens_uses_the_input_formula() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "claude-haiku-4-5", "system": "be brief", "messages": [
        {"role": "user", "content": "one two three"},
        {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "five six"},
            {"type": "text", "text": "seven"}]}]});
    let (status, v) = post_beta(&up, "/messages/count_tokens", "", &body).await?;
    assert_eq!(status, 200, "{v}");
    // system 4+2, user 4+3, assistant 4+1, tool result 4+2, other blocks 4+1.
    assert_eq!(v, json!({"input_tokens": 29}));
    // The same body, answered: the usage agrees.
    let mut answered = body.clone();
    answered["max_tokens"] = json!(5);
    let resp: Value = post_anthropic(&up, answered).await?.json().await?;
    assert_eq!(resp["usage"]["input_tokens"], 29);
    // count_tokens checks what /messages checks.
    let mut beta_only = body.clone();
    beta_only["context_management"] = json!({"edits": []});
    let (status, _) = post_beta(&up, "/messages/count_tokens", "", &beta_only).await?;
    assert_eq!(status, 400);
    let (status, v) = post_beta(
        &up,
        "/messages/count_tokens",
        "",
        &json!({"model": "claude-haiku-4-5"}),
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(error_message(&v), "messages: Field required");
    let resp = client()
        .post(format!("{}/messages/count_tokens", up.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    Ok(())
}

#[tokio::test]
async fn models_are_retrieved_in_either_shape() -> anyhow::Result<()> {
    let up = spawn().await?;
    let get = |id: &str, anthropic: bool| {
        let mut request = client().get(format!("{}/models/{id}", up.base_url()));
        if anthropic {
            request = request
                .header("anthropic-version", "2023-06-01")
                .header("x-api-key", "sk-ant-test");
        }
        request.send()
    };
    let resp = get("claude-opus-4-6", true).await?;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await?;
    assert_eq!(v["type"], "model");
    assert_eq!(v["id"], "claude-opus-4-6");
    assert_eq!(v["display_name"], "Claude Opus 4.6");
    let resp = get("claude-nope", true).await?;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await?;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");

    let resp = get("gpt-4o-mini", false).await?;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await?;
    assert_eq!(
        (v["id"].as_str(), v["object"].as_str()),
        (Some("gpt-4o-mini"), Some("model"))
    );
    let resp = get("gpt-nope", false).await?;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["message"], "The model 'gpt-nope' does not exist");
    Ok(())
}
