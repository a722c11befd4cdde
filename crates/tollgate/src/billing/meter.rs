//! The meter: reserve the worst-case cost before an upstream call, settle the actual
//! cost after it and release the rest, so no key's credit limit and no account's
//! balance is ever exceeded, however many requests race for the last cent.
//!
//! On one machine (`LocalBudgets`) the meter's in-memory state is the authority for
//! charges (every charge of the database goes through it), loaded lazily from the store;
//! credit grants, which the operator's command line writes directly to the database, are
//! re-read every second. With several replicas the budgets live in Redis
//! (`cluster::SharedBudgets`); there a request's charge is committed to the ledger
//! before the shared budget is settled (`Meter::settle_and_record`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::window::{self, LimitReset, Tallies, Window, WindowUsage};
use super::Credits;
use crate::clock::Clock;
use crate::store::{AccountId, KeyId, KeyKind, KeyRecord, Store, StoreError};
use crate::usage::LedgerError;

/// Which budget refused a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaError {
    /// The key's `credit_limit` would be exceeded.
    KeyLimit {
        limit: Credits,
        remaining: Credits,
        needed: Credits,
        /// When the limit starts again (a limit with `limit_reset`).
        resets_at: Option<i64>,
    },
    /// The account's balance would be exceeded.
    Balance { remaining: Credits, needed: Credits },
}

impl std::fmt::Display for QuotaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaError::KeyLimit {
                limit,
                remaining,
                needed,
                resets_at: None,
            } => write!(
                f,
                "This request could cost up to {needed} credits, but the key's credit limit of {limit} has {remaining} left (in-flight requests included). Raise credit_limit with PATCH /v1/account/keys/{{id}}, or lower max_tokens."
            ),
            QuotaError::KeyLimit {
                limit,
                remaining,
                needed,
                resets_at: Some(at),
            } => write!(
                f,
                "This request could cost up to {needed} credits, but the key's credit limit of {limit} has {remaining} left in this window (in-flight requests included); it resets at {}. Raise credit_limit with PATCH /v1/account/keys/{{id}}, or lower max_tokens.",
                crate::rfc3339(*at)
            ),
            QuotaError::Balance { remaining, needed } => write!(
                f,
                "This request could cost up to {needed} credits, but the account balance has {remaining} available (in-flight requests included). Add credits, or lower max_tokens."
            ),
        }
    }
}

