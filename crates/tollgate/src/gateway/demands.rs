//! What a request asks of the meter beyond its tokens, and the refusal of what the meter
//! cannot price: a stateful background job, a service tier or hosted tool without a
//! price, an output limit above the model's maximum.

use std::borrow::Cow;

use serde::Deserialize;

use super::estimate::DEFAULT_OUTPUT_BOUND;
use super::request::RequestFields;
use crate::billing::{HostedTool, Pricing};
use crate::config::{Endpoint, Model};
use crate::error::ApiError;

/// Hosted-tool calls reserved for when the request sets no bound of its own (Responses
/// `max_tool_calls`, Anthropic `max_uses`); the gateway then sends this bound upstream.
pub(super) const DEFAULT_HOSTED_CALLS: u64 = 10;

/// Service tiers billed at the standard price.
const STANDARD_TIERS: [&str; 4] = ["auto", "default", "standard", "standard_only"];

/// What a request asks of the meter beyond its tokens.
#[derive(Debug, Clone, Default)]
pub(super) struct Demands {
    /// The output limit the client set.
    pub(super) output_limit: Option<u64>,
    /// The field that set it (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub(super) limit_field: &'static str,
    /// A service tier other than the standard one.
    pub(super) tier: Option<String>,
    /// The hosted tools the request offers the model.
    pub(super) hosted: Vec<HostedTool>,
    /// The hosted-tool calls to reserve for.
    pub(super) hosted_calls: u64,
    /// The request sets no bound on hosted calls: the gateway adds
    /// [`DEFAULT_HOSTED_CALLS`] upstream.
    pub(super) bound_hosted_calls: bool,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    max_uses: Option<u64>,
}

