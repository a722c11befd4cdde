//! The label sets of the metrics: every value comes from a small enum or from the
//! operator's own catalog (model ids, provider names), never from what a client sent,
//! so the number of series is bounded by the configuration (docs/observability.md).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::config::Endpoint;
use crate::providers::{StatusClass, UpstreamError};

/// A label value from the configuration (a model id, a provider name), shared: making
/// a label set clones a pointer, never a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Name(pub Arc<str>);

impl Name {
    pub fn new(text: &str) -> Name {
        Name(Arc::from(text))
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// The route family of a request (bounded: unknown paths are `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Model(Endpoint),
    CountTokens,
    Models,
    Account,
    Health,
    Metrics,
    Other,
}

impl Route {
    /// The route family of a request path.
    pub fn of_path(path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v1") else {
            return match path {
                "/healthz" | "/readyz" => Route::Health,
                "/metrics" => Route::Metrics,
                _ => Route::Other,
            };
        };
        if let Some(endpoint) = Endpoint::ALL.into_iter().find(|e| e.path() == rest) {
            return Route::Model(endpoint);
        }
        match rest {
            "/messages/count_tokens" => Route::CountTokens,
            "/key" | "/startups" => Route::Account,
            _ if rest == "/models" || rest.starts_with("/models/") => Route::Models,
            _ if rest.starts_with("/account/") => Route::Account,
            _ => Route::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Model(endpoint) => endpoint.name(),
            Route::CountTokens => "messages.count_tokens",
            Route::Models => "models",
            Route::Account => "account",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }

    /// The OpenTelemetry GenAI operation (`gen_ai.operation.name`) of a model endpoint.
    pub fn operation(self) -> &'static str {
        match self {
            Route::Model(Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses) => {
                "chat"
            }
            Route::Model(Endpoint::Completions) => "text_completion",
            Route::Model(Endpoint::Embeddings) => "embeddings",
            Route::Model(_) => "generate_content",
            Route::CountTokens => "count_tokens",
            _ => "",
        }
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.name())
    }
}

/// A static label value (status classes, error codes, outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Static(pub &'static str);

impl EncodeLabelValue for Static {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.0)
    }
}

/// `2xx` ... `5xx`.
pub fn status_class(status: u16) -> Static {
    Static(match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    })
}

/// Why the gateway itself refused a request (`tollgate_refusals_total{reason}`). New
/// refusals get a variant here and a line in [`Refusal::of_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Refusal {
    key_limit,
    balance,
    rate_limit,
    auth,
    other,
}

impl Refusal {
    /// The refusal an error code stands for, if it is one of the gateway's refusals (a
    /// provider's own 429 is no refusal: it is an upstream attempt's outcome).
    pub fn of_code(status: u16, code: &str) -> Option<Refusal> {
        Some(match code {
            "credit_limit_exceeded" => Refusal::key_limit,
            "insufficient_balance" => Refusal::balance,
            "rate_limited" => Refusal::rate_limit,
            "missing_api_key"
            | "malformed_authorization"
            | "invalid_api_key"
            | "wrong_key_kind"
            | "key_disabled"
            | "key_expired"
            | "key_deleted" => Refusal::auth,
            _ if code.starts_with("upstream") => return None,
            _ if matches!(status, 401 | 402 | 403 | 429) => Refusal::other,
            _ => return None,
        })
    }
}

/// The outcome of one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptOutcome {
    success,
    connect_error,
    broken,
    timeout,
    rate_limited,
    overloaded,
    unavailable,
    credentials,
    client_error,
    malformed,
    deadline,
}

impl AttemptOutcome {
    pub fn of(error: &UpstreamError) -> AttemptOutcome {
        match error {
            UpstreamError::Connect { .. } => AttemptOutcome::connect_error,
            UpstreamError::Broken { .. } => AttemptOutcome::broken,
            UpstreamError::FirstByteTimeout { .. } => AttemptOutcome::timeout,
            UpstreamError::Deadline { .. } => AttemptOutcome::deadline,
            UpstreamError::Malformed { .. } => AttemptOutcome::malformed,
            UpstreamError::Status { class, .. } => match class {
                StatusClass::ClientFault => AttemptOutcome::client_error,
                StatusClass::RateLimited => AttemptOutcome::rate_limited,
                StatusClass::Overloaded => AttemptOutcome::overloaded,
                StatusClass::Unavailable => AttemptOutcome::unavailable,
                StatusClass::Credentials => AttemptOutcome::credentials,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttemptOutcome::success => "success",
            AttemptOutcome::connect_error => "connect_error",
            AttemptOutcome::broken => "broken",
            AttemptOutcome::timeout => "timeout",
            AttemptOutcome::rate_limited => "rate_limited",
            AttemptOutcome::overloaded => "overloaded",
            AttemptOutcome::unavailable => "unavailable",
            AttemptOutcome::credentials => "credentials",
            AttemptOutcome::client_error => "client_error",
            AttemptOutcome::malformed => "malformed",
            AttemptOutcome::deadline => "deadline",
        }
    }
}

/// Token kinds of `tollgate_tokens_total{type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TokenType {
    input,
    output,
    cached_input,
    cache_write,
    reasoning,
}

/// `tollgate_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: Route,
    pub model: Name,
    pub provider: Name,
    pub status_class: Static,
    pub error_code: Static,
}

/// `gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GenAiLabels {
    pub gen_ai_operation_name: Static,
    pub gen_ai_request_model: Name,
    pub gen_ai_provider_name: Name,
    pub error_type: Static,
}

/// `gen_ai_client_token_usage`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenUsageLabels {
    pub gen_ai_operation_name: Static,
    pub gen_ai_request_model: Name,
    pub gen_ai_provider_name: Name,
    pub gen_ai_token_type: Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Name,
    pub r#type: TokenType,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: Refusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    pub provider: Name,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: Route,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub model: Name,
    pub deployment: Name,
    pub state: Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeyLabel {
    /// A key's id, or `other` past the operator's cap.
    pub key_id: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: Static,
}

/// Where a cluster reservation was taken: `slice` or `redis`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: Static,
}
