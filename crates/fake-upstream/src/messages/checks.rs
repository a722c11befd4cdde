//! What real Anthropic refuses in a Messages body: fields that exist only under a beta the
//! request did not enable (`anthropic-beta`), `role: "system"` messages where they are not
//! allowed, and adaptive thinking on models that do not have it.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use crate::error;
use crate::http::Ctx;

/// `context_management` (context editing) needs this beta.
pub(crate) const CONTEXT_MANAGEMENT_BETA: &str = "context-management-2025-06-27";
/// `output_config.effort` needs this beta.
pub(crate) const EFFORT_BETA: &str = "effort-2025-11-24";
/// `defer_loading` on tools (tool search) needs this beta.
pub(crate) const ADVANCED_TOOL_USE_BETA: &str = "advanced-tool-use-2025-11-20";
/// `role: "system"` messages inside `messages` need this beta (and a model that has them).
pub(crate) const MID_CONVERSATION_SYSTEM_BETA: &str = "mid-conversation-system-2026-04-07";

/// Models with adaptive thinking (`thinking: {"type": "adaptive"}`): Opus 4.6 and later,
/// Sonnet 4.6 and later.
const ADAPTIVE_THINKING: [&str; 6] = [
    "opus-4-6",
    "opus-4-7",
    "opus-4-8",
    "opus-5",
    "sonnet-4-6",
    "sonnet-5",
];

/// Models that accept mid-conversation system messages: Opus 4.8 and later.
const MID_CONVERSATION_SYSTEM: [&str; 2] = ["opus-4-8", "opus-5"];

/// The betas the request enabled.
fn betas(ctx: &Ctx) -> Vec<String> {
    ctx.headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect()
}

fn bad(message: &str) -> Response {
    error::anthropic(StatusCode::BAD_REQUEST, message)
}

fn extra_input(path: &str) -> Response {
    bad(&format!("{path}: Extra inputs are not permitted"))
}

/// Checks a Messages (or count_tokens) body against the request's betas and the model.
pub(crate) fn check(ctx: &Ctx, model: &str, req: &Value) -> Result<(), Response> {
    let betas = betas(ctx);
    let has = |beta: &str| betas.iter().any(|b| b == beta);
    if req.get("context_management").is_some() && !has(CONTEXT_MANAGEMENT_BETA) {
        return Err(extra_input("context_management"));
    }
    if req.pointer("/output_config/effort").is_some() && !has(EFFORT_BETA) {
        return Err(extra_input("output_config.effort"));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("defer_loading").is_some() && !has(ADVANCED_TOOL_USE_BETA) {
                return Err(extra_input(&format!("tools.{i}.custom.defer_loading")));
            }
        }
    }
    if req.pointer("/thinking/type").and_then(Value::as_str) == Some("adaptive")
        && !ADAPTIVE_THINKING.iter().any(|m| model.contains(m))
    {
        return Err(bad(&format!(
            "thinking.type: adaptive thinking is not supported on {model}; use \"enabled\" with budget_tokens"
        )));
    }
    let messages = req.get("messages").and_then(Value::as_array);
    for (i, message) in messages.into_iter().flatten().enumerate() {
        if message.get("role").and_then(Value::as_str) != Some("system") {
            continue;
        }
        if !has(MID_CONVERSATION_SYSTEM_BETA) {
            return Err(bad(&format!(
                "messages.{i}.role: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role."
            )));
        }
        if !MID_CONVERSATION_SYSTEM.iter().any(|m| model.contains(m)) {
            return Err(bad("role 'system' is not supported on this model"));
        }
        let has_content = match message.get("content") {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        };
        if i == 0 && has_content {
            return Err(bad("messages.0: use the top-level 'system' parameter for the initial system prompt; the directive-only form (content: [] with output_config) is accepted at any position"));
        }
    }
    Ok(())
}