/// The hosted tool a tool definition names, if it is one with a per-call fee.
fn hosted_tool(endpoint: Endpoint, kind: &str) -> Option<HostedTool> {
    match endpoint {
        Endpoint::Responses => match kind {
            "file_search" => Some(HostedTool::FileSearch),
            "code_interpreter" => Some(HostedTool::CodeInterpreter),
            "image_generation" => Some(HostedTool::ImageGeneration),
            k if k.starts_with("web_search") => Some(HostedTool::WebSearch),
            _ => None,
        },
        Endpoint::Messages => {
            if kind.starts_with("web_search_") {
                Some(HostedTool::WebSearch)
            } else if kind.starts_with("code_execution_") {
                Some(HostedTool::CodeInterpreter)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Reads the demands of a JSON request, refusing what no model could meter.
pub(super) fn read(endpoint: Endpoint, request: &RequestFields<'_>) -> Result<Demands, ApiError> {
    let mut demands = Demands {
        output_limit: request.output_limit(endpoint)?,
        limit_field: match endpoint {
            Endpoint::Responses => "max_output_tokens",
            Endpoint::ChatCompletions if request.0.get("max_completion_tokens").is_some() => {
                "max_completion_tokens"
            }
            _ => "max_tokens",
        },
        ..Demands::default()
    };
    if endpoint == Endpoint::Completions && demands.output_limit.is_none() {
        demands.output_limit = Some(COMPLETIONS_DEFAULT_MAX_TOKENS);
    }
    if !matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages
    ) {
        return Ok(demands);
    }
    if endpoint == Endpoint::Responses && request.flag("background")? {
        return Err(ApiError {
            code: "unsupported_stateful_request",
            ..ApiError::invalid_field(
                "background",
                "The gateway is stateless: a background response goes on generating after the request ends, where it cannot be metered. Send the request without 'background' (streaming keeps long requests alive).",
            )
        });
    }
    demands.tier = request
        .string("service_tier")?
        .filter(|t| !STANDARD_TIERS.contains(&t.as_str()));
    if endpoint == Endpoint::ChatCompletions && request.0.get("web_search_options").is_some() {
        // Search models search once per request.
        demands.hosted.push(HostedTool::WebSearch);
        demands.hosted_calls = 1;
        return Ok(demands);
    }
    let Some(raw) = request.0.get("tools") else {
        return Ok(demands);
    };
    let tools: Option<Vec<Tool<'_>>> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::invalid_field("tools", "'tools' must be an array of tools."))?;
    let mut uses = 0u64;
    let mut unbounded = false;
    for tool in tools.unwrap_or_default() {
        let Some(hosted) = tool.kind.as_deref().and_then(|k| hosted_tool(endpoint, k)) else {
            continue;
        };
        if !demands.hosted.contains(&hosted) {
            demands.hosted.push(hosted);
        }
        match tool.max_uses {
            Some(n) => uses = uses.saturating_add(n),
            None => unbounded = true,
        }
    }
    if demands.hosted.is_empty() {
        return Ok(demands);
    }
    demands.hosted_calls = match endpoint {
        // `max_tool_calls` bounds every built-in tool call of the response.
        Endpoint::Responses => match request.count("max_tool_calls")? {
            Some(n) => n,
            None => {
                demands.bound_hosted_calls = true;
                DEFAULT_HOSTED_CALLS
            }
        },
        _ => {
            demands.bound_hosted_calls = unbounded;
            if unbounded {
                uses.saturating_add(DEFAULT_HOSTED_CALLS)
            } else {
                uses
            }
        }
    };
    Ok(demands)
}

/// Output tokens a legacy completions request asks for when it gives no `max_tokens`
/// (OpenAI's documented default; the gateway sends it, since servers differ).
pub(super) const COMPLETIONS_DEFAULT_MAX_TOKENS: u64 = 16;

/// How many answers a request generates (and pays for): `n`, and for legacy completions
/// `best_of` (generated server-side, billed, then all but `n` dropped).
pub(super) fn choices(endpoint: Endpoint, request: &RequestFields<'_>) -> Result<u64, ApiError> {
    let n = request.count("n")?.unwrap_or(1);
    let best_of = match endpoint {
        Endpoint::Completions => request.count("best_of")?.unwrap_or(1),
        _ => 1,
    };
    Ok(n.max(best_of).max(1))
}

/// The most output a request may produce on `model`: its own limit, else the model's
/// maximum, else the documented default.
pub(super) fn output_bound(demands: &Demands, model: &Model) -> u64 {
    demands
        .output_limit
        .or(model.max_output_tokens)
        .unwrap_or(DEFAULT_OUTPUT_BOUND)
}

/// The prices a request pays on `model` (its service tier's), or why the model cannot
/// serve it: a tier or hosted tool it has no price for, or an output limit above its
/// maximum.
pub(super) fn pricing<'m>(demands: &Demands, model: &'m Model) -> Result<&'m Pricing, ApiError> {
    let maximum = model.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_BOUND);
    if let Some(limit) = demands.output_limit.filter(|l| *l > maximum) {
        let field = if demands.limit_field.is_empty() {
            "max_tokens"
        } else {
            demands.limit_field
        };
        return Err(ApiError {
            code: "max_tokens_too_large",
            ..ApiError::invalid_field(
                field,
                format!(
                    "'{field}' is {limit}, above the maximum output of the model '{}': {maximum} tokens. Ask for {maximum} or fewer.",
                    model.id
                ),
            )
        });
    }
    let pricing = match &demands.tier {
        None => &model.pricing,
        Some(tier) => model
            .service_tiers
            .iter()
            .find(|(name, _)| name == tier)
            .map(|(_, pricing)| pricing)
            .ok_or_else(|| ApiError {
                code: "unpriced_service_tier",
                ..ApiError::invalid_field(
                    "service_tier",
                    format!(
                        "The model '{}' has no price for the service tier '{tier}', so the gateway cannot meter it. Priced tiers: default{}.",
                        model.id,
                        model
                            .service_tiers
                            .iter()
                            .map(|(name, _)| format!(", {name}"))
                            .collect::<String>()
                    ),
                )
            })?,
    };
    if !model.free {
        if let Some(tool) = demands
            .hosted
            .iter()
            .find(|t| pricing.tool_calls[t.index()].is_none())
        {
            return Err(ApiError {
                code: "unpriced_hosted_tool",
                ..ApiError::invalid_field(
                    "tools",
                    format!(
                        "The model '{}' has no per-call price for the hosted tool '{}', so the gateway cannot meter it. Remove the tool, or ask the operator to price it (pricing.{}).",
                        model.id,
                        tool.name(),
                        tool.name()
                    ),
                )
            });
        }
    }
    Ok(pricing)
}
