//! Persistence behind the `Store` trait: accounts, grants, keys and the usage ledger.
//! One implementation per database, chosen by the URL scheme.

mod admin;
pub(crate) mod counters;
mod credits_pg;
mod credits_sqlite;
mod deadline;
mod key_settings;
mod overflow;
mod postgres;
pub(crate) mod side_pool;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::billing::window::LimitReset;
use crate::billing::Credits;

pub use admin::{
    AdminStore, Cursor, GrantEntry, NewOperatorKey, OperatorKey, RequestFilter, RequestRow,
    StatusFilter,
};
pub use deadline::{deadline, Deadlined, CALL_DEADLINE};
pub use key_settings::DayCharge;
use overflow::{report_corrupt, DailyRow};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
#[cfg(test)]
pub(crate) use sqlite::{test_record, test_store_with_key};

/// An account's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub i64);

/// A key's id (both kinds share one sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub i64);

/// The two kinds of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Inference,
    Provisioning,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Inference => "inference",
            KeyKind::Provisioning => "provisioning",
        }
    }

    fn parse(text: &str) -> Option<KeyKind> {
        match text {
            "inference" => Some(KeyKind::Inference),
            "provisioning" => Some(KeyKind::Provisioning),
            _ => None,
        }
    }
}

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Ledger(#[from] rusqlite::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("cannot open database: {0}")]
    Open(String),
    #[error("grant refused: {0}")]
    Grant(GrantRefused),
    /// A database call that did not finish within its deadline (PostgreSQL).
    #[error("database call timed out after {0:?}")]
    Timeout(std::time::Duration),
}

/// Why the store refused a credit grant (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefused {
    /// No account with that id.
    #[error("no such account")]
    NoAccount,
    /// The account's grants would add up to more than [`Credits::MAX_AMOUNT`] (or below
    /// zero); `granted` is what they add up to now.
    #[error(
        "the account's grants would add up to more than {max} credits (they add up to {granted})",
        max = Credits::MAX_AMOUNT.to_decimal_string(0)
    )]
    OverMaximum { granted: Credits },
    /// A negative amount would take the balance below zero; `balance` is the balance now.
    #[error("it would take the balance of {balance} below zero")]
    Overdraw { balance: Credits },
}

/// Why the database cannot take writes right now (see [`StoreError::outage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The disk holding the database is full.
    DiskFull,
    /// The database cannot be reached, or a call to it timed out.
    Unreachable,
    /// The database reported an I/O error.
    Io,
}

impl Outage {
    /// A stable name, for `/readyz` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outage::DiskFull => "disk_full",
            Outage::Unreachable => "database_unreachable",
            Outage::Io => "io_error",
        }
    }
}

impl StoreError {
    /// Whether retrying may succeed (lost connection, busy or locked database, a
    /// serialization failure or deadlock), as opposed to a record the database refuses.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => matches!(
                    db.code().as_deref(),
                    // PostgreSQL: serialization failure, deadlock, shutdown, connection errors.
                    Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
                    // SQLite: busy, locked.
                    | Some("5" | "6" | "261" | "262" | "517")
                ),
                _ => false,
            },
            StoreError::Ledger(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }

    /// Whether this error means the database cannot serve anyone right now (full disk,
    /// lost connection, timeout), as opposed to contention (busy, locked, serialization)
    /// or a refusal of this one call.
    pub fn outage(&self) -> Option<Outage> {
        match self {
            StoreError::Timeout(_) => Some(Outage::Unreachable),
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_) => Some(Outage::Unreachable),
                sqlx::Error::Database(db) => match db.code().as_deref() {
                    // PostgreSQL: shutdown, connection errors, out of disk space.
                    Some("57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006") => {
                        Some(Outage::Unreachable)
                    }
                    Some("53100") => Some(Outage::DiskFull),
                    // SQLite: SQLITE_FULL, SQLITE_IOERR and its extended codes.
                    Some("13") => Some(Outage::DiskFull),
                    Some(code) if code.parse::<i32>().is_ok_and(|c| c & 0xff == 10) => {
                        Some(Outage::Io)
                    }
                    _ => None,
                },
                _ => None,
            },
            StoreError::Ledger(rusqlite::Error::SqliteFailure(e, _)) => match e.code {
                rusqlite::ErrorCode::DiskFull => Some(Outage::DiskFull),
                rusqlite::ErrorCode::SystemIoFailure => Some(Outage::Io),
                rusqlite::ErrorCode::CannotOpen => Some(Outage::Unreachable),
                _ => None,
            },
            _ => None,
        }
    }
}

