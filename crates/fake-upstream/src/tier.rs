//! `service_tier`: which values each provider accepts and which tier its answer
//! reports, so a gateway can be shown pricing (or refusing) a non-standard tier.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use crate::error;

/// OpenAI (chat and Responses): absent or `auto` → `default`; `default`, `flex`,
/// `scale` and `priority` are kept; anything else is OpenAI's 400.
pub(crate) fn openai(requested: Option<&Value>) -> Result<&'static str, Response> {
    let Some(v) = requested.filter(|v| !v.is_null()) else {
        return Ok("default");
    };
    match v.as_str() {
        Some("auto" | "default") => Ok("default"),
        Some("flex") => Ok("flex"),
        Some("scale") => Ok("scale"),
        Some("priority") => Ok("priority"),
        _ => {
            let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            Err(error::openai(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Invalid value: '{shown}'. Supported values are: 'auto', 'default', \
                     'flex', 'scale', and 'priority'."
                ),
                Some("service_tier"),
                Some("invalid_value"),
            ))
        }
    }
}

/// Anthropic: `auto` is served on the priority tier (as for an organisation with
/// Priority Tier capacity), `standard_only` or absent on the standard tier; anything
/// else is Anthropic's 400.
pub(crate) fn anthropic(requested: Option<&Value>) -> Result<&'static str, Response> {
    match requested {
        None | Some(Value::Null) => Ok("standard"),
        Some(v) => match v.as_str() {
            Some("auto") => Ok("priority"),
            Some("standard_only") => Ok("standard"),
            _ => Err(error::anthropic(
                StatusCode::BAD_REQUEST,
                "service_tier: Input should be 'auto' or 'standard_only'",
            )),
        },
    }
}
