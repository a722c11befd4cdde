//! Credit grants reach the shared budgets by a change feed: a trigger on `credit_grants`
//! (migration 0010) notifies `tollgate_grants` with the account's id, and each replica
//! re-reads only the accounts named. A full scan of every account (which re-reads their
//! grants) runs only when the feed may have missed something (not listening, the
//! connection lost and re-made), when the earliest known expiry is due, and otherwise at
//! most every `FALLBACK_SCAN` (docs/cluster.md).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::budgets::{unavailable, SharedBudgets};
use crate::billing::meter::ReserveError;
use crate::store::{Account, AccountId};

/// The channel the trigger notifies.
pub const GRANTS_CHANNEL: &str = "tollgate_grants";
/// The longest time between two full scans while the feed is listening.
const FALLBACK_SCAN: Duration = Duration::from_secs(60);

/// What the change feed has told since the last refresh.
#[derive(Default)]
pub(crate) struct GrantFeed {
    /// The feed is subscribed (while not, every refresh is a full scan).
    listening: bool,
    /// The feed may have missed a notification: the next refresh is a full scan.
    missed: bool,
    /// Accounts named since the last refresh.
    changed: HashSet<AccountId>,
    /// The earliest expiry of any account with a remainder, as of the last reads.
    next_due: Option<i64>,
    last_scan: Option<Instant>,
}

enum Plan {
    Scan,
    Accounts(Vec<AccountId>),
}

impl SharedBudgets {
    fn feed(&self) -> std::sync::MutexGuard<'_, GrantFeed> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the credit grants of the accounts used here from the database, processing
    /// the expiries that are due first: of the accounts the feed named, or of every
    /// account when a full scan is due.
    pub async fn refresh_grants(&self) -> Result<(), ReserveError> {
        let now = crate::now();
        let plan = {
            let mut feed = self.feed();
            let scan = !feed.listening
                || feed.missed
                || feed.next_due.is_some_and(|due| due <= now)
                || feed
                    .last_scan
                    .is_none_or(|at| at.elapsed() >= FALLBACK_SCAN);
            if scan {
                feed.missed = false;
                feed.changed.clear();
                Plan::Scan
            } else {
                Plan::Accounts(feed.changed.drain().collect())
            }
        };
        let touched: HashSet<AccountId> = {
            let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            touched.keys().copied().collect()
        };
        let result = match &plan {
            Plan::Scan => {
                let accounts = self.store.list_accounts().await;
                match accounts {
                    Ok(accounts) => {
                        let next = self.follow(accounts, &touched, now).await;
                        if let Ok(next_due) = next {
                            let mut feed = self.feed();
                            feed.next_due = next_due;
                            feed.last_scan = Some(Instant::now());
                        }
                        next.map(|_| ())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Plan::Accounts(ids) => {
                let mut accounts = Vec::with_capacity(ids.len());
                let mut read = Ok(());
                for id in ids {
                    match self.store.account(*id).await {
                        Ok(Some(account)) => accounts.push(account),
                        Ok(None) => {}
                        Err(e) => {
                            read = Err(e.into());
                            break;
                        }
                    }
                }
                match read {
                    Ok(()) => self.follow(accounts, &touched, now).await.map(|next_due| {
                        let mut feed = self.feed();
                        feed.next_due = match (feed.next_due, next_due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }),
                    Err(e) => Err(e),
                }
            }
        };
        if result.is_err() {
            // Nothing may be forgotten: the next refresh reads everything again.
            self.feed().missed = true;
        }
        result
    }

    /// Processes due expiries and copies the grants of `accounts` used here to Redis;
    /// answers the earliest expiry still ahead among them.
    async fn follow(
        &self,
        accounts: Vec<Account>,
        touched: &HashSet<AccountId>,
        now: i64,
    ) -> Result<Option<i64>, ReserveError> {
        let mut next_due: Option<i64> = None;
        for account in accounts {
            // Due expiries are processed on every account (keeping what any replica's
            // requests hold), so a balance drops on time also where it is not used.
            let after = match account.next_expiry {
                Some(due) if due <= now => self.settle_credits(account.id).await?,
                _ => {
                    if touched.contains(&account.id) {
                        self.set_granted(&account).await.map_err(unavailable)?;
                    }
                    Some(account)
                }
            };
            if let Some(due) = after.and_then(|a| a.next_expiry) {
                next_due = Some(next_due.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next_due)
    }

    /// Listens to the change feed of credit grants until the process ends; while it is
    /// not listening, every refresh is a full scan.
    pub async fn run_grant_feed(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match sqlx::postgres::PgListener::connect_with(&self.cluster.ledger).await {
                Ok(mut listener) => {
                    if listener.listen(GRANTS_CHANNEL).await.is_ok() {
                        {
                            let mut feed = self.feed();
                            feed.listening = true;
                            // Anything may have changed before we listened.
                            feed.missed = true;
                        }
                        backoff = Duration::from_millis(100);
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(note)) => match note.payload().parse::<i64>() {
                                    Ok(id) => {
                                        self.feed().changed.insert(AccountId(id));
                                    }
                                    Err(_) => self.feed().missed = true,
                                },
                                // The connection was lost and is made again: what was
                                // sent meanwhile is lost.
                                Ok(None) => self.feed().missed = true,
                                Err(e) => {
                                    tracing::warn!(error = %e, "the grants feed was lost");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen to the grants feed"),
            }
            self.feed().listening = false;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
