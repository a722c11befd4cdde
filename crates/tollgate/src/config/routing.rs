//! The `[routing]` section: how many attempts a request may make over a model's
//! deployments and fallbacks, when a deployment cools down, and the request's deadline.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRouting {
    max_attempts: Option<u32>,
    cooldown_failures: Option<u32>,
    cooldown_ms: Option<u64>,
    retry_on_timeout: Option<bool>,
    request_timeout_ms: Option<u64>,
    backoff_ms: Option<u64>,
}

/// Routing settings.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Attempts per request, over deployments and fallback models together.
    pub max_attempts: u32,
    /// Consecutive failures that put a deployment in cooldown.
    pub cooldown_failures: u32,
    /// How long a deployment cools down (a provider's longer `Retry-After` wins).
    pub cooldown: Duration,
    /// Whether a first-byte timeout is tried again elsewhere (the abandoned attempt may
    /// still be generating, and billing the operator).
    pub retry_on_timeout: bool,
    /// Bounds everything before the first byte of the answer.
    pub request_timeout: Duration,
    /// Base of the pause before a deployment is tried again in the same request (doubled
    /// per attempt, with jitter); another deployment is tried at once.
    pub backoff: Duration,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            max_attempts: 3,
            cooldown_failures: 3,
            cooldown: Duration::from_secs(30),
            retry_on_timeout: false,
            request_timeout: Duration::from_secs(300),
            backoff: Duration::from_millis(50),
        }
    }
}

/// Validates `[routing]`.
pub(super) fn parse(file: FileRouting, origin: &str) -> Result<Routing, ConfigError> {
    let err = |key: &str, msg: &str| ConfigError::at(origin, key, msg.to_string());
    let defaults = Routing::default();
    let at_least_one = |v: Option<u32>, default: u32, key: &str| match v {
        Some(0) => Err(err(key, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let ms = |v: Option<u64>, default: Duration, key: &str| match v {
        Some(0) => Err(err(key, "must be above 0")),
        Some(v) => Ok(Duration::from_millis(v)),
        None => Ok(default),
    };
    Ok(Routing {
        max_attempts: at_least_one(
            file.max_attempts,
            defaults.max_attempts,
            "routing.max_attempts",
        )?,
        cooldown_failures: at_least_one(
            file.cooldown_failures,
            defaults.cooldown_failures,
            "routing.cooldown_failures",
        )?,
        cooldown: ms(file.cooldown_ms, defaults.cooldown, "routing.cooldown_ms")?,
        retry_on_timeout: file.retry_on_timeout.unwrap_or(defaults.retry_on_timeout),
        request_timeout: ms(
            file.request_timeout_ms,
            defaults.request_timeout,
            "routing.request_timeout_ms",
        )?,
        backoff: match file.backoff_ms {
            Some(v) => Duration::from_millis(v),
            None => defaults.backoff,
        },
    })
}