/// Failure of a reservation.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("{0}")]
    Quota(QuotaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared budget store cannot be reached: refuse rather than overspend.
    #[error("metering unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug)]
struct KeyBudget {
    usage: i64,
    limit: Option<i64>,
    reserved: i64,
    reset: Option<LimitReset>,
    /// Charged and reserved per day, week and month.
    tallies: Tallies,
}

impl KeyBudget {
    fn new(key: &KeyRecord, at: i64, windows: WindowUsage) -> KeyBudget {
        KeyBudget {
            usage: key.usage.nanos(),
            limit: key.credit_limit.map(Credits::nanos),
            reserved: 0,
            reset: key.limit_reset,
            tallies: Tallies::new(at, windows),
        }
    }
}

#[derive(Debug)]
struct AccountBudget {
    granted: i64,
    charged: i64,
    reserved: i64,
    keys: HashMap<KeyId, KeyBudget>,
}

/// The single-machine budgets.
pub struct LocalBudgets {
    store: Arc<dyn Store>,
    clock: Clock,
    accounts: Mutex<HashMap<AccountId, AccountBudget>>,
}

/// Money held for one request until it is settled or released.
#[derive(Debug)]
pub struct Reservation {
    /// The request id.
    pub id: String,
    pub account: AccountId,
    pub key: KeyId,
    pub amount: Credits,
    /// When it was made (by the budget clock): its charge belongs to the windows holding
    /// this time, even when the request ends in the next one.
    pub at: i64,
    /// The window of the key's limit it is held in; `None` for a lifetime limit.
    pub window: Option<Window>,
    /// In a cluster, the budget slice it was taken from (instead of Redis).
    pub lease: Option<std::sync::Arc<crate::cluster::Slice>>,
}

impl Reservation {
    /// The id of the budget slice it was taken from, if any.
    pub fn lease_id(&self) -> Option<String> {
        self.lease.as_ref().map(|s| s.id().to_string())
    }
}

impl LocalBudgets {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Self {
        LocalBudgets {
            store,
            clock,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, AccountBudget>> {
        // A panic while holding this lock cannot leave a half-updated budget (every
        // update is a few integer additions), so a poisoned lock is still usable.
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's usage in the windows holding `at`, from the ledger.
    async fn window_usage(&self, key: &KeyRecord, at: i64) -> Result<WindowUsage, StoreError> {
        let days = self
            .store
            .day_charges(key.account_id, Some(key.id), &window::earliest_start(at))
            .await?;
        Ok(WindowUsage::from_days(
            at,
            days.iter().map(|d| (d.day.as_str(), d.cost)),
        ))
    }

    async fn ensure_loaded(&self, key: &KeyRecord, at: i64) -> Result<(), StoreError> {
        let loaded = {
            let accounts = self.lock();
            accounts
                .get(&key.account_id)
                .map(|a| a.keys.contains_key(&key.id))
        };
        match loaded {
            Some(true) => Ok(()),
            Some(false) => {
                let fresh = self
                    .store
                    .get_key(key.account_id, KeyKind::Inference, key.id)
                    .await?;
                let windows = self.window_usage(key, at).await?;
                let mut accounts = self.lock();
                if let (Some(account), Some(fresh)) = (accounts.get_mut(&key.account_id), fresh) {
                    account
                        .keys
                        .entry(key.id)
                        .or_insert_with(|| KeyBudget::new(&fresh, at, windows));
                }
                Ok(())
            }
            None => {
                let account = self.store.account(key.account_id).await?;
                let fresh = self
                    .store
                    .get_key(key.account_id, KeyKind::Inference, key.id)
                    .await?;
                let windows = self.window_usage(key, at).await?;
                let mut accounts = self.lock();
                if let Some(account) = account {
                    let entry = accounts.entry(key.account_id).or_insert(AccountBudget {
                        granted: account.net_granted().nanos(),
                        charged: account.charged.nanos(),
                        reserved: 0,
                        keys: HashMap::new(),
                    });
                    if let Some(fresh) = fresh {
                        entry
                            .keys
                            .entry(key.id)
                            .or_insert_with(|| KeyBudget::new(&fresh, at, windows));
                    }
                }
                Ok(())
            }
        }
    }

    /// Holds `amount` against the key's limit and the account's balance, or refuses.
    pub async fn reserve(
        &self,
        key: &KeyRecord,
        amount: Credits,
        id: &str,
    ) -> Result<Reservation, ReserveError> {
        let at = self.clock.now();
        self.ensure_loaded(key, at).await?;
        let mut accounts = self.lock();
        let Some(account) = accounts.get_mut(&key.account_id) else {
            return Err(StoreError::Corrupt("account of a live key is missing".into()).into());
        };
        let available = account.granted - account.charged - account.reserved;
        let Some(budget) = account.keys.get_mut(&key.id) else {
            return Err(StoreError::Corrupt("key vanished while loading".into()).into());
        };
        let needed = amount.nanos();
        if let Some(limit) = budget.limit {
            let (used, reserved) = match budget.reset {
                None => (budget.usage, budget.reserved),
                Some(reset) => {
                    let tally = budget.tallies.current(reset, at);
                    (tally.used, tally.reserved)
                }
            };
            let remaining = limit - used - reserved;
            if needed > remaining {
                return Err(ReserveError::Quota(QuotaError::KeyLimit {
                    limit: Credits::from_nanos(limit),
                    remaining: Credits::from_nanos(remaining.max(0)),
                    needed: amount,
                    resets_at: budget.reset.map(|r| r.window_at(at).resets_at()),
                }));
            }
        }
        if needed > available {
            return Err(ReserveError::Quota(QuotaError::Balance {
                remaining: Credits::from_nanos(available.max(0)),
                needed: amount,
            }));
        }
        budget.reserved += needed;
        budget.tallies.reserve(at, needed);
        account.reserved += needed;
        Ok(Reservation {
            id: id.to_string(),
            account: key.account_id,
            key: key.id,
            amount,
            at,
            window: budget.reset.map(|r| r.window_at(at)),
            lease: None,
        })
    }

    /// Replaces the reservation by the actual cost (which the caller then records).
    pub fn settle(&self, reservation: Reservation, cost: Credits) {
        let mut accounts = self.lock();
        if let Some(account) = accounts.get_mut(&reservation.account) {
            account.reserved -= reservation.amount.nanos();
            account.charged += cost.nanos();
            if let Some(budget) = account.keys.get_mut(&reservation.key) {
                budget.reserved -= reservation.amount.nanos();
                budget.usage += cost.nanos();
                budget
                    .tallies
                    .settle(reservation.at, reservation.amount.nanos(), cost.nanos());
            }
        }
    }

    /// Follows a key's new limit (after a PATCH).
    pub fn key_changed(&self, key: &KeyRecord) {
        let mut accounts = self.lock();
        if let Some(budget) = accounts
            .get_mut(&key.account_id)
            .and_then(|a| a.keys.get_mut(&key.id))
        {
            budget.limit = key.credit_limit.map(Credits::nanos);
            budget.reset = key.limit_reset;
        }
    }

    /// Processes the expiries that are due on every account (what requests in flight hold
    /// is kept for them, see `crate::credits`) and re-reads the grants of loaded ones.
    pub async fn refresh_grants(&self) -> Result<(), StoreError> {
        let now = crate::now();
        for account in self.store.list_accounts().await? {
            // An account not loaded here has nothing in flight (a reservation loads it):
            // its due expiries are processed too, so its balance drops on time.
            let reserved = self.reserved(account.id);
            let account = match account.next_expiry {
                Some(due) if due <= now => {
                    let in_flight = Credits::from_nanos(reserved.unwrap_or(0));
                    match self
                        .store
                        .settle_credits(account.id, now, in_flight)
                        .await?
                    {
                        Some(settled) => settled,
                        None => continue,
                    }
                }
                _ => account,
            };
            self.set_granted(&account);
        }
        Ok(())
    }

    /// What the account's requests in flight hold, if its budget is loaded.
    fn reserved(&self, account: AccountId) -> Option<i64> {
        self.lock().get(&account).map(|a| a.reserved)
    }

    fn set_granted(&self, account: &crate::store::Account) {
        if let Some(budget) = self.lock().get_mut(&account.id) {
            budget.granted = account.net_granted().nanos();
        }
    }

    /// Processes the account's due expiries now and follows the result.
    pub async fn settle_credits(
        &self,
        account: AccountId,
    ) -> Result<Option<crate::store::Account>, StoreError> {
        let in_flight = Credits::from_nanos(self.reserved(account).unwrap_or(0));
        let settled = self
            .store
            .settle_credits(account, crate::now(), in_flight)
            .await?;
        if let Some(settled) = &settled {
            self.set_granted(settled);
        }
        Ok(settled)
    }

    /// Forgets a deleted key.
    pub fn key_deleted(&self, account: AccountId, id: KeyId) {
        if let Some(a) = self.lock().get_mut(&account) {
            a.keys.remove(&id);
        }
    }

    /// What a key has in flight and spent (for tests and diagnostics).
    pub fn key_state(&self, account: AccountId, key: KeyId) -> Option<(Credits, Credits)> {
        let accounts = self.lock();
        accounts
            .get(&account)
            .and_then(|a| a.keys.get(&key))
            .map(|k| {
                (
                    Credits::from_nanos(k.usage),
                    Credits::from_nanos(k.reserved),
                )
            })
    }
}

/// The meter of this process: local budgets on one machine, shared ones in a cluster.
pub enum Meter {
    Local(LocalBudgets),
    Shared(Box<crate::cluster::SharedBudgets>),
}

impl Meter {
    /// Holds `amount` for request `id` against the key's limit and the account's balance.
    pub async fn reserve(
        &self,
        key: &KeyRecord,
        amount: Credits,
        id: &str,
    ) -> Result<Reservation, ReserveError> {
        match self {
            Meter::Local(m) => m.reserve(key, amount, id).await,
            Meter::Shared(m) => m.reserve(key, amount, id).await,
        }
    }

    /// Replaces a reservation by the actual cost.
    pub async fn settle(&self, reservation: Reservation, cost: Credits) {
        match self {
            Meter::Local(m) => m.settle(reservation, cost),
            Meter::Shared(m) => m.settle(reservation, cost).await,
        }
    }

    /// Settles a request at `cost` and commits its usage record (`commit`), and
    /// waits for both. On one machine the budget is settled first, then the record
    /// committed, as a single machine's budgets are the authority. In a cluster the
    /// record is committed first, then the shared budget settled (Redis never counts a
    /// charge the ledger lacks; until the settle, the reservation still holds the cost),
    /// in a task of its own, so that a caller that goes away between the two cannot
    /// leave one without the other (see docs/cluster.md).
    pub async fn settle_and_record<F>(
        self: &Arc<Self>,
        reservation: Option<Reservation>,
        cost: Credits,
        commit: Option<F>,
    ) -> Result<(), LedgerError>
    where
        F: std::future::Future<Output = Result<(), LedgerError>> + Send + 'static,
    {
        match &**self {
            Meter::Local(m) => {
                if let Some(reservation) = reservation {
                    m.settle(reservation, cost);
                }
                match commit {
                    Some(commit) => commit.await,
                    None => Ok(()),
                }
            }
            Meter::Shared(_) => {
                let meter = self.clone();
                let both = tokio::spawn(async move {
                    let committed = match commit {
                        Some(commit) => commit.await,
                        None => Ok(()),
                    };
                    if let Some(reservation) = reservation {
                        if committed.is_ok() {
                            meter.settle(reservation, cost).await;
                        } else if matches!(&*meter, Meter::Shared(_)) {
                            // Not committed in time (the ledger is stuck): the record
                            // stays queued, and its reservation holds the cost until
                            // the record is in the ledger; then it is settled.
                            let meter = meter.clone();
                            tokio::spawn(async move {
                                if let Meter::Shared(shared) = &*meter {
                                    shared.settle_when_recorded(reservation, cost).await;
                                }
                            });
                        }
                    }
                    committed
                });
                match both.await {
                    Ok(committed) => committed,
                    Err(e) => {
                        tracing::error!(error = %e, "settling a request failed");
                        Ok(())
                    }
                }
            }
        }
    }

    /// Gives a reservation back from a place that cannot wait.
    pub fn release_detached(self: &Arc<Self>, reservation: Reservation) {
        match &**self {
            Meter::Local(m) => m.settle(reservation, Credits::ZERO),
            Meter::Shared(_) => {
                let meter = self.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move { meter.settle(reservation, Credits::ZERO).await });
                }
            }
        }
    }

    /// Follows a key's new settings.
    pub async fn key_changed(&self, key: &KeyRecord) {
        match self {
            Meter::Local(m) => m.key_changed(key),
            Meter::Shared(m) => {
                if let Err(e) = m.key_changed(key).await {
                    tracing::error!(error = %e, "could not update a key's shared budget");
                }
            }
        }
    }

    /// Forgets a deleted key.
    pub async fn key_deleted(&self, account: AccountId, id: KeyId) {
        match self {
            Meter::Local(m) => m.key_deleted(account, id),
            Meter::Shared(m) => {
                if let Err(e) = m.key_deleted(id).await {
                    tracing::error!(error = %e, "could not drop a key's shared budget");
                }
            }
        }
    }

    /// Processes the account's due credit expiries (keeping what its requests in flight
    /// hold) and follows the result; answers the account as it now stands.
    pub async fn settle_credits(
        &self,
        account: AccountId,
    ) -> Result<Option<crate::store::Account>, ReserveError> {
        match self {
            Meter::Local(m) => Ok(m.settle_credits(account).await?),
            Meter::Shared(m) => m.settle_credits(account).await,
        }
    }

    /// Re-reads credit grants from the database.
    pub async fn refresh_grants(&self) -> Result<(), ReserveError> {
        match self {
            Meter::Local(m) => Ok(m.refresh_grants().await?),
            Meter::Shared(m) => m.refresh_grants().await,
        }
    }
}
