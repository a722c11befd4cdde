//! Alerts by webhook: events about an account (a key's usage crossing 50/80/100 % of its
//! limit, the balance falling below a webhook's `low_balance`, credits expiring within
//! 7 days) are posted, signed, to the account holder's webhooks and the operator's.
//!
//! Everything happens off the request path: `events` scans the ledger each second and
//! notes each event once in the database (by a de-duplication id, so several replicas
//! emit it once), one delivery row per receiver; `deliver` sends due rows with a bounded
//! number in flight, retries with backoff, and keeps the outcome as the delivery log.
//! A slow or dead receiver holds one of those slots until its timeout, never a model
//! request. docs/webhooks.md shows how a receiver verifies a signature.

mod db;
mod deliver;
mod events;
mod sql_types;
pub mod target;

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};

use crate::billing::Credits;
use crate::clock::Clock;
use crate::config::WebhookPolicy;
use crate::store::{AccountId, Store};

pub use deliver::{sign, SIGNATURE_HEADER};
pub use events::KeyWindow;
pub use sql_types::{DeliveryRow, Due, HookRow, KeyUse};
pub use target::TargetError;

/// Webhooks an account may have.
pub const MAX_PER_ACCOUNT: usize = 20;
/// Deliveries in flight at once, per replica.
pub const MAX_IN_FLIGHT: usize = 16;

/// Why a webhook was not created (or not found).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("an account may have at most {MAX_PER_ACCOUNT} webhooks")]
    TooMany,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The webhooks of this process.
pub struct Webhooks {
    db: db::Db,
    store: Arc<dyn Store>,
    policy: WebhookPolicy,
    wake: Notify,
    slots: Arc<Semaphore>,
    clients: deliver::Clients,
    /// The time that places a key's usage in its budget window (the gateway's clock).
    clock: Clock,
}

impl Webhooks {
    /// Webhooks over the store's database (`database_url`), already migrated.
    pub fn new(
        database_url: &str,
        store: Arc<dyn Store>,
        policy: WebhookPolicy,
    ) -> Result<Self, sqlx::Error> {
        Ok(Webhooks {
            db: db::Db::open(database_url)?,
            store,
            clients: deliver::Clients::new(policy.allow_private_targets),
            policy,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            clock: Clock::system(),
        })
    }

    /// The same webhooks counting key windows on `clock` (the gateway's own).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Creates an account holder's webhook after checking where it points.
    pub async fn create(
        &self,
        account: AccountId,
        url: &str,
        secret: &str,
        low_balance: Option<Credits>,
    ) -> Result<HookRow, WebhookError> {
        target::check(url, self.policy.allow_private_targets).await?;
        if self.db.hooks(Some(account.0)).await?.len() >= MAX_PER_ACCOUNT {
            return Err(WebhookError::TooMany);
        }
        let now = crate::now();
        let low = low_balance.map(Credits::nanos);
        let id = self.db.create(account.0, url, secret, low, now).await?;
        Ok(HookRow {
            id,
            account_id: account.0,
            url: url.to_string(),
            secret: secret.to_string(),
            low_balance: low,
            created_at: now,
            deleted: false,
        })
    }

    /// The account's live webhooks, oldest first.
    pub async fn list(&self, account: AccountId) -> Result<Vec<HookRow>, WebhookError> {
        Ok(self.db.hooks(Some(account.0)).await?)
    }

    /// Deletes one of the account's webhooks; its pending deliveries then fail.
    pub async fn delete(&self, account: AccountId, id: i64) -> Result<bool, WebhookError> {
        Ok(self.db.delete(account.0, id, crate::now()).await?)
    }

    /// The delivery log of one of the account's webhooks (deleted ones too), newest
    /// first; `None` if the account has no such webhook.
    pub async fn deliveries(
        &self,
        account: AccountId,
        id: i64,
        limit: i64,
    ) -> Result<Option<Vec<DeliveryRow>>, WebhookError> {
        match self.db.hook_by_id(id).await? {
            Some(hook) if hook.account_id == account.0 => {
                Ok(Some(self.db.deliveries(id, limit).await?))
            }
            _ => Ok(None),
        }
    }

    /// Emits an event once per `dedup` id: a delivery to each of the account's webhooks
    /// (or only `only`) and to each operator webhook. Returns whether it was new.
    pub async fn emit(
        &self,
        account: AccountId,
        kind: &str,
        data: Value,
        dedup: &str,
        only: Option<i64>,
    ) -> Result<bool, WebhookError> {
        let now = crate::now();
        let mut receivers: Vec<(Option<i64>, Option<i64>)> = self
            .db
            .hooks(Some(account.0))
            .await?
            .iter()
            .filter(|hook| only.is_none_or(|o| o == hook.id))
            .map(|hook| (Some(hook.id), None))
            .collect();
        receivers.extend((0..self.policy.operator.len()).map(|i| (None, Some(i as i64))));
        let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
        let payload = json!({
            "id": id,
            "type": kind,
            "created_at": crate::rfc3339(now),
            "account_id": account.0,
            "data": data,
        })
        .to_string();
        let new = self
            .db
            .emit(
                account.0,
                dedup,
                now,
                &receivers,
                &id,
                kind,
                &payload,
                now_ms(),
            )
            .await?;
        if new {
            self.wake.notify_one();
        }
        Ok(new)
    }

    /// Re-arms an event: the next time its condition holds, it is emitted again.
    pub async fn rearm(&self, account: AccountId, dedup: &str) -> Result<(), WebhookError> {
        Ok(self.db.forget_event(account.0, dedup).await?)
    }
}

/// The current unix time in milliseconds.
fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}
