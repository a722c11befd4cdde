//! Tollgate: a self-hosted AI API gateway with exact metering.
//!
//! One binary that is a gateway (OpenAI- and Anthropic-compatible model endpoints),
//! a meter (every request charged exactly once) and an account service.

pub mod accounts;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod console;
pub mod credits;
pub mod error;
pub mod gateway;
pub mod http;
pub mod model_limits;
pub mod observe;
pub mod providers;
pub mod ratelimit;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod store;
pub mod usage;
pub mod webhooks;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The current unix time in seconds.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A unix time as RFC 3339 in UTC, e.g. `2026-03-31T10:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parses an RFC 3339 time into unix seconds (fractions are dropped).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}
