//! Per-key request-rate limits (`rate_limit_rpm`), over a sliding minute: in memory on
//! one machine, in Redis across replicas.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::cluster::SharedRateLimiter;
use crate::http::error::ApiError;
use crate::store::{KeyId, KeyRecord};

const WINDOW: Duration = Duration::from_secs(60);

/// The rate limiter of this process.
pub enum RateLimiter {
    Local(Mutex<HashMap<KeyId, VecDeque<Instant>>>),
    Shared(SharedRateLimiter),
}

fn limited(wait: Duration) -> ApiError {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError {
        retry_after: Some(seconds),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("This key's rate limit (requests per minute) is reached; retry in {seconds} s, or raise rate_limit_rpm with PATCH /v1/account/keys/{{id}}."),
        )
    }
}

impl RateLimiter {
    pub fn local() -> Self {
        RateLimiter::Local(Mutex::new(HashMap::new()))
    }

    /// Counts one request of `key`, or refuses it with 429 and `Retry-After`.
    pub async fn check(&self, key: &KeyRecord, request_id: &str) -> Result<(), ApiError> {
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
                    return Err(limited(WINDOW.saturating_sub(now.duration_since(oldest))));
                }
                times.push_back(now);
                Ok(())
            }
            RateLimiter::Shared(shared) => match shared.check(key.id, per_minute, request_id).await
            {
                Ok(None) => Ok(()),
                Ok(Some(wait)) => Err(limited(wait)),
                Err(e) => {
                    tracing::error!(error = %e, "rate limiter unavailable; refusing the request");
                    Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate_limiter_unavailable",
                        "Rate limiting is temporarily unavailable; retry shortly.",
                    ))
                }
            },
        }
    }
}
