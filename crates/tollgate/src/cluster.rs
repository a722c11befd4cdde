//! What replicas share through Redis: budgets (reservations held under a lease),
//! per-key rate limits, and the bus that invalidates cached key identities.
//!
//! Every shared change is one Lua script, so it is atomic; script and key names carry a
//! version (`tg1:`), so replicas of two releases never read each other's layout during
//! a rolling upgrade. Redis keeps no durable truth: PostgreSQL does. Budgets are loaded
//! into Redis from PostgreSQL on first use and reloaded if Redis loses them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::auth::Authenticator;
use crate::billing::meter::{QuotaError, Reservation, ReserveError};
use crate::billing::Credits;
use crate::store::{AccountId, KeyId, KeyKind, KeyRecord, Store};

/// Prefix of every key and channel of this layout version.
pub const PREFIX: &str = "tg1";
/// The invalidation channel.
pub const INVALIDATION_CHANNEL: &str = "tg1:invalidate";
/// How long one Redis operation may take before the request is refused.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Failures talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
}

async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout),
    }
}

/// A connection to the shared Redis.
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    conn: ConnectionManager,
}

impl Cluster {
    pub async fn connect(url: &str) -> Result<Self, ClusterError> {
        let client = redis::Client::open(url)?;
        let conn = timed(client.get_connection_manager()).await?;
        Ok(Cluster { client, conn })
    }

    /// Tells every replica that a key changed or was deleted.
    pub async fn publish_invalidation(&self, id: KeyId) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        timed(
            redis::cmd("PUBLISH")
                .arg(INVALIDATION_CHANNEL)
                .arg(id.0)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Listens to the invalidation bus until the process ends. While the bus is down
    /// the identity cache is off, so a revocation elsewhere can never be missed.
    pub async fn run_invalidation_listener(self, auth: Authenticator) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(INVALIDATION_CHANNEL).await.is_ok() {
                        // Anything may have changed while we were not listening.
                        auth.clear();
                        auth.set_caching(true);
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(id) = message.get_payload::<i64>() {
                                auth.invalidate(KeyId(id));
                            }
                        }
                    }
                    tracing::warn!("invalidation bus lost; key cache off until it is back");
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach the invalidation bus"),
            }
            auth.set_caching(false);
            auth.clear();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

const RESERVE: &str = r#"
-- KEYS: account hash, key hash, reservation expiries (zset), reservation data (hash)
-- ARGV: lease_ms, reservation id, amount, key id, key-hash prefix
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  return {'load'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(expired) do
  local d = redis.call('HGET', KEYS[4], id)
  if d then
    local sp = string.find(d, ' ')
    local kid = string.sub(d, 1, sp - 1)
    local amt = tonumber(string.sub(d, sp + 1))
    redis.call('HINCRBY', KEYS[1], 'reserved', -amt)
    if redis.call('EXISTS', ARGV[5] .. kid) == 1 then
      redis.call('HINCRBY', ARGV[5] .. kid, 'reserved', -amt)
    end
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
local amount = tonumber(ARGV[3])
local a = redis.call('HMGET', KEYS[1], 'granted', 'charged', 'reserved')
local available = tonumber(a[1]) - tonumber(a[2]) - tonumber(a[3])
local k = redis.call('HMGET', KEYS[2], 'usage', 'limit', 'reserved')
if k[2] ~= 'none' then
  local remaining = tonumber(k[2]) - tonumber(k[1]) - tonumber(k[3])
  if amount > remaining then
    return {'key', k[2], tostring(remaining)}
  end
end
if amount > available then
  return {'balance', tostring(available)}
end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('HINCRBY', KEYS[2], 'reserved', amount)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4] .. ' ' .. ARGV[3])
return {'ok'}
"#;

const SETTLE: &str = r#"
-- KEYS: account hash, key hash, reservation expiries, reservation data; ARGV: id, cost
local d = redis.call('HGET', KEYS[4], ARGV[1])
if d then
  local amt = tonumber(string.sub(d, string.find(d, ' ') + 1))
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'reserved', -amt) end
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'reserved', -amt) end
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'charged', ARGV[2]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'usage', ARGV[2]) end
return 1
"#;

