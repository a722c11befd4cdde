//! Per-key request-rate limits over a sliding minute, shared by every replica.

use std::time::Duration;

use redis::Script;

use super::{timed, Cluster, ClusterError, PREFIX};
use crate::store::KeyId;

const RATE_LIMIT: &str = r#"
-- KEYS: the key's request log (zset); ARGV: window_ms, limit, member
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"#;

/// Several sliding windows checked together and counted only if all have room.
const WINDOWS: &str = r#"
-- KEYS: request logs (zsets); ARGV: member, then (window_ms, limit) per log.
-- Answers 0 (counted in every log), or the 1-based log that is full and the wait in ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local full, wait = 0, 0
for i = 1, #KEYS do
  local window, limit = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local w = math.max(1, tonumber(oldest[2]) + window - now)
    if w > wait then full, wait = i, w end
  end
end
if full > 0 then return {full, wait} end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
end
return {0, 0}
"#;

/// Per-key request-rate limits over a sliding minute, shared by every replica.
pub struct SharedRateLimiter {
    cluster: Cluster,
    script: Script,
    windows: Script,
}

impl SharedRateLimiter {
    pub fn new(cluster: Cluster) -> Self {
        SharedRateLimiter {
            cluster,
            script: Script::new(RATE_LIMIT),
            windows: Script::new(WINDOWS),
        }
    }

    /// `Ok(None)` if the request may go, `Ok(Some(wait))` if the key is over its limit.
    pub async fn check(
        &self,
        key: KeyId,
        per_minute: i64,
        member: &str,
    ) -> Result<Option<Duration>, ClusterError> {
        let mut conn = self.cluster.conn.clone();
        let wait_ms: i64 = timed(
            self.script
                .key(format!("{PREFIX}:rl:{}", key.0))
                .arg(60_000)
                .arg(per_minute)
                .arg(member)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }

    /// Counts `member` in every log `(name, window_ms, limit)` (names under the cluster's
    /// prefix) if all have room: `Ok(None)`; else `Ok(Some((index of a full log, wait)))`.
    pub async fn check_windows(
        &self,
        logs: &[(String, u64, i64)],
        member: &str,
    ) -> Result<Option<(usize, Duration)>, ClusterError> {
        let mut invocation = self.windows.prepare_invoke();
        invocation.arg(member);
        for (name, window_ms, limit) in logs {
            invocation
                .key(format!("{PREFIX}:{name}"))
                .arg(*window_ms)
                .arg(*limit);
        }
        let mut conn = self.cluster.conn.clone();
        let (full, wait_ms): (i64, i64) = timed(invocation.invoke_async(&mut conn)).await?;
        Ok((full > 0).then(|| {
            (
                (full - 1) as usize,
                Duration::from_millis(wait_ms.max(1) as u64),
            )
        }))
    }
}
