//! What replicas share through Redis: budgets (reservations held under a lease),
//! per-key rate limits, and the bus that invalidates cached key identities.
//!
//! Every shared change is one Lua script, so it is atomic; script and key names carry a
//! version (`tg1:`, budgets `tg2:`), so replicas of two releases never read each other's
//! layout during a rolling upgrade. Redis keeps no durable truth: PostgreSQL does. Budgets
//! are loaded into Redis from PostgreSQL on first use, checked against it periodically,
//! and rebuilt from it (with the reservations the replicas still hold) when Redis loses
//! its data; docs/cluster.md gives the argument.

mod budgets;
mod epochs;
mod flights;
mod grants;
mod ledger;
mod names;
mod ratelimit;
mod scripts;
mod slices;
mod sync;
mod withheld;

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;

pub use budgets::{SettleOutcome, SharedBudgets, GRACE, TICK};
pub use names::{budget_key, grace_key, EPOCH_KEY};
pub use ratelimit::SharedRateLimiter;
pub use slices::{Slice, SLICE_LIFE, SLICE_REQUESTS};
pub use sync::CHUNK_KEYS;

use crate::auth::Authenticator;
use crate::store::KeyId;

/// Prefix of the rate-limit keys and the invalidation channel (their layout is unchanged).
pub const PREFIX: &str = "tg1";
/// The invalidation channel.
pub const INVALIDATION_CHANNEL: &str = "tg1:invalidate";
/// How long one Redis operation may take before the request is refused.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often the invalidation bus' connection is checked.
const BUS_PING: Duration = Duration::from_secs(1);
/// The longest pause between two attempts at reconnecting to Redis.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// Connections of the pool that reads ledger snapshots (loads and checks of budgets), one
/// of them held by the change feed of grants.
const LEDGER_CONNECTIONS: u32 = 5;

/// Failures talking to Redis (or reading the ledger for it).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("unexpected answer from redis: {0}")]
    Answer(String),
}

impl ClusterError {
    /// Whether the command may have run although no answer came (a timeout or a
    /// connection lost after sending), as opposed to a refused connection or an error reply.
    pub fn may_have_run(&self) -> bool {
        match self {
            ClusterError::Timeout => true,
            ClusterError::Redis(e) => {
                e.is_timeout()
                    || e.is_connection_dropped()
                    || (e.is_io_error() && !e.is_connection_refusal())
            }
            ClusterError::Ledger(_) | ClusterError::Answer(_) => false,
        }
    }
}

async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout),
    }
}

/// A connection to the shared Redis, and a small pool reading the shared ledger.
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    conn: ConnectionManager,
    ledger: sqlx::PgPool,
}

impl Cluster {
    /// Connects to Redis; `database_url` must name the PostgreSQL database the replicas share.
    pub async fn connect(url: &str, database_url: &str) -> Result<Self, ClusterError> {
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ClusterError::Ledger(
                "cluster mode (redis_url) needs a PostgreSQL database_url".into(),
            ));
        }
        let ledger = sqlx::postgres::PgPoolOptions::new()
            .max_connections(LEDGER_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(database_url)
            .map_err(|e| ClusterError::Ledger(e.to_string()))?;
        let client = redis::Client::open(url)?;
        // redis-rs' default reconnection backoff grows by a factor of 100 up to 60 s
        // (1 s, then 60 s, ...): a replica cut off from Redis for a few seconds stayed
        // refusing requests for minutes after it was reachable again (bench/cluster_faults.py).
        // Retries every second instead, each connection attempt bounded.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_factor(2)
            .set_max_delay(RECONNECT_MAX_DELAY.as_millis() as u64)
            .set_connection_timeout(OP_TIMEOUT);
        let conn = timed(client.get_connection_manager_with_config(config)).await?;
        Ok(Cluster {
            client,
            conn,
            ledger,
        })
    }

    /// Whether Redis answers (`tollgate_backend_up{backend="redis"}`).
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        timed(redis::cmd("PING").query_async::<String>(&mut conn)).await?;
        Ok(())
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
            // Bounded: a connection attempt to an unreachable Redis may otherwise hang.
            match timed(self.client.get_async_pubsub()).await {
                Ok(mut pubsub) => {
                    if timed(pubsub.subscribe(INVALIDATION_CHANNEL)).await.is_ok() {
                        // Anything may have changed while we were not listening.
                        auth.clear();
                        auth.set_caching(true);
                        backoff = Duration::from_millis(100);
                        let (mut sink, mut messages) = pubsub.split();
                        // A connection cut off without a word (a partition that drops
                        // packets) would look subscribed for ever while messages are lost:
                        // a ping every second that gets no answer ends it.
                        let mut ping = tokio::time::interval(BUS_PING);
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(message) => {
                                        if let Ok(id) = message.get_payload::<i64>() {
                                            auth.invalidate(KeyId(id));
                                        }
                                    }
                                    None => break,
                                },
                                _ = ping.tick() => {
                                    if timed(sink.ping::<redis::Value>()).await.is_err() {
                                        break;
                                    }
                                }
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