const LOAD: &str = r#"
-- KEYS: account hash, key hash; ARGV: granted, charged, usage, limit ('none' for no limit)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'granted', ARGV[1], 'charged', ARGV[2], 'reserved', 0)
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'usage', ARGV[3], 'limit', ARGV[4], 'reserved', 0)
end
return 1
"#;

const SET_IF_PRESENT: &str = r#"
-- KEYS: a hash; ARGV: field, value
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#;

const RENEW: &str = r#"
-- KEYS: reservation expiries; ARGV: lease_ms, ids...
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
return 1
"#;

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

fn account_hash(id: AccountId) -> String {
    format!("{PREFIX}:a:{}", id.0)
}
fn key_hash(id: KeyId) -> String {
    format!("{PREFIX}:k:{}", id.0)
}
fn expiries(id: AccountId) -> String {
    format!("{PREFIX}:r:{}", id.0)
}
fn reservation_data(id: AccountId) -> String {
    format!("{PREFIX}:rd:{}", id.0)
}

/// Budgets shared by every replica: reservations are held in Redis under a lease that
/// this replica renews while the request runs; a crashed replica's leases run out and
/// the next reservation on the account gives them back.
pub struct SharedBudgets {
    cluster: Cluster,
    store: Arc<dyn Store>,
    lease: Duration,
    /// Reservations in flight here, by id, with their account (for renewal).
    live: Mutex<HashMap<String, AccountId>>,
    touched: Mutex<Vec<AccountId>>,
    reserve: Script,
    settle: Script,
    load: Script,
    set_if_present: Script,
    renew: Script,
}

fn unavailable(e: ClusterError) -> ReserveError {
    ReserveError::Unavailable(e.to_string())
}

impl SharedBudgets {
    pub fn new(cluster: Cluster, store: Arc<dyn Store>, lease: Duration) -> Self {
        SharedBudgets {
            cluster,
            store,
            lease,
            live: Mutex::new(HashMap::new()),
            touched: Mutex::new(Vec::new()),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            load: Script::new(LOAD),
            set_if_present: Script::new(SET_IF_PRESENT),
            renew: Script::new(RENEW),
        }
    }

    /// The lease of a reservation.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    async fn load(&self, key: &KeyRecord) -> Result<(), ReserveError> {
        let account = self
            .store
            .account(key.account_id)
            .await?
            .ok_or_else(|| ReserveError::Unavailable("account missing".into()))?;
        let fresh = self
            .store
            .get_key(key.account_id, KeyKind::Inference, key.id)
            .await?
            .ok_or_else(|| ReserveError::Unavailable("key missing".into()))?;
        let limit = fresh
            .credit_limit
            .map_or_else(|| "none".to_string(), |l| l.nanos().to_string());
        let mut conn = self.cluster.conn.clone();
        timed(
            self.load
                .key(account_hash(key.account_id))
                .key(key_hash(key.id))
                .arg(account.granted.nanos())
                .arg(account.charged.nanos())
                .arg(fresh.usage.nanos())
                .arg(limit)
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map_err(unavailable)?;
        if let Ok(mut touched) = self.touched.lock() {
            if !touched.contains(&key.account_id) {
                touched.push(key.account_id);
            }
        }
        Ok(())
    }