/// An account with its running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub created_at: i64,
    /// Sum of all credit grants.
    pub granted: Credits,
    /// Sum of all charges in the usage ledger.
    pub charged: Credits,
    /// Sum of what expired grants left behind (see [`crate::credits`]).
    pub expired: Credits,
    /// The earliest expiry among grants with a remainder: when the balance may drop.
    pub next_expiry: Option<i64>,
}

impl Account {
    /// Grants minus charges minus expired remainders: what can be spent now (once due
    /// expiries are processed, see [`Store::settle_credits`]).
    pub fn balance(&self) -> Credits {
        self.granted
            .saturating_sub(self.charged)
            .saturating_sub(self.expired)
    }

    /// Grants minus expired remainders: what the meter may let the account spend.
    pub fn net_granted(&self) -> Credits {
        self.granted.saturating_sub(self.expired)
    }
}

/// A grant (or, with a negative amount, a correction) to append.
#[derive(Debug, Clone, Default)]
pub struct NewGrant {
    pub amount: Credits,
    pub note: Option<String>,
    /// When its remainder leaves the balance (unix seconds); `None`: never.
    pub expires_at: Option<i64>,
}

/// A row of `credit_grants` as `GET /v1/account/credits` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub amount: Credits,
    pub note: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Demand allocated to it so far (earliest expiry first).
    pub consumed: Credits,
    /// What left the balance at its expiry.
    pub expired: Credits,
}

impl Grant {
    /// What is left of it (zero for a correction that took credits away).
    pub fn remaining(&self) -> Credits {
        if self.amount > Credits::ZERO {
            self.amount
                .saturating_sub(self.consumed)
                .saturating_sub(self.expired)
        } else {
            Credits::ZERO
        }
    }
}

/// A key as stored: never the plaintext, only its hash and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub account_id: AccountId,
    pub kind: KeyKind,
    pub name: String,
    pub hint: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub is_enabled: bool,
    pub credit_limit: Option<Credits>,
    pub usage: Credits,
    pub last_used_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub rate_limit_rpm: Option<i64>,
    /// The window the credit limit resets in; `None`: a lifetime limit.
    pub limit_reset: Option<LimitReset>,
    /// The models the key may use; `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    /// Until when the secret before the last rotation still works.
    pub previous_key_expires_at: Option<i64>,
    /// Found by that previous secret (set by `key_by_hash` only).
    pub via_previous_secret: bool,
    /// A refused request is sent with the output limit the budget pays for instead.
    pub clamp_max_tokens: bool,
}

impl KeyRecord {
    /// Whether the key may use the model `id`.
    pub fn may_use(&self, id: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == id))
    }
}

/// What is needed to insert a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub account_id: AccountId,
    pub kind: KeyKind,
    pub name: String,
    pub key_hash: String,
    pub hint: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub credit_limit: Option<Credits>,
    pub rate_limit_rpm: Option<i64>,
    pub limit_reset: Option<LimitReset>,
    pub allowed_models: Option<Vec<String>>,
    pub clamp_max_tokens: bool,
}

/// A partial update: `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub is_enabled: Option<bool>,
    pub credit_limit: Option<Option<Credits>>,
    pub expires_at: Option<Option<i64>>,
    pub rate_limit_rpm: Option<Option<i64>>,
    pub limit_reset: Option<Option<LimitReset>>,
    pub allowed_models: Option<Option<Vec<String>>>,
    pub clamp_max_tokens: Option<bool>,
}

/// One metered request, the unit of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub request_id: String,
    pub account_id: AccountId,
    pub key_id: KeyId,
    pub model: String,
    pub endpoint: String,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Credits,
    pub status: i64,
    pub latency_ms: i64,
    pub created_at: i64,
    /// How the request was routed and measured.
    pub detail: UsageDetail,
}

/// What a usage record says beyond its charge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageDetail {
    /// The model the client asked for, when another one served it (a fallback).
    pub requested_model: Option<String>,
    /// The provider that served, or was tried last.
    pub provider: Option<String>,
    /// Upstream attempts made.
    pub attempts: i64,
    /// The usage was counted by the gateway: the provider reported none, or broke off.
    pub estimated: bool,
    /// What the provider reported beyond the reservation, not charged: the operator's loss.
    pub loss: Credits,
    /// In a cluster, the budget slice the request was served from (docs/cluster.md,
    /// "Budget leases"): the check of a budget sums a slice's records by it. Written to
    /// the ledger, not read back (reads leave it `None`).
    pub lease: Option<String>,
}

