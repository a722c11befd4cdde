//! The names of the shared budgets' Redis keys. Every budget key carries the epoch of
//! Redis's data it belongs to (`tg2:<epoch>:...`), so data that outlived its epoch (a
//! restore of an old snapshot) is never read as current.

use crate::billing::window::Window;
use crate::store::{AccountId, KeyId};

/// Prefix of the budget layout.
pub const BUDGET_PREFIX: &str = "tg2";
/// The epoch marker: the id of the current epoch.
pub const EPOCH_KEY: &str = "tg2:epoch";

/// The Redis key of a budget item of `epoch`, for tests and diagnostics: `kind` is `a`
/// (account hash), `k` (key hash), `r` (leases), `rd` (reservation data), `m` (markers),
/// `sa` (the running sync) or `sl` (its log).
pub fn budget_key(epoch: &str, kind: &str, id: i64) -> String {
    format!("{BUDGET_PREFIX}:{epoch}:{kind}:{id}")
}

/// The name of a key's budget in the scripts: its id, and for a limit that resets, the
/// window (`17@d2027-01-31`). The window is part of the budget's identity: a new window
/// is a new budget, loaded from the ledger, and nothing resets a counter at midnight.
pub fn budget_name(key: KeyId, window: Option<&Window>) -> String {
    match window {
        None => key.0.to_string(),
        Some(w) => format!("{}@{}", key.0, w.tag()),
    }
}

/// The key that exists while `epoch`'s grace window runs (no budget is loaded then).
pub fn grace_key(epoch: &str) -> String {
    format!("{BUDGET_PREFIX}:{epoch}:grace")
}

/// The key names of one epoch.
pub(super) struct Names {
    prefix: String,
}

impl Names {
    pub fn new(epoch: &str) -> Names {
        Names {
            prefix: format!("{BUDGET_PREFIX}:{epoch}:"),
        }
    }

    /// `tg2:<epoch>:`, which the scripts extend with `a:<account>` and so on.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `tg2:<epoch>:k:`, which the scripts extend with a key id.
    pub fn key_prefix(&self) -> String {
        format!("{}k:", self.prefix)
    }

    /// The epoch's write counter, the first key of every budget script.
    pub fn counter(&self) -> String {
        format!("{}seq", self.prefix)
    }

    pub fn account(&self, id: AccountId) -> String {
        format!("{}a:{}", self.prefix, id.0)
    }

    pub fn key(&self, id: KeyId) -> String {
        format!("{}k:{}", self.prefix, id.0)
    }

    /// The hash of a key's budget by its name (see [`budget_name`]).
    pub fn budget(&self, name: &str) -> String {
        format!("{}k:{}", self.prefix, name)
    }

    /// Leases of live reservations (zset: id -> expiry).
    pub fn leases(&self, id: AccountId) -> String {
        format!("{}r:{}", self.prefix, id.0)
    }

    /// Reservation data and markers (hash: id -> "<state> <key> <amount>").
    pub fn data(&self, id: AccountId) -> String {
        format!("{}rd:{}", self.prefix, id.0)
    }

    /// Expiries of markers (zset: id -> expiry).
    pub fn markers(&self, id: AccountId) -> String {
        format!("{}m:{}", self.prefix, id.0)
    }

    /// The running sync of the account: its id, expiring with its window.
    pub fn sync_flag(&self, id: AccountId) -> String {
        format!("{}sa:{}", self.prefix, id.0)
    }

    /// Settles logged while a sync of the account runs (hash: id -> "<key> <cost>").
    pub fn sync_log(&self, id: AccountId) -> String {
        format!("{}sl:{}", self.prefix, id.0)
    }
}