    pub async fn reserve(
        &self,
        key: &KeyRecord,
        amount: Credits,
        id: &str,
    ) -> Result<Reservation, ReserveError> {
        for _ in 0..2 {
            let mut conn = self.cluster.conn.clone();
            let answer: Vec<String> = timed(
                self.reserve
                    .key(account_hash(key.account_id))
                    .key(key_hash(key.id))
                    .key(expiries(key.account_id))
                    .key(reservation_data(key.account_id))
                    .arg(self.lease.as_millis() as u64)
                    .arg(id)
                    .arg(amount.nanos())
                    .arg(key.id.0)
                    .arg(format!("{PREFIX}:k:"))
                    .invoke_async(&mut conn),
            )
            .await
            .map_err(unavailable)?;
            let number = |i: usize| {
                answer
                    .get(i)
                    .and_then(|v| v.parse::<i64>().ok())
                    .map_or(Credits::ZERO, Credits::from_nanos)
            };
            match answer.first().map(String::as_str) {
                Some("ok") => {
                    if let Ok(mut live) = self.live.lock() {
                        live.insert(id.to_string(), key.account_id);
                    }
                    return Ok(Reservation {
                        id: id.to_string(),
                        account: key.account_id,
                        key: key.id,
                        amount,
                    });
                }
                Some("key") => {
                    return Err(ReserveError::Quota(QuotaError::KeyLimit {
                        limit: number(1),
                        remaining: number(2).max(Credits::ZERO),
                        needed: amount,
                    }))
                }
                Some("balance") => {
                    return Err(ReserveError::Quota(QuotaError::Balance {
                        remaining: number(1).max(Credits::ZERO),
                        needed: amount,
                    }))
                }
                Some("load") => self.load(key).await?,
                _ => {
                    return Err(ReserveError::Unavailable(
                        "unexpected answer from redis".into(),
                    ))
                }
            }
        }
        Err(ReserveError::Unavailable(
            "budget could not be loaded".into(),
        ))
    }

    pub async fn settle(&self, reservation: Reservation, cost: Credits) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&reservation.id);
        }
        let mut backoff = Duration::from_millis(20);
        for _ in 0..5 {
            let mut conn = self.cluster.conn.clone();
            let done = timed(
                self.settle
                    .key(account_hash(reservation.account))
                    .key(key_hash(reservation.key))
                    .key(expiries(reservation.account))
                    .key(reservation_data(reservation.account))
                    .arg(&reservation.id)
                    .arg(cost.nanos())
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
            match done {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "settling a shared reservation failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        // The lease returns the reservation; the charge itself is in the ledger and
        // reaches Redis again when the budget is next reloaded.
        tracing::error!(id = %reservation.id, "could not settle a reservation in redis; its lease will release it");
    }

    async fn set_field(
        &self,
        hash: String,
        field: &str,
        value: String,
    ) -> Result<(), ClusterError> {
        let mut conn = self.cluster.conn.clone();
        timed(
            self.set_if_present
                .key(hash)
                .arg(field)
                .arg(value)
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Follows a key's new limit.
    pub async fn key_changed(&self, key: &KeyRecord) -> Result<(), ClusterError> {
        let limit = key
            .credit_limit
            .map_or_else(|| "none".to_string(), |l| l.nanos().to_string());
        self.set_field(key_hash(key.id), "limit", limit).await
    }

    /// Forgets a deleted key's budget.
    pub async fn key_deleted(&self, id: KeyId) -> Result<(), ClusterError> {
        let mut conn = self.cluster.conn.clone();
        timed(
            redis::cmd("DEL")
                .arg(key_hash(id))
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Copies the credit grants of the accounts used here from the database.
    pub async fn refresh_grants(&self) -> Result<(), ReserveError> {
        let touched = self.touched.lock().map(|t| t.clone()).unwrap_or_default();
        if touched.is_empty() {
            return Ok(());
        }
        for account in self.store.list_accounts().await? {
            if touched.contains(&account.id) {
                self.set_field(
                    account_hash(account.id),
                    "granted",
                    account.granted.nanos().to_string(),
                )
                .await
                .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Extends the lease of every reservation still in flight here.
    pub async fn renew_leases(&self) -> Result<(), ClusterError> {
        let mut by_account: HashMap<AccountId, Vec<String>> = HashMap::new();
        if let Ok(live) = self.live.lock() {
            for (id, account) in live.iter() {
                by_account.entry(*account).or_default().push(id.clone());
            }
        }
        for (account, ids) in by_account {
            let mut conn = self.cluster.conn.clone();
            let mut call = self.renew.key(expiries(account));
            call.arg(self.lease.as_millis() as u64);
            for id in &ids {
                call.arg(id);
            }
            timed(call.invoke_async::<i64>(&mut conn)).await?;
        }
        Ok(())
    }
}

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