/// What one record adds to its row of the daily roll-up: requests, cost, input tokens,
/// output tokens, estimated requests, fallback requests.
pub(crate) fn daily_counts(r: &UsageRecord) -> [i64; 6] {
    [
        1,
        r.cost.nanos(),
        r.input_tokens,
        r.output_tokens,
        i64::from(r.detail.estimated),
        i64::from(r.detail.requested_model.is_some()),
    ]
}

/// The sums of one group of the daily roll-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: i64,
    pub cost: Credits,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Requests charged for usage the gateway counted (not per key: 0 there).
    pub estimated_requests: i64,
    /// Requests served by a model other than the one asked for (not per key: 0 there).
    pub fallback_requests: i64,
}

impl UsageTotals {
    /// Both sums, each held at the 64-bit limits instead of overflowing.
    pub fn saturating_add(&self, other: &UsageTotals) -> UsageTotals {
        UsageTotals {
            requests: self.requests.saturating_add(other.requests),
            cost: self.cost.saturating_add(other.cost),
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            estimated_requests: self
                .estimated_requests
                .saturating_add(other.estimated_requests),
            fallback_requests: self
                .fallback_requests
                .saturating_add(other.fallback_requests),
        }
    }
}

/// An account's daily roll-up over a period, grouped three ways by the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityRollup {
    /// Per day (YYYY-MM-DD), oldest first; only days with usage.
    pub days: Vec<(String, UsageTotals)>,
    /// Per model, most expensive first, ties by name (byte order).
    pub models: Vec<(String, UsageTotals)>,
    /// Per key with its current name, most expensive first, ties by id. A deleted key
    /// keeps its name; a key without a row in `api_keys` has an empty one.
    pub keys: Vec<(KeyId, String, UsageTotals)>,
}

impl ActivityRollup {
    /// Files one row of a store's activity query, in the order the query returns them:
    /// `grouping` is 0 for a day, 1 for a model and 2 for a key (`label` is then its name).
    fn push(
        &mut self,
        grouping: i64,
        label: String,
        key_id: Option<i64>,
        totals: UsageTotals,
    ) -> Result<(), StoreError> {
        match (grouping, key_id) {
            (0, _) => self.days.push((label, totals)),
            (1, _) => self.models.push((label, totals)),
            (2, Some(id)) => self.keys.push((KeyId(id), label, totals)),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "activity row of grouping {grouping}, key {key_id:?}"
                )))
            }
        }
        Ok(())
    }

    /// Whether the keys add up to the days, in requests, cost and tokens. They do when both
    /// were read from one snapshot; of two snapshots, the later one holds more requests if
    /// the account used anything in between.
    fn keys_add_up_to_days(&self) -> bool {
        fn sum<'a>(groups: impl Iterator<Item = &'a UsageTotals>) -> [i128; 4] {
            groups.fold([0; 4], |s, t| {
                [
                    s[0] + i128::from(t.requests),
                    s[1] + i128::from(t.cost.nanos()),
                    s[2] + i128::from(t.input_tokens),
                    s[3] + i128::from(t.output_tokens),
                ]
            })
        }
        sum(self.days.iter().map(|(_, t)| t)) == sum(self.keys.iter().map(|(_, _, t)| t))
    }
}

