//! Per-key request-rate limits (`rate_limit_rpm`), over a sliding minute: in memory on
//! one machine, in Redis across replicas.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::SharedRateLimiter;
use crate::store::{KeyId, KeyRecord};

const WINDOW: Duration = Duration::from_secs(60);

/// The rate limiter of this process.
pub enum RateLimiter {
    Local(Mutex<HashMap<KeyId, VecDeque<Instant>>>),
    Shared(SharedRateLimiter),
}

/// A request the rate limiter refused.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The key's limit is reached; the request may be retried after the wait.
    #[error("This key's rate limit (requests per minute) is reached; retry in {} s, or raise rate_limit_rpm with PATCH /v1/account/keys/{{id}}.", retry_after_seconds(*.0))]
    Limited(Duration),
    /// An account-level limit of the models matching a pattern is reached.
    #[error("This account's rate limit for the models matching '{models}' ({limit}) is reached; retry in {} s.", retry_after_seconds(*wait))]
    AccountLimited {
        models: String,
        limit: String,
        wait: Duration,
    },
    /// The shared limiter cannot be reached: refuse rather than let the key through.
    #[error("Rate limiting is temporarily unavailable; retry shortly.")]
    Unavailable,
}

/// Whole seconds to wait, at least one (for `Retry-After`).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl RateLimiter {
    pub fn local() -> Self {
        RateLimiter::Local(Mutex::new(HashMap::new()))
    }

    /// Counts one request of `key`, or refuses it with 429 and `Retry-After`.
    pub async fn check(&self, key: &KeyRecord, request_id: &str) -> Result<(), RateLimitError> {
        let Some(per_minute) = key.rate_limit_rpm else {
            return Ok(());
        };
        match self {
            RateLimiter::Local(log) => {
                let now = Instant::now();
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                let times = log.entry(key.id).or_default();
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    times.pop_front();
                }
                if times.len() as i64 >= per_minute {
                    let oldest = times.front().copied().unwrap_or(now);
                    return Err(RateLimitError::Limited(
                        WINDOW.saturating_sub(now.duration_since(oldest)),
                    ));
                }
                times.push_back(now);
                Ok(())
            }
            RateLimiter::Shared(shared) => match shared.check(key.id, per_minute, request_id).await
            {
                Ok(None) => Ok(()),
                Ok(Some(wait)) => Err(RateLimitError::Limited(wait)),
                Err(e) => {
                    tracing::error!(error = %e, "rate limiter unavailable; refusing the request");
                    Err(RateLimitError::Unavailable)
                }
            },
        }
    }
}
