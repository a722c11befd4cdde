//! Account-level request-rate limits by model pattern (`[[rate_limits]]` with
//! `scope = "account"`): every model matching the pattern shares, per account, `rpm`
//! requests per sliding minute and `rpd` per sliding 24 hours. In memory on one machine;
//! in Redis across replicas, both windows checked and counted in one script, so the
//! limit is exact however many replicas serve the account.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, SharedRateLimiter};
use crate::config::{AccountRateLimit, Model};
use crate::ratelimit::RateLimitError;
use crate::store::AccountId;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// One window of one limit: (its requests, its length, its name in messages).
type Window = (i64, Duration, &'static str);

/// The account-level limits of this process.
pub struct ModelLimits {
    limits: Vec<AccountRateLimit>,
    local: Mutex<HashMap<(AccountId, usize, bool), VecDeque<Instant>>>,
    shared: Option<SharedRateLimiter>,
}

fn windows(limit: &AccountRateLimit) -> Vec<Window> {
    let mut w = Vec::with_capacity(2);
    if let Some(rpm) = limit.rpm {
        w.push((rpm, MINUTE, "requests per minute"));
    }
    if let Some(rpd) = limit.rpd {
        w.push((rpd, DAY, "requests per day"));
    }
    w
}

impl ModelLimits {
    pub fn new(limits: Vec<AccountRateLimit>, cluster: Option<&Cluster>) -> Self {
        ModelLimits {
            limits,
            local: Mutex::new(HashMap::new()),
            shared: cluster.map(|c| SharedRateLimiter::new(c.clone())),
        }
    }

    /// Counts one request of `account` on `model` against every limit covering it, or
    /// refuses it (429 with the wait) and counts it nowhere.
    pub async fn check(
        &self,
        account: AccountId,
        model: &Model,
        request_id: &str,
    ) -> Result<(), RateLimitError> {
        for limit in self.limits.iter().filter(|l| l.covers(&model.id)) {
            let windows = windows(limit);
            let refused = match &self.shared {
                None => self.check_local(account, limit, &windows),
                Some(shared) => {
                    let logs: Vec<(String, u64, i64)> = windows
                        .iter()
                        .map(|(n, length, _)| {
                            let span = if *length == MINUTE { "m" } else { "d" };
                            (
                                format!("arl:{}:{}:{span}", limit.models, account.0),
                                length.as_millis() as u64,
                                *n,
                            )
                        })
                        .collect();
                    match shared.check_windows(&logs, request_id).await {
                        Ok(None) => None,
                        Ok(Some((i, wait))) => Some((i, wait)),
                        Err(e) => {
                            tracing::error!(error = %e, "rate limiter unavailable; refusing the request");
                            return Err(RateLimitError::Unavailable);
                        }
                    }
                }
            };
            if let Some((i, wait)) = refused {
                let (n, _, per) = windows[i];
                return Err(RateLimitError::AccountLimited {
                    models: limit.models.clone(),
                    limit: format!("{n} {per}"),
                    wait,
                });
            }
        }
        Ok(())
    }

    /// The in-memory check: `Some((window, wait))` if a window is full.
    fn check_local(
        &self,
        account: AccountId,
        limit: &AccountRateLimit,
        windows: &[Window],
    ) -> Option<(usize, Duration)> {
        let now = Instant::now();
        let mut logs = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let mut refused: Option<(usize, Duration)> = None;
        for (i, (n, length, _)) in windows.iter().enumerate() {
            let log = logs
                .entry((account, limit.index, *length == MINUTE))
                .or_default();
            while log
                .front()
                .is_some_and(|t| now.duration_since(*t) >= *length)
            {
                log.pop_front();
            }
            if log.len() as i64 >= *n {
                let oldest = log.front().copied().unwrap_or(now);
                let wait = length.saturating_sub(now.duration_since(oldest));
                if refused.is_none_or(|(_, w)| wait > w) {
                    refused = Some((i, wait));
                }
            }
        }
        if refused.is_none() {
            for (_, length, _) in windows {
                logs.entry((account, limit.index, *length == MINUTE))
                    .or_default()
                    .push_back(now);
            }
        }
        refused
    }
}
