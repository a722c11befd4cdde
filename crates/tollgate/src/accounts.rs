//! Accounts, keys and credit grants: the operations behind `/v1/account/*` and the CLI.

use std::sync::Arc;

use crate::auth::{self, Authenticator};
use crate::billing::Credits;
use crate::store::{
    Account, AccountId, ActivityRollup, KeyId, KeyKind, KeyPatch, KeyRecord, NewKey, Store,
    StoreError,
};

/// Totals of one group of usage.
pub use crate::store::UsageTotals as Totals;

/// A new inference key as asked for by `POST /v1/account/keys`.
#[derive(Debug, Clone, Default)]
pub struct NewInferenceKey {
    pub name: String,
    pub credit_limit: Option<Credits>,
    pub expires_at: Option<i64>,
    pub rate_limit_rpm: Option<i64>,
    pub clamp_max_tokens: bool,
}

/// Why credits were not granted or adjusted.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("a grant must be more than zero; a correction is an adjustment with a note (`tollgate credits adjust ACCOUNT AMOUNT --note TEXT`)")]
    NotPositive,
    #[error("an adjustment must not be zero")]
    Zero,
    #[error("an adjustment needs a note saying why")]
    NoNote,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The account service.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    auth: Authenticator,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, auth: Authenticator) -> Self {
        Accounts { store, auth }
    }

    /// Creates an inference key; returns it with its plaintext (shown once).
    pub async fn create_inference_key(
        &self,
        account: AccountId,
        new: NewInferenceKey,
    ) -> Result<(KeyRecord, String), StoreError> {
        self.create_key(account, KeyKind::Inference, new).await
    }

    /// Creates a provisioning key for an account (operator command line).
    pub async fn create_provisioning_key(
        &self,
        account: AccountId,
        name: &str,
    ) -> Result<(KeyRecord, String), StoreError> {
        let new = NewInferenceKey {
            name: name.to_string(),
            ..NewInferenceKey::default()
        };
        self.create_key(account, KeyKind::Provisioning, new).await
    }

    async fn create_key(
        &self,
        account: AccountId,
        kind: KeyKind,
        new: NewInferenceKey,
    ) -> Result<(KeyRecord, String), StoreError> {
        let minted = auth::mint(kind);
        let record = self
            .store
            .create_key(NewKey {
                account_id: account,
                kind,
                name: new.name,
                key_hash: minted.hash,
                hint: minted.hint,
                created_at: crate::now(),
                expires_at: new.expires_at,
                credit_limit: new.credit_limit,
                rate_limit_rpm: new.rate_limit_rpm,
                clamp_max_tokens: new.clamp_max_tokens,
            })
            .await?;
        Ok((record, minted.plaintext))
    }

    pub async fn list_keys(
        &self,
        account: AccountId,
        kind: KeyKind,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.store.list_keys(account, kind).await
    }

    pub async fn get_key(
        &self,
        account: AccountId,
        id: KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.store.get_key(account, KeyKind::Inference, id).await
    }

    /// Applies a patch; the change is seen by this process's next request at once.
    pub async fn update_key(
        &self,
        account: AccountId,
        id: KeyId,
        patch: &KeyPatch,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let updated = self
            .store
            .update_key(account, id, patch, crate::now())
            .await?;
        if let Some(key) = &updated {
            self.auth.refresh(key);
        }
        Ok(updated)
    }

    /// Deletes an inference key of the account; it stops working at once.
    pub async fn delete_key(&self, account: AccountId, id: KeyId) -> Result<bool, StoreError> {
        let deleted = self
            .store
            .delete_key(Some(account), KeyKind::Inference, id, crate::now())
            .await?;
        if deleted {
            self.auth.invalidate(id);
        }
        Ok(deleted)
    }

    /// Revokes a provisioning key (operator command line).
    pub async fn revoke_provisioning_key(&self, id: KeyId) -> Result<bool, StoreError> {
        self.store
            .delete_key(None, KeyKind::Provisioning, id, crate::now())
            .await
    }

    pub async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.store.account(id).await
    }

    /// Finds an account by numeric id or by name.
    pub async fn find_account(&self, id_or_name: &str) -> Result<Option<Account>, StoreError> {
        if let Ok(id) = id_or_name.parse::<i64>() {
            if let Some(account) = self.store.account(AccountId(id)).await? {
                return Ok(Some(account));
            }
        }
        self.store.account_by_name(id_or_name).await
    }

    pub async fn create_account(&self, name: &str) -> Result<Account, StoreError> {
        self.store.create_account(name, crate::now()).await
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.store.list_accounts().await
    }

    /// Adds credits to an account: a grant is more than zero. Returns the grant's id.
    pub async fn grant_credits(
        &self,
        account: AccountId,
        amount: Credits,
        note: Option<&str>,
    ) -> Result<i64, GrantError> {
        if amount <= Credits::ZERO {
            return Err(GrantError::NotPositive);
        }
        Ok(self
            .store
            .grant_credits(account, amount, note, crate::now())
            .await?)
    }

    /// Corrects an account's credits by `amount`, which may be negative, with a note
    /// saying why (kept with it in the grants). It never takes the balance as the ledger
    /// has it below zero; requests in flight on a running server are not in the ledger
    /// yet, and may still take it below zero by what they are then charged.
    pub async fn adjust_credits(
        &self,
        account: AccountId,
        amount: Credits,
        note: &str,
    ) -> Result<i64, GrantError> {
        if amount == Credits::ZERO {
            return Err(GrantError::Zero);
        }
        if note.trim().is_empty() {
            return Err(GrantError::NoNote);
        }
        Ok(self
            .store
            .grant_credits(account, amount, Some(note), crate::now())
            .await?)
    }

    /// Activity of the last `days` days (today included), from the daily roll-up.
    pub async fn activity(&self, account: AccountId, days: u32) -> Result<Activity, StoreError> {
        let today = time::OffsetDateTime::now_utc().date();
        let first = today - time::Duration::days(i64::from(days) - 1);
        let rollup = self.store.activity(account, &first.to_string()).await?;
        Ok(Activity::new(days, rollup))
    }
}

/// The roll-ups behind `GET /v1/account/activity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub period_days: u32,
    pub total: Totals,
    /// Per day, oldest first, only days with usage.
    pub daily: Vec<(String, Totals)>,
    /// Per model, most expensive first, ties by name.
    pub models: Vec<(String, Totals)>,
    /// Per key with its name, most expensive first, ties by id.
    pub keys: Vec<(KeyId, String, Totals)>,
}

impl Activity {
    /// The store's roll-ups plus their total, the sum of the days.
    fn new(period_days: u32, rollup: ActivityRollup) -> Activity {
        let total = rollup
            .days
            .iter()
            .fold(Totals::default(), |sum, (_, day)| sum.saturating_add(day));
        Activity {
            period_days,
            total,
            daily: rollup.days,
            models: rollup.models,
            keys: rollup.keys,
        }
    }
}
