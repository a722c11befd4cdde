//! The webhooks' tables, on a small pool of their own over the same database as the
//! store (the queries are in `sql.rs`, written once for both databases).

use super::{DeliveryRow, Due, HookRow, KeyUse};
use crate::store::side_pool::SidePool;

mod sqlite {
    type Db = sqlx::Sqlite;
    const KEY_USAGE: &str = "k.usage";
    include!("sql.rs");
}

mod pg {
    type Db = sqlx::Postgres;
    /// With the writers' slots (`store::counters`).
    const KEY_USAGE: &str = crate::store::counters::key_usage!("k");
    include!("sql.rs");
}

/// A pool on the store's database.
#[derive(Clone)]
pub struct Db(SidePool);

macro_rules! each {
    ($self:expr, $f:ident($($arg:expr),*)) => {
        match &$self.0 {
            SidePool::Sqlite(p) => sqlite::$f(p, $($arg),*).await,
            SidePool::Pg(p) => pg::$f(p, $($arg),*).await,
        }
    };
}

impl Db {
    /// The pool on the database at `url` (already migrated by the store).
    pub fn open(url: &str) -> Result<Db, sqlx::Error> {
        SidePool::open(url).map(Db)
    }

    pub async fn create(
        &self,
        account: i64,
        url: &str,
        secret: &str,
        low_balance: Option<i64>,
        now: i64,
    ) -> sqlx::Result<i64> {
        each!(self, create(account, url, secret, low_balance, now))
    }
    pub async fn hooks(&self, account: Option<i64>) -> sqlx::Result<Vec<HookRow>> {
        each!(self, hooks(account))
    }
    pub async fn hook_by_id(&self, id: i64) -> sqlx::Result<Option<HookRow>> {
        each!(self, hook_by_id(id))
    }
    pub async fn delete(&self, account: i64, id: i64, now: i64) -> sqlx::Result<bool> {
        each!(self, delete(account, id, now))
    }
    #[allow(clippy::too_many_arguments)]
    pub async fn emit(
        &self,
        account: i64,
        dedup: &str,
        now: i64,
        receivers: &[(Option<i64>, Option<i64>)],
        event_id: &str,
        event_type: &str,
        payload: &str,
        now_ms: i64,
    ) -> sqlx::Result<bool> {
        each!(
            self,
            emit(account, dedup, now, receivers, event_id, event_type, payload, now_ms)
        )
    }
    pub async fn forget_event(&self, account: i64, dedup: &str) -> sqlx::Result<()> {
        each!(self, forget_event(account, dedup))
    }
    pub async fn claim(&self, now_ms: i64, until: i64, limit: i64) -> sqlx::Result<Vec<Due>> {
        each!(self, claim(now_ms, until, limit))
    }
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        id: i64,
        status: &str,
        attempts: i64,
        next_attempt_at: i64,
        last_status: Option<i64>,
        last_error: Option<&str>,
        delivered_at: Option<i64>,
    ) -> sqlx::Result<()> {
        each!(
            self,
            finish(
                id,
                status,
                attempts,
                next_attempt_at,
                last_status,
                last_error,
                delivered_at
            )
        )
    }
    pub async fn deliveries(&self, webhook: i64, limit: i64) -> sqlx::Result<Vec<DeliveryRow>> {
        each!(self, deliveries(webhook, limit))
    }
    pub async fn max_usage_id(&self) -> sqlx::Result<i64> {
        each!(self, max_usage_id())
    }
    pub async fn keys_used_since(&self, since: i64) -> sqlx::Result<Vec<KeyUse>> {
        each!(self, keys_used_since(since))
    }
    pub async fn expiring(&self, now: i64, until: i64) -> sqlx::Result<Vec<(i64, i64, i64, i64)>> {
        each!(self, expiring(now, until))
    }
    pub async fn prune(&self, before_ms: i64) -> sqlx::Result<u64> {
        each!(self, prune(before_ms))
    }
}