/// The usage writer's own ledger connection (see [`Store::own_ledger`]).
#[async_trait]
pub trait OwnLedger: Send {
    /// As [`Store::record_usage`].
    async fn record_usage(&mut self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError>;
}

/// The persistence operations the rest of the program needs.
#[async_trait]
pub trait Store: AdminStore + Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_account(&self, name: &str, now: i64) -> Result<Account, StoreError>;
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;
    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError>;
    async fn account_by_name(&self, name: &str) -> Result<Option<Account>, StoreError>;
    /// Appends a grant and returns its id. A negative amount is a correction. Refused
    /// ([`StoreError::Grant`], nothing written) when the account's grants would add up to
    /// more than [`Credits::MAX_AMOUNT`] or below zero, or a correction would take the
    /// balance (grants minus the ledger's charges) below zero. Checked and written in
    /// one step, so two corrections at once cannot both pass.
    async fn grant_credits(
        &self,
        account: AccountId,
        amount: Credits,
        note: Option<&str>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let grant = NewGrant {
            amount,
            note: note.map(str::to_string),
            expires_at: None,
        };
        self.add_grant(account, &grant, now).await
    }
    /// Appends a grant, which may expire, or a correction (see `grant_credits`), after
    /// allocating the account's pending charges to the grants it had (src/credits.rs).
    /// A correction's check leaves out grants already due at `now`. Returns its id.
    async fn add_grant(
        &self,
        account: AccountId,
        grant: &NewGrant,
        now: i64,
    ) -> Result<i64, StoreError>;
    /// Allocates the account's pending charges to its grants, earliest expiry first,
    /// then expires the grants due at `now`, keeping up to `in_flight` (what requests in
    /// flight hold) for them. One transaction; returns the account as it now stands.
    async fn settle_credits(
        &self,
        account: AccountId,
        now: i64,
        in_flight: Credits,
    ) -> Result<Option<Account>, StoreError>;
    /// The account's grants and corrections, newest first, after allocating its pending
    /// charges (so each grant's remainder is current).
    async fn credit_grants(&self, account: AccountId) -> Result<Vec<Grant>, StoreError>;

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError>;
    /// Live (not deleted) keys of one kind of an account, oldest first.
    async fn list_keys(
        &self,
        account: AccountId,
        kind: KeyKind,
    ) -> Result<Vec<KeyRecord>, StoreError>;
    /// A live key of the account, or `None` (also for another account's key).
    async fn get_key(
        &self,
        account: AccountId,
        kind: KeyKind,
        id: KeyId,
    ) -> Result<Option<KeyRecord>, StoreError>;
    async fn update_key(
        &self,
        account: AccountId,
        id: KeyId,
        patch: &KeyPatch,
        now: i64,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// Marks a live key deleted; `account` restricts it to one account when given.
    async fn delete_key(
        &self,
        account: Option<AccountId>,
        kind: KeyKind,
        id: KeyId,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Per-day charges of the account's keys (or of `key` only) from `since_day`
    /// (YYYY-MM-DD) on, from the daily roll-up: what window usages are summed from.
    async fn day_charges(
        &self,
        account: AccountId,
        key: Option<KeyId>,
        since_day: &str,
    ) -> Result<Vec<DayCharge>, StoreError>;
    /// Any key, deleted ones included, by the hash of its secret, or of its secret before
    /// its last rotation (then `via_previous_secret` is set).
    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Gives a live inference key of the account a new secret (`hash`, `hint`); the one it
    /// replaces keeps working until `previous_until` (none: it stops at once). A secret
    /// from an earlier rotation stops at once.
    async fn rotate_key(
        &self,
        account: AccountId,
        id: KeyId,
        hash: &str,
        hint: &str,
        previous_until: Option<i64>,
        now: i64,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Appends usage records in one transaction. A record whose request id is already
    /// in the ledger is skipped, so a retried batch charges nothing twice.
    /// Returns, per record, whether it was newly written.
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError>;
    /// `record_usage` on a thread that may block (the usage writer's). A store whose
    /// ledger connection is synchronous writes on the calling thread, without handing
    /// the batch to another thread and back; others run `record_usage` on `rt`.
    fn record_usage_blocking(
        &self,
        rt: &tokio::runtime::Handle,
        batch: &[UsageRecord],
    ) -> Result<Vec<bool>, StoreError> {
        rt.block_on(self.record_usage(batch))
    }
    /// A ledger connection of the usage writer's own, for stores over the network: the
    /// writer uses it on a runtime of its own thread (it connects there), so a
    /// commit's reply wakes the writer directly instead of passing through the main
    /// runtime's I/O driver and a worker thread (docs/cluster.md, "Sixth look"). `None`:
    /// the writer commits with [`Store::record_usage_blocking`].
    fn own_ledger(&self) -> Option<Box<dyn OwnLedger>> {
        None
    }
    /// The ledger file whose usage journal (see [`crate::usage::Journal`]) may stand in
    /// for a commit while a response waits: SQLite's database file, on this machine.
    /// `None` (PostgreSQL, or SQLite in memory) makes every response wait for its commit.
    fn usage_journal_ledger(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// An account's daily roll-up from `since_day` (YYYY-MM-DD) on, grouped per day, per
    /// model and per key (orders in [`ActivityRollup`]).
    async fn activity(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<ActivityRollup, StoreError>;
    /// A usage record by request id.
    async fn usage_record(&self, request_id: &str) -> Result<Option<UsageRecord>, StoreError>;
}

/// The UTC day (YYYY-MM-DD) of a unix time.
pub(crate) fn day_of(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "1970-01-01".to_string())
}

/// Opens the store named by a database URL and applies migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(url).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = Deadlined(PgStore::open(url).await?);
        store.migrate().await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::Open(format!(
            "unsupported database URL scheme in '{}'",
            url.split(':').next().unwrap_or("")
        )))
    }
}

/// The migrator of a store: a database that holds migrations this release does not
/// know (a newer release ran them) is accepted, so a release can be rolled back, or run
/// beside its successor during a rolling upgrade. Each migration keeps what the previous
/// release uses (migration 0014 keeps 0013's usage function).
pub(crate) fn migrator(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}
