//! The typed failure of one upstream attempt, classified so that routing can tell what
//! may be tried again elsewhere and the API error can tell the client what happened.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};

/// What a non-2xx status says about the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// The client's own fault (400, 404, 413, 422 ...): the answer goes back as it is.
    ClientFault,
    /// 429: the provider's rate limit.
    RateLimited,
    /// 529: the provider is overloaded.
    Overloaded,
    /// 408 or 5xx: the provider failed.
    Unavailable,
    /// 401 or 403: the operator's credentials for the provider are wrong.
    Credentials,
}

impl StatusClass {
    fn of(status: StatusCode) -> StatusClass {
        match status.as_u16() {
            401 | 403 => StatusClass::Credentials,
            408 => StatusClass::Unavailable,
            429 => StatusClass::RateLimited,
            529 => StatusClass::Overloaded,
            400..=499 => StatusClass::ClientFault,
            _ => StatusClass::Unavailable,
        }
    }
}

/// The failure of one upstream attempt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection was made (refused, unresolvable, TLS, connect timeout): the request
    /// never reached the provider.
    #[error("The provider '{provider}' could not be reached.")]
    Connect { provider: Arc<str>, timed_out: bool },
    /// The connection failed after the request may have been sent, before an answer.
    #[error("The connection to provider '{provider}' failed before it answered.")]
    Broken { provider: Arc<str> },
    /// No answer within the first-byte timeout (the provider may still be generating).
    #[error("The provider '{provider}' did not answer in time.")]
    FirstByteTimeout { provider: Arc<str> },
    /// A non-2xx answer.
    #[error("The provider '{provider}' failed (HTTP {status}).")]
    Status {
        provider: Arc<str>,
        status: StatusCode,
        class: StatusClass,
        retry_after: Option<Duration>,
        /// The provider's own error message, scrubbed of secrets.
        message: Option<String>,
    },
    /// A 2xx answer that could not be read.
    #[error("The provider '{provider}' sent a malformed answer: {what}.")]
    Malformed { provider: Arc<str>, what: String },
    /// The request's deadline (`[routing] request_timeout_ms`) ran out before any answer.
    #[error("No provider answered within the request's deadline of {seconds} s.")]
    Deadline { seconds: u64 },
}

impl UpstreamError {
    /// A non-2xx answer, classified by its status; `Retry-After` in seconds is kept.
    pub fn from_status(
        provider: &str,
        status: StatusCode,
        headers: &HeaderMap,
        message: Option<String>,
    ) -> UpstreamError {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        UpstreamError::Status {
            provider: provider.into(),
            status,
            class: StatusClass::of(status),
            retry_after,
            message,
        }
    }

    /// A 2xx answer that could not be read.
    pub fn malformed(provider: &str, what: impl Into<String>) -> UpstreamError {
        UpstreamError::Malformed {
            provider: provider.into(),
            what: what.into(),
        }
    }

    /// The same failure with the provider's own message passed through `scrub`.
    pub fn scrubbed(self, scrub: impl Fn(&str) -> String) -> UpstreamError {
        match self {
            UpstreamError::Status {
                provider,
                status,
                class,
                retry_after,
                message,
            } => UpstreamError::Status {
                provider,
                status,
                class,
                retry_after,
                message: message.map(|m| scrub(&m)),
            },
            other => other,
        }
    }

    /// The status recorded in the ledger for the failed attempt.
    pub fn ledger_status(&self) -> u16 {
        match self {
            UpstreamError::Connect {
                timed_out: true, ..
            }
            | UpstreamError::FirstByteTimeout { .. }
            | UpstreamError::Deadline { .. } => 504,
            UpstreamError::Status { status, .. } => status.as_u16(),
            _ => 502,
        }
    }

    /// Whether another attempt may be made: the provider failed and nothing of this one
    /// can have been generated for the client. A first-byte timeout counts only when
    /// `after_timeout` allows it (the provider may still be generating, and billing).
    pub fn retryable(&self, after_timeout: bool) -> bool {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::Broken { .. } => true,
            UpstreamError::FirstByteTimeout { .. } => after_timeout,
            UpstreamError::Deadline { .. } => false,
            UpstreamError::Status { class, .. } => *class != StatusClass::ClientFault,
            UpstreamError::Malformed { .. } => false,
        }
    }
}
