//! A deadline on every call to a store over the network: a database that stops
//! answering (a cut connection, a frozen server) turns into an error within
//! `CALL_DEADLINE` instead of a request or a ledger commit that waits for ever.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::*;

/// The longest any one call may take, from waiting for a connection to the answer:
/// above the pool's acquire timeout and the server's `statement_timeout` (5 s each), so
/// those report first whenever the server still answers.
pub const CALL_DEADLINE: Duration = Duration::from_secs(8);

/// Runs `call` with the deadline. A call cut short may still have happened (a commit
/// whose answer was lost): writes that are retried must be idempotent, as the ledger's
/// are (by request id).
pub async fn deadline<T>(
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    within(CALL_DEADLINE, call).await
}

async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

/// A store whose every call but `migrate` runs under [`deadline`].
pub struct Deadlined<S>(pub S);

#[async_trait]
impl<S: Store> Store for Deadlined<S> {
    async fn migrate(&self) -> Result<(), StoreError> {
        // Waiting for another replica's migration lock, or building an index, may take long.
        self.0.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        deadline(self.0.ping()).await
    }

    async fn create_account(&self, name: &str, now: i64) -> Result<Account, StoreError> {
        deadline(self.0.create_account(name, now)).await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        deadline(self.0.list_accounts()).await
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        deadline(self.0.account(id)).await
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>, StoreError> {
        deadline(self.0.account_by_name(name)).await
    }

    async fn add_grant(
        &self,
        account: AccountId,
        grant: &NewGrant,
        now: i64,
    ) -> Result<i64, StoreError> {
        deadline(self.0.add_grant(account, grant, now)).await
    }

    async fn settle_credits(
        &self,
        account: AccountId,
        now: i64,
        in_flight: Credits,
    ) -> Result<Option<Account>, StoreError> {
        deadline(self.0.settle_credits(account, now, in_flight)).await
    }

    async fn credit_grants(&self, account: AccountId) -> Result<Vec<Grant>, StoreError> {
        deadline(self.0.credit_grants(account)).await
    }

    async fn create_key(&self, key: NewKey) -> Result<KeyRecord, StoreError> {
        deadline(self.0.create_key(key)).await
    }

    async fn list_keys(
        &self,
        account: AccountId,
        kind: KeyKind,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        deadline(self.0.list_keys(account, kind)).await
    }

    async fn get_key(
        &self,
        account: AccountId,
        kind: KeyKind,
        id: KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        deadline(self.0.get_key(account, kind, id)).await
    }

    async fn update_key(
        &self,
        account: AccountId,
        id: KeyId,
        patch: &KeyPatch,
        now: i64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        deadline(self.0.update_key(account, id, patch, now)).await
    }

    async fn delete_key(
        &self,
        account: Option<AccountId>,
        kind: KeyKind,
        id: KeyId,
        now: i64,
    ) -> Result<bool, StoreError> {
        deadline(self.0.delete_key(account, kind, id, now)).await
    }

    async fn day_charges(
        &self,
        account: AccountId,
        key: Option<KeyId>,
        since_day: &str,
    ) -> Result<Vec<DayCharge>, StoreError> {
        deadline(self.0.day_charges(account, key, since_day)).await
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        deadline(self.0.key_by_hash(hash)).await
    }

    async fn rotate_key(
        &self,
        account: AccountId,
        id: KeyId,
        hash: &str,
        hint: &str,
        previous_until: Option<i64>,
        now: i64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        deadline(
            self.0
                .rotate_key(account, id, hash, hint, previous_until, now),
        )
        .await
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<Vec<bool>, StoreError> {
        deadline(self.0.record_usage(batch)).await
    }

    fn usage_journal_ledger(&self) -> Option<std::path::PathBuf> {
        self.0.usage_journal_ledger()
    }

    fn own_ledger(&self) -> Option<Box<dyn OwnLedger>> {
        self.0.own_ledger()
    }

    async fn activity(
        &self,
        account: AccountId,
        since_day: &str,
    ) -> Result<ActivityRollup, StoreError> {
        deadline(self.0.activity(account, since_day)).await
    }

    async fn usage_record(&self, request_id: &str) -> Result<Option<UsageRecord>, StoreError> {
        deadline(self.0.usage_record(request_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_never_answers_times_out() {
        let never = std::future::pending::<Result<(), StoreError>>();
        let limit = Duration::from_millis(20);
        let result = within(limit, never).await;
        assert!(matches!(result, Err(StoreError::Timeout(d)) if d == limit));
        let err = result.expect_err("timeout");
        assert!(err.is_transient());
        assert_eq!(err.outage(), Some(Outage::Unreachable));
    }
}
