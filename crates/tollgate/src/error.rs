//! The one API error: each domain's typed error is lifted here, in one place, into a
//! status, a `type`, a stable `code` and a body in the shape of the API in use (OpenAI,
//! or Anthropic for `/v1/messages`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{AuthError, AuthFailure};
use crate::billing::meter::{QuotaError, ReserveError};
use crate::providers::{StatusClass, UpstreamError};
use crate::ratelimit::{retry_after_seconds, RateLimitError};
use crate::routing::NoDeployment;
use crate::store::StoreError;
use crate::usage::LedgerError;

/// Most characters of a client's name (a model, a path) quoted back in an error.
pub const QUOTED_NAME_CHARS: usize = 100;

/// A client's name as quoted in an error: at most [`QUOTED_NAME_CHARS`] characters.
pub fn quoted(name: &str) -> String {
    quoted_up_to(name, QUOTED_NAME_CHARS)
}

/// A client's text as quoted in an error: at most `chars` characters, `...` after a cut.
pub fn quoted_up_to(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// Anthropic's "overloaded" status.
pub const OVERLOADED: StatusCode = match StatusCode::from_u16(529) {
    Ok(status) => status,
    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
};

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<u64>,
    /// Upstream attempts made before the failure, when any (`x-tollgate-attempts`).
    pub attempts: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            attempts: None,
        }
    }

    /// The same error, saying how many upstream attempts were made.
    pub fn with_attempts(self, attempts: u32) -> Self {
        ApiError {
            attempts: (attempts > 0).then_some(attempts),
            ..self
        }
    }

    /// 400 about one field.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("Request body is larger than the limit of {limit} bytes."),
        )
    }

    /// 500: the detail goes to the log, never to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal server error. The details were logged; please retry or report it.",
        )
    }

    /// The OpenAI-style `type` of the status.
    pub fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 408 | 409 | 414 | 415 | 422 | 431 => "invalid_request_error",
            401 => "authentication_error",
            402 => "insufficient_quota",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_exceeded",
            502..=504 | 529 => "upstream_error",
            _ => "server_error",
        }
    }

    /// The Anthropic-style `type` of the status.
    pub fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 408 | 409 | 414 | 415 | 422 | 431 => "invalid_request_error",
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// The OpenAI-shaped body.
    pub fn openai_body(&self) -> serde_json::Value {
        json!({"error": {
            "type": self.openai_type(),
            "message": self.message,
            "code": self.code,
            "param": self.param,
        }})
    }

    /// The Anthropic-shaped body.
    pub fn anthropic_body(&self) -> serde_json::Value {
        json!({"type": "error", "error": {"type": self.anthropic_type(), "message": self.message}})
    }

    fn respond(&self, body: serde_json::Value) -> Response {
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(attempts) = self.attempts {
            response
                .headers_mut()
                .insert("x-tollgate-attempts", HeaderValue::from(attempts));
        }
        response
    }

    /// The response in Anthropic's shape (for `/v1/messages`).
    pub fn into_anthropic_response(self) -> Response {
        self.respond(self.anthropic_body())
    }

    /// The response in the shape of the API a path belongs to.
    pub fn into_response_for(self, shape: Shape) -> Response {
        match shape {
            Shape::OpenAi => self.into_response(),
            Shape::Anthropic => self.into_anthropic_response(),
        }
    }
}

