//! Finding events: each second, the keys charged since the last scan are checked against
//! their limits, every webhook's `low_balance` against its account's balance, and grants
//! expiring within 7 days are looked up (a small table: one row per grant). Each event
//! has a de-duplication id (`Webhooks::emit`), so it is emitted once however often its
//! condition is seen.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{KeyUse, Webhooks};
use crate::billing::window::{self, LimitReset, WindowUsage};
use crate::billing::Credits;
use crate::store::{AccountId, KeyId, StoreError};

/// Percentages of a key's limit that raise an event, once each per window.
pub const THRESHOLDS: [i64; 3] = [50, 80, 100];
/// How far ahead expiring credits are announced.
pub const EXPIRY_NOTICE: i64 = 7 * 86_400;
/// Usage records re-read behind the last scan's end: on PostgreSQL a record may commit
/// after one with a higher id was seen; an event found twice is emitted once.
const RESCAN: i64 = 1_000;
/// How long finished deliveries stay in the log.
const LOG_DAYS: i64 = 30;

/// The window a key's usage is counted in, part of its events' identity: `lifetime` for
/// a key without resets, else the current window's tag (`d2027-01-31`, `w2027-01-25`,
/// `m2027-01`), so each window gets its own 50/80/100 % events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWindow(pub String);

impl KeyWindow {
    /// The only window of a key without resets.
    pub fn lifetime() -> Self {
        KeyWindow("lifetime".into())
    }
}

/// The thresholds `usage` has reached of `limit`, in whole percent (exact integers).
pub fn reached(usage: i64, limit: i64) -> impl Iterator<Item = i64> {
    THRESHOLDS
        .into_iter()
        .filter(move |t| limit > 0 && i128::from(usage) * 100 >= i128::from(*t) * i128::from(limit))
}

impl Webhooks {
    /// Scans for events until the process ends.
    pub async fn run_events(self: Arc<Self>) {
        let mut seen = match self.db.max_usage_id().await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "webhook events: cannot read the ledger; starting from the beginning");
                0
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut round: u64 = 0;
        loop {
            tick.tick().await;
            round += 1;
            if round % 3_600 == 1 {
                let before = super::now_ms() - LOG_DAYS * 86_400_000;
                if let Err(e) = self.db.prune(before).await {
                    tracing::warn!(error = %e, "pruning the webhook delivery log failed");
                }
            }
            match self.scan(seen, true).await {
                Ok(next) => seen = next,
                Err(e) => tracing::warn!(error = %e, "webhook events: a scan failed"),
            }
        }
    }

    /// One scan; answers the highest usage record id it saw.
    pub async fn scan(&self, seen: i64, expiries: bool) -> Result<i64, super::WebhookError> {
        let top = self.db.max_usage_id().await?;
        if top > seen {
            for key in self.db.keys_used_since((seen - RESCAN).max(0)).await? {
                let (usage, window) = self.key_window(&key).await?;
                self.key_thresholds(&KeyUse { usage, ..key }, &window)
                    .await?;
            }
        }
        self.low_balances().await?;
        if expiries {
            self.expiring_credits().await?;
        }
        Ok(top.max(seen))
    }

    /// The key's usage in the window its limit counts now, and that window: its lifetime
    /// usage for a key without resets, else the sum of the daily roll-up's days in the
    /// current day, week or month (the same figure as the key object's `usage_daily`…).
    async fn key_window(&self, key: &KeyUse) -> Result<(i64, KeyWindow), super::WebhookError> {
        let Some(reset) = key.limit_reset.as_deref() else {
            return Ok((key.usage, KeyWindow::lifetime()));
        };
        let reset = LimitReset::parse(reset).ok_or_else(|| {
            StoreError::Corrupt(format!("limit_reset '{reset}' of key {}", key.id))
        })?;
        let at = self.clock.now();
        let days = self
            .store
            .day_charges(
                AccountId(key.account_id),
                Some(KeyId(key.id)),
                &window::earliest_start(at),
            )
            .await?;
        let usage = WindowUsage::from_days(at, days.iter().map(|d| (d.day.as_str(), d.cost)));
        Ok((usage.of(reset), KeyWindow(reset.window_at(at).tag())))
    }

    async fn key_thresholds(
        &self,
        key: &KeyUse,
        window: &KeyWindow,
    ) -> Result<(), super::WebhookError> {
        for percent in reached(key.usage, key.limit) {
            let dedup = format!("key:{}:{}:{percent}", key.id, window.0);
            let data = json!({
                "key_id": key.id,
                "key_name": key.name,
                "threshold_percent": percent,
                "usage": Credits::from_nanos(key.usage).to_string(),
                "credit_limit": Credits::from_nanos(key.limit).to_string(),
                "window": window.0,
            });
            self.emit(
                AccountId(key.account_id),
                "key.usage_threshold",
                data,
                &dedup,
                None,
            )
            .await?;
        }
        Ok(())
    }

    async fn low_balances(&self) -> Result<(), super::WebhookError> {
        for hook in self.db.hooks(None).await? {
            let Some(low) = hook.low_balance else {
                continue;
            };
            let account = AccountId(hook.account_id);
            let Ok(Some(state)) = self.store.account(account).await else {
                continue;
            };
            let balance = state.balance();
            let dedup = format!("low_balance:{}", hook.id);
            if balance.nanos() < low {
                let data = json!({
                    "balance": balance.to_string(),
                    "low_balance": Credits::from_nanos(low).to_string(),
                    "webhook_id": hook.id,
                });
                self.emit(account, "account.low_balance", data, &dedup, Some(hook.id))
                    .await?;
            } else {
                // Back above the threshold: the next fall is a new event.
                self.rearm(account, &dedup).await?;
            }
        }
        Ok(())
    }

    async fn expiring_credits(&self) -> Result<(), super::WebhookError> {
        let now = crate::now();
        for (grant, account, remaining, expires_at) in
            self.db.expiring(now, now + EXPIRY_NOTICE).await?
        {
            let data = json!({
                "grant_id": grant,
                "remaining": Credits::from_nanos(remaining).to_string(),
                "expires_at": crate::rfc3339(expires_at),
            });
            let dedup = format!("expiring:{grant}");
            self.emit(AccountId(account), "credits.expiring", data, &dedup, None)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_exact() {
        let at = |usage, limit| reached(usage, limit).collect::<Vec<_>>();
        assert_eq!(at(0, 1_000), Vec::<i64>::new());
        assert_eq!(at(499, 1_000), Vec::<i64>::new());
        assert_eq!(at(500, 1_000), vec![50]);
        assert_eq!(at(799, 1_000), vec![50]);
        assert_eq!(at(800, 1_000), vec![50, 80]);
        assert_eq!(at(1_000, 1_000), vec![50, 80, 100]);
        assert_eq!(at(i64::MAX, i64::MAX), vec![50, 80, 100]);
        // 1/3 of a limit of 3 units is not 50 %.
        assert_eq!(at(1, 3), Vec::<i64>::new());
        assert_eq!(at(5, 0), Vec::<i64>::new());
    }
}
