//! Loading a shared budget from the ledger, and checking (and repairing) a loaded one
//! against it: the same exact computation, made while requests keep settling.
//!
//! A sync (1) starts logging the account's settles in Redis, (2) opens a ledger snapshot
//! and reads the totals, (3) reads from Redis the ids of the account's reservations,
//! markers and logged settles, (4) asks the snapshot which of them are charged, and (5)
//! sets, in one script, charged = ledger + logged settles the snapshot lacks − live
//! reservations the snapshot already charges (their settle will count them), and
//! reserved = the live reservations. Charges reach the ledger before Redis (the gateway
//! commits, then settles), which is why a settle before (1) is always in the snapshot.
//! docs/cluster.md has the full argument.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::budgets::{Reply, SharedBudgets};
use super::ledger::{KeyTotals, Snapshot};
use super::names::Names;
use super::ClusterError;
use crate::billing::meter::ReserveError;
use crate::store::{AccountId, KeyId};

/// First uses of an account's keys waiting for a load here (see [`SharedBudgets::load`]).
#[derive(Default)]
pub(super) struct KeyLoads {
    queued: Mutex<HashSet<KeyId>>,
    /// Held while a load of the account runs here.
    running: tokio::sync::Mutex<()>,
}

impl KeyLoads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<KeyId>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key`, waits for the load running here, and then runs `load` on every key
    /// queued, unless a load that ran meanwhile took `key`: then `None` at once (the
    /// caller tries its budget again). A caller whose key was taken must not run a load
    /// for keys queued after it: waiters take the lock one after another, so each one
    /// running a load for the keys of those behind it made every waiter wait for all the
    /// loads ahead of it (1,000 new keys at 500 a second: a load per waiter, the wait
    /// growing to 400 ms).
    async fn take_turn<T, F>(&self, key: KeyId, load: impl FnOnce(Vec<KeyId>) -> F) -> Option<T>
    where
        F: std::future::Future<Output = T>,
    {
        self.lock().insert(key);
        let _running = self.running.lock().await;
        let keys = {
            let mut queued = self.lock();
            if !queued.contains(&key) {
                return None;
            }
            std::mem::take(&mut *queued)
        };
        Some(load(keys.into_iter().collect()).await)
    }
}

/// How long a sync may take (its settle log lasts this long).
const WINDOW: Duration = Duration::from_secs(5);

/// Keys set by one script of a sync: Redis runs nothing else while a script runs, and the
/// check of an account in one script held it for 7.3–8.3 ms with 1,000 keys and 83–100 ms
/// with 10,000 (docs/cluster.md, "The check of a large account, in chunks").
pub const CHUNK_KEYS: usize = 200;

/// Why a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A reservation found the account or the key not loaded.
    Load,
    /// The periodic check of a loaded account.
    Check,
}

/// How a sync ended.
#[derive(Debug)]
pub(super) enum Synced {
    Done,
    /// Another replica is syncing the account.
    Busy,
    /// Nothing to do (a check not due, or of an account not loaded).
    Skipped,
    /// The epoch's grace window runs for this long.
    Wait(Duration),
    /// The sync was overtaken (its window passed, or a registration cancelled it).
    Lost,
}

impl SharedBudgets {
    /// Loads or checks the account's budget (and the budgets of `keys`, or of every key).
    pub(super) async fn sync(
        &self,
        account: AccountId,
        keys: Option<&[KeyId]>,
        mode: Mode,
    ) -> Result<Synced, ReserveError> {
        let (epoch, seen) = self.flights.epoch();
        let names = Names::new(&epoch);
        let sync_id = format!("{}", uuid::Uuid::new_v4().simple());
        let mut begin = self.scripts.sync_begin.prepare_invoke();
        begin
            .key(names.counter())
            .key(names.account(account))
            .key(names.sync_flag(account))
            .key(names.sync_log(account))
            .arg(&*epoch)
            .arg(seen)
            .arg(&sync_id)
            .arg(if mode == Mode::Load { "load" } else { "check" })
            .arg(self.check_every.as_millis() as u64)
            .arg(WINDOW.as_millis() as u64);
        let reply = self.call(begin, &epoch).await.map_err(unavailable)?;
        match reply.status() {
            "ok" => {}
            "busy" => return Ok(Synced::Busy),
            "skip" => return Ok(Synced::Skipped),
            "wait" => {
                return Ok(Synced::Wait(Duration::from_millis(
                    reply.number(2).max(1) as u64
                )))
            }
            "epoch" => {
                self.adopt(reply.text(2)).await.map_err(unavailable)?;
                return Ok(Synced::Lost);
            }
            other => return Err(unavailable(ClusterError::Answer(other.to_string()))),
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            WINDOW,
            self.sync_started(account, keys, mode, (&epoch, seen), &sync_id),
        )
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(ClusterError::Ledger("the sync took too long".into())),
        };
        if !matches!(outcome, Ok(Synced::Done)) {
            self.end_sync(account, (&epoch, seen), &sync_id).await;
        }
        if let Ok(Synced::Done) = outcome {
            tracing::debug!(
                account = account.0,
                ms = started.elapsed().as_millis() as u64,
                ?mode,
                "shared budget synced with the ledger"
            );
            self.touch(account);
        }
        outcome.map_err(unavailable)
    }

    /// Loads the budget of `key` (and its account's) for a reservation that found it not
    /// loaded. The first uses of an account's keys are loaded together: each sync holds
    /// the account's lock, so one sync per key in turn made a burst of new keys wait
    /// (1,000 keys first used at 500 a second: p99 1.6 s); a load now takes every key
    /// queued here while the previous one ran, and a caller whose key it took returns
    /// as soon as it ends ([`KeyLoads::take_turn`]).
    pub(super) async fn load(
        &self,
        account: AccountId,
        key: KeyId,
    ) -> Result<Synced, ReserveError> {
        let queue = {
            let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
            loads.entry(account).or_default().clone()
        };
        let outcome = queue
            .take_turn(key, |keys| async move {
                self.loads_run
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.sync(account, Some(&keys), Mode::Load).await
            })
            .await
            // A load that ran meanwhile took this key; the caller tries again.
            .unwrap_or(Ok(Synced::Done));
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        drop(queue);
        // Forgotten once nobody waits on it.
        if loads
            .get(&account)
            .is_some_and(|q| Arc::strong_count(q) == 1)
        {
            loads.remove(&account);
        }
        outcome
    }

    async fn sync_started(
        &self,
        account: AccountId,
        keys: Option<&[KeyId]>,
        mode: Mode,
        (epoch, seen): (&str, u64),
        sync_id: &str,
    ) -> Result<Synced, ClusterError> {
        // Expiries that are due are processed first, so the snapshot's grants are net of them.
        let due = self
            .store
            .account(account)
            .await
            .map_err(|e| ClusterError::Ledger(e.to_string()))?
            .and_then(|a| a.next_expiry)
            .is_some_and(|due| due <= crate::now());
        if due {
            self.settle_credits(account)
                .await
                .map_err(|e| ClusterError::Ledger(e.to_string()))?;
        }
        let at = self.clock.now();
        let (snapshot, totals) = Snapshot::open(&self.cluster.ledger, account, keys, at).await?;
        let Some(totals) = totals else {
            return Err(ClusterError::Ledger(format!(
                "account {} is not in the ledger",
                account.0
            )));
        };
        if mode == Mode::Load && keys.is_some() && totals.keys.is_empty() {
            return Err(ClusterError::Ledger("the key is not in the ledger".into()));
        }
        let names = Names::new(epoch);
        let mut read = self.scripts.sync_read.prepare_invoke();
        read.key(names.counter())
            .key(names.sync_flag(account))
            .key(names.data(account))
            .key(names.sync_log(account))
            .arg(epoch)
            .arg(seen)
            .arg(sync_id);
        let reply = self.call(read, epoch).await?;
        if reply.status() != "ok" {
            return Ok(Synced::Lost);
        }
        let ids: Vec<String> = reply.0[2..].to_vec();
        let charged = snapshot.charged(&ids).await?;

        // The account with the first chunk of keys, the sync ended with the last.
        let chunks: Vec<&[KeyTotals]> = if totals.keys.is_empty() {
            vec![&[]]
        } else {
            totals.keys.chunks(CHUNK_KEYS).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut apply = self.scripts.sync_apply.prepare_invoke();
            apply
                .key(names.counter())
                .key(names.account(account))
                .key(names.data(account))
                .key(names.markers(account))
                .key(names.sync_log(account))
                .key(names.sync_flag(account))
                .arg(epoch)
                .arg(seen)
                .arg(sync_id)
                .arg(names.key_prefix())
                .arg(totals.granted)
                .arg(totals.charged)
                .arg(u8::from(i == 0))
                .arg(u8::from(i == last))
                .arg(chunk.len());
            for k in chunk {
                let limit = k
                    .limit
                    .map_or_else(|| "none".to_string(), |l| l.to_string());
                let load = mode == Mode::Load && keys.is_some_and(|keys| keys.contains(&k.id));
                apply
                    .arg(&k.budget)
                    .arg(k.usage)
                    .arg(limit)
                    .arg(u8::from(load));
            }
            for (id, cost) in &charged {
                apply.arg(id).arg(*cost);
            }
            let reply = self.call(apply, epoch).await?;
            if reply.status() != "ok" {
                return Ok(Synced::Lost);
            }
            if report(account, mode, &reply) {
                self.repairs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.expire_windows(epoch, &totals.keys).await;
        Ok(Synced::Done)
    }

    /// A window's budget is dropped from Redis two days after the window ended (requests
    /// reserved in it settle long before; a settle that finds it gone counts the account).
    async fn expire_windows(&self, epoch: &str, keys: &[KeyTotals]) {
        let names = Names::new(epoch);
        for k in keys {
            if let Some(w) = &k.window {
                let mut conn = self.cluster.conn.clone();
                let at = w.resets_at() + 2 * 86_400;
                let mut set = redis::cmd("EXPIREAT");
                set.arg(names.budget(&k.budget)).arg(at);
                if let Err(e) = super::timed(set.query_async::<i64>(&mut conn)).await {
                    tracing::debug!(error = %e, "setting a window budget's expiry failed");
                }
            }
        }
    }

    async fn end_sync(&self, account: AccountId, (epoch, seen): (&str, u64), sync_id: &str) {
        let names = Names::new(epoch);
        let mut end = self.scripts.sync_end.prepare_invoke();
        end.key(names.counter())
            .key(names.sync_flag(account))
            .key(names.sync_log(account))
            .arg(epoch)
            .arg(seen)
            .arg(sync_id);
        if let Err(e) = self.call(end, epoch).await {
            tracing::debug!(error = %e, "ending a failed sync; its window will");
        }
    }

    /// Checks every account used here whose check is due against the ledger (each
    /// account at most once per interval across all replicas) and repairs drift.
    pub async fn check_due(&self) {
        let now = Instant::now();
        let due: Vec<AccountId> = {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            let due: Vec<AccountId> = touched
                .iter()
                .filter(|(_, next)| **next <= now)
                .map(|(a, _)| *a)
                .collect();
            for account in &due {
                touched.insert(*account, now + self.check_every);
            }
            due
        };
        for account in due {
            if let Err(e) = self.sync(account, None, Mode::Check).await {
                tracing::warn!(account = account.0, error = %e, "checking a shared budget against the ledger failed");
            }
        }
    }
}

fn unavailable(e: ClusterError) -> ReserveError {
    ReserveError::Unavailable(e.to_string())
}

/// Logs what a sync had to repair (any difference on a loaded budget is a fault);
/// answers whether there was any.
fn report(account: AccountId, mode: Mode, reply: &Reply) -> bool {
    let loaded = reply.text(2) == "1";
    let (drift, reserved) = (reply.number(3), reply.number(4));
    let mut repaired = loaded && (drift != 0 || reserved != 0);
    if repaired {
        tracing::error!(
            account = account.0,
            drift_nanos = drift,
            reserved_drift_nanos = reserved,
            ?mode,
            "SHARED BUDGET DRIFT: the account's budget in redis disagreed with the ledger; repaired"
        );
    }
    let mut i = 5;
    while i + 3 < reply.0.len() {
        let (key, key_loaded, drift, reserved) = (
            reply.text(i),
            reply.text(i + 1) == "1",
            reply.number(i + 2),
            reply.number(i + 3),
        );
        if key_loaded && (drift != 0 || reserved != 0) {
            repaired = true;
            tracing::error!(
                account = account.0,
                key,
                drift_nanos = drift,
                reserved_drift_nanos = reserved,
                ?mode,
                "SHARED BUDGET DRIFT: a key's budget in redis disagreed with the ledger; repaired"
            );
        }
        i += 4;
    }
    repaired
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, oneshot};

    /// A load that reports the keys it took and ends when the test says so.
    type Started = (Vec<KeyId>, oneshot::Sender<()>);

    fn first_use(
        loads: &Arc<KeyLoads>,
        started: &mpsc::UnboundedSender<Started>,
        key: i64,
    ) -> tokio::task::JoinHandle<Option<()>> {
        let (loads, started) = (loads.clone(), started.clone());
        tokio::spawn(async move {
            loads
                .take_turn(KeyId(key), |mut keys| async move {
                    keys.sort_by_key(|k| k.0);
                    let (end, ended) = oneshot::channel();
                    started.send((keys, end)).expect("the test listens");
                    ended.await.expect("the test ends each load");
                })
                .await
        })
    }

    /// Lets every spawned task run until it waits (the test runtime has one thread).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_first_use_whose_key_was_loaded_does_not_wait_for_later_loads() {
        let loads = Arc::new(KeyLoads::default());
        let (started, mut loads_started) = mpsc::unbounded_channel::<Started>();
        let first = first_use(&loads, &started, 1);
        let (keys, end_first) = loads_started.recv().await.expect("a load");
        assert_eq!(keys, vec![KeyId(1)]);
        // Two first uses while the first load runs: the next load takes both.
        let second = first_use(&loads, &started, 2);
        let third = first_use(&loads, &started, 3);
        settle().await;
        end_first.send(()).expect("load waiting");
        let (keys, end_second) = loads_started.recv().await.expect("a load");
        assert_eq!(keys, vec![KeyId(2), KeyId(3)]);
        assert_eq!(first.await.expect("task"), Some(()));
        // A fourth while that load runs.
        let fourth = first_use(&loads, &started, 4);
        settle().await;
        end_second.send(()).expect("load waiting");
        let (keys, end_fourth) = loads_started.recv().await.expect("a load");
        assert_eq!(keys, vec![KeyId(4)]);
        settle().await;
        // The third's key was loaded with the second's: it is answered while the fourth's
        // load still runs, instead of running (or waiting for) that load.
        assert!(
            third.is_finished(),
            "a caller whose key was loaded waited for a later load"
        );
        assert_eq!(third.await.expect("task"), None);
        assert_eq!(second.await.expect("task"), Some(()));
        assert!(!fourth.is_finished());
        end_fourth.send(()).expect("load waiting");
        assert_eq!(fourth.await.expect("task"), Some(()));
        assert!(loads_started.try_recv().is_err(), "no other load ran");
    }
}
