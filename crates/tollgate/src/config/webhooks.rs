//! The `[[webhooks]]` (operator webhooks, receiving every account's events) and
//! `[webhook_policy]` sections.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Overrides, Secret};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhook {
    url: String,
    secret_env: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebhookPolicy {
    allow_private_targets: Option<bool>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
}

/// An operator's webhook: every account's events, signed with a secret from the environment.
#[derive(Debug, Clone)]
pub struct OperatorWebhook {
    pub url: String,
    pub secret: Secret,
}

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    /// Operator webhooks, in file order (their index names them in the delivery log).
    pub operator: Vec<OperatorWebhook>,
    /// Let account holders point webhooks at loopback, private or link-local addresses.
    pub allow_private_targets: bool,
    /// How long one delivery attempt may take.
    pub timeout: Duration,
    /// Attempts per delivery before it is marked failed.
    pub max_attempts: u32,
    /// Pause before the second attempt; doubled for each further one.
    pub retry_base: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            operator: Vec::new(),
            allow_private_targets: false,
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_base: Duration::from_secs(10),
        }
    }
}

pub(super) fn parse(
    hooks: Vec<FileWebhook>,
    policy: FileWebhookPolicy,
    origin: &str,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<WebhookPolicy, ConfigError> {
    let mut operator = Vec::new();
    for (i, hook) in hooks.into_iter().enumerate() {
        let key = |field: &str| format!("webhooks[{i}].{field}");
        let uri = hook.url.parse::<axum::http::Uri>();
        if !uri.is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        }) {
            return Err(ConfigError::at(
                origin,
                &key("url"),
                format!("'{}' is not an http(s) URL", hook.url),
            ));
        }
        let secret = match env(&hook.secret_env) {
            Some(secret) if !secret.is_empty() => secret,
            // Operator commands never deliver webhooks.
            _ if overrides.without_provider_secrets => String::new(),
            _ => {
                return Err(ConfigError::at(
                    origin,
                    &key("secret_env"),
                    format!("environment variable {} is not set", hook.secret_env),
                ))
            }
        };
        operator.push(OperatorWebhook {
            url: hook.url,
            secret: Secret::new(secret),
        });
    }
    let defaults = WebhookPolicy::default();
    let positive = |value: Option<u64>, default: Duration, field: &str| match value {
        Some(0) => Err(ConfigError::at(
            origin,
            &format!("webhook_policy.{field}"),
            "must be above 0".into(),
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let max_attempts = match policy.max_attempts {
        Some(n) if !(1..=20).contains(&n) => {
            return Err(ConfigError::at(
                origin,
                "webhook_policy.max_attempts",
                "must be from 1 to 20".into(),
            ))
        }
        Some(n) => n,
        None => defaults.max_attempts,
    };
    Ok(WebhookPolicy {
        operator,
        allow_private_targets: policy.allow_private_targets.unwrap_or(false),
        timeout: positive(policy.timeout_ms, defaults.timeout, "timeout_ms")?,
        max_attempts,
        retry_base: positive(policy.retry_base_ms, defaults.retry_base, "retry_base_ms")?,
    })
}