/// The error code of an error response, for its metrics and access line.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The error shape of an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error": {"type", "message", "code", "param"}}`
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`
    Anthropic,
}

impl Shape {
    /// Anthropic's under `/v1/messages` (count_tokens, batches, a wrong sub-path or
    /// method included), OpenAI's everywhere else.
    pub fn of_path(path: &str) -> Shape {
        match path.strip_prefix("/v1/messages") {
            Some("") => Shape::Anthropic,
            Some(rest) if rest.starts_with('/') => Shape::Anthropic,
            _ => Shape::OpenAi,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.respond(self.openai_body());
        if self.status == OVERLOADED {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::MissingInference
            | AuthError::MissingProvisioning
            | AuthError::MissingOperator => "missing_api_key",
            AuthError::MalformedHeader
            | AuthError::ProvisioningViaApiKeyHeader
            | AuthError::OperatorViaApiKeyHeader => "malformed_authorization",
            AuthError::UnknownInference
            | AuthError::UnknownProvisioning
            | AuthError::UnknownOperator => "invalid_api_key",
            AuthError::ProvisioningKeyOnInference
            | AuthError::InferenceKeyOnAccount
            | AuthError::AccountKeyOnAdmin
            | AuthError::OperatorKeyElsewhere => "wrong_key_kind",
            AuthError::Disabled(_) => "key_disabled",
            AuthError::Expired(_) => "key_expired",
            AuthError::Deleted | AuthError::Revoked | AuthError::OperatorRevoked => "key_deleted",
            AuthError::Rotated(..) => "key_rotated",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    /// A database that cannot serve right now (unreachable, timed out, full) is a 503
    /// the client may retry; anything else is a 500.
    fn from(e: StoreError) -> Self {
        match e.outage() {
            Some(outage) => {
                tracing::error!(error = %e, outage = outage.as_str(), "the database cannot serve; refusing the request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "The database is temporarily unavailable. Retry shortly.",
                )
            }
            None => ApiError::internal(e),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let message = match e {
            LedgerError::Stuck => "The usage ledger cannot record charges right now (its database is unreachable or its disk is full), so the request was refused before it reached the model. Retry shortly.".to_string(),
            LedgerError::TimedOut(wait) => format!(
                "The usage ledger did not record this request's charge within {} ms, so its answer was withheld. The charge is recorded once the ledger recovers. Retry shortly.",
                wait.as_millis()
            ),
            LedgerError::Gone => "The server is shutting down and could not record this request's charge, so its answer was withheld.".to_string(),
        };
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            message,
        )
    }
}

impl From<AuthFailure> for ApiError {
    fn from(e: AuthFailure) -> Self {
        match e {
            AuthFailure::Refused(e) => e.into(),
            AuthFailure::Store(e) => e.into(),
        }
    }
}

impl From<RateLimitError> for ApiError {
    fn from(e: RateLimitError) -> Self {
        match e {
            RateLimitError::Limited(wait) => ApiError {
                retry_after: Some(retry_after_seconds(wait)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
            },
            RateLimitError::AccountLimited { wait, .. } => ApiError {
                retry_after: Some(retry_after_seconds(wait)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "account_rate_limited",
                    e.to_string(),
                )
            },
            RateLimitError::Unavailable => {
                tracing::error!("rate limiter unavailable; refusing the request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limiter_unavailable",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<ReserveError> for ApiError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::Quota(q) => {
                let code = match q {
                    QuotaError::KeyLimit { .. } => "credit_limit_exceeded",
                    QuotaError::Balance { .. } => "insufficient_balance",
                };
                ApiError::new(StatusCode::PAYMENT_REQUIRED, code, q.to_string())
            }
            ReserveError::Store(e) => e.into(),
            ReserveError::Unavailable(reason) => {
                tracing::error!(%reason, "metering unavailable; refusing the request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metering_unavailable",
                    "Metering is temporarily unavailable, so the request was refused rather than risk overspending. Retry shortly.",
                )
            }
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        let message = e.to_string();
        match e {
            UpstreamError::Connect {
                timed_out: false, ..
            } => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", message),
            UpstreamError::Connect { .. }
            | UpstreamError::FirstByteTimeout { .. }
            | UpstreamError::Deadline { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
            }
            UpstreamError::Broken { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
            }
            UpstreamError::Malformed { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_malformed", message)
            }
            // The client's own fault, or the provider's rate limit: the provider's
            // answer goes back as it came (its message, its status, its Retry-After).
            UpstreamError::Status {
                status,
                class: StatusClass::ClientFault | StatusClass::RateLimited,
                retry_after,
                message: provider_message,
                ..
            } => ApiError {
                retry_after: retry_after.map(|d| d.as_secs()),
                ..ApiError::new(
                    status,
                    "upstream_refused",
                    provider_message.unwrap_or_else(|| {
                        format!(
                            "The provider refused the request (HTTP {}).",
                            status.as_u16()
                        )
                    }),
                )
            },
            // Anthropic's clients back off on 529 `overloaded_error`: it goes back as it
            // came on `/v1/messages` (a 503 in the OpenAI shape, which has no 529).
            UpstreamError::Status {
                class: StatusClass::Overloaded,
                retry_after,
                ..
            } => ApiError {
                retry_after: retry_after.map(|d| d.as_secs()),
                ..ApiError::new(OVERLOADED, "upstream_overloaded", message)
            },
            UpstreamError::Status { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
            }
        }
    }
}

impl From<NoDeployment> for ApiError {
    fn from(e: NoDeployment) -> Self {
        ApiError {
            retry_after: Some(retry_after_seconds(e.retry_after)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_deployment",
                e.to_string(),
            )
        }
    }
}
