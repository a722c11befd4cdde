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

/// Per-key request-rate limits over a sliding minute, shared by every replica.
pub struct SharedRateLimiter {
    cluster: Cluster,
    script: Script,
}

impl SharedRateLimiter {
    pub fn new(cluster: Cluster) -> Self {
        SharedRateLimiter {
            cluster,
            script: Script::new(RATE_LIMIT),
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
}
