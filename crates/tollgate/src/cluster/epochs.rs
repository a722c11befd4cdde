//! The background work of the shared budgets and the move to a new epoch: the
//! heartbeat that notices Redis lost its data (or went back to an old snapshot), the
//! registration of the reservations this replica holds in the new epoch, lease
//! renewal, and settles retried until Redis counts them.

use std::sync::Arc;
use std::time::Instant;

use super::budgets::{SettleOutcome, SharedBudgets, REGISTER_CHUNK, RETRY_CHUNK};
use super::names::{Names, BUDGET_PREFIX};
use super::{timed, Cluster, ClusterError};
use crate::store::AccountId;

impl SharedBudgets {
    /// Moves this replica to epoch `target` (or finishes moving it): registers there every
    /// reservation it holds, then works in it.
    pub(super) async fn adopt(&self, target: &str) -> Result<(), ClusterError> {
        let _one = self.adopting.lock().await;
        if *self.flights.epoch().0 != *target {
            // Slices are registered in the new epoch with the rest, and admit no more.
            self.slices.close_all();
        }
        let moved = self.register_in(target).await;
        self.flights.registration_over();
        moved
    }

    /// `adopt`'s work, under its lock.
    async fn register_in(&self, target: &str) -> Result<(), ClusterError> {
        let mut target: Arc<str> = Arc::from(target);
        let previous = self.flights.epoch().0;
        while let Some(stale) = self.flights.stale_or_adopt(&target) {
            let mut moved = None;
            for chunk in stale.chunks(REGISTER_CHUNK) {
                let names = Names::new(&target);
                let mut call = self.scripts.register.prepare_invoke();
                call.key(names.counter())
                    .arg(&*target)
                    .arg(0)
                    .arg(self.lease.as_millis() as u64)
                    .arg(names.prefix());
                for (id, f) in chunk {
                    call.arg(f.account.0).arg(id).arg(&*f.budget).arg(f.amount);
                }
                let reply = self.call(call, &target).await?;
                match reply.status() {
                    "ok" => {
                        let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
                        self.flights.registered(&ids, &target);
                        tracing::warn!(
                            epoch = %target,
                            registered = reply.number(2),
                            "registered reservations held here in a new epoch of the shared budgets"
                        );
                    }
                    "epoch" => {
                        moved = Some(Arc::from(reply.text(2)));
                        break;
                    }
                    other => return Err(ClusterError::Answer(other.to_string())),
                }
            }
            if let Some(newer) = moved {
                target = newer;
            }
        }
        if previous != target && !previous.is_empty() {
            tracing::warn!(from = %previous, to = %target, "redis lost the shared budgets' data (or went back in time); moved to a new epoch");
            let cluster = self.cluster.clone();
            let current = target.clone();
            tokio::spawn(async move { drop_older_epochs(cluster, current).await });
        }
        Ok(())
    }

    /// Registers, in the current epoch, reservations recorded in an older one.
    pub(super) async fn reregister(&self) -> Result<(), ClusterError> {
        let (epoch, _) = self.flights.epoch();
        self.adopt(&epoch).await
    }

    /// The background work of a replica, every [`TICK`]: the heartbeat that notices a new
    /// epoch (renewing leases every third of a lease), registering what an older epoch
    /// held, and retrying settles Redis did not answer.
    pub async fn tick(&self) {
        let renew = self
            .last_renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= self.lease / 3);
        let pairs = if renew {
            self.flights.renewals()
        } else {
            Vec::new()
        };
        let started = Instant::now();
        match self.heartbeat(&pairs).await {
            // A renewal that failed is tried again at the next tick.
            Ok(()) if renew => {
                *self.last_renewal.lock().unwrap_or_else(|p| p.into_inner()) = Some(started)
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "shared budgets: heartbeat or lease renewal failed")
            }
        }
        if self.flights.any_stale() {
            if let Err(e) = self.reregister().await {
                tracing::warn!(error = %e, "registering reservations in the new epoch failed");
            }
        }
        self.settle_closed_slices().await;
        let due = self.flights.due(self.lease);
        for chunk in due.chunks(RETRY_CHUNK) {
            let attempts = chunk.iter().map(|(id, f)| async move {
                let cost = f.settle.as_ref().map_or(0, |r| r.cost);
                match self
                    .settle_in(id, f.account, &f.budget, cost, &f.epoch)
                    .await
                {
                    Ok(SettleOutcome::NewEpoch(epoch)) => self.adopt(&epoch).await,
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            });
            let failed = futures_util::future::join_all(attempts)
                .await
                .into_iter()
                .filter(Result::is_err)
                .count();
            if failed > 0 {
                tracing::warn!(failed, "settles still waiting for redis");
            }
        }
    }

    async fn heartbeat(&self, pairs: &[(AccountId, String)]) -> Result<(), ClusterError> {
        let mut start = 0;
        loop {
            let chunk = &pairs[start..pairs.len().min(start + REGISTER_CHUNK)];
            let (epoch, seen) = self.flights.epoch();
            let names = Names::new(&epoch);
            let mut call = self.scripts.renew.prepare_invoke();
            call.key(names.counter())
                .arg(&*epoch)
                .arg(seen)
                .arg(self.lease.as_millis() as u64)
                .arg(names.prefix());
            for (account, id) in chunk {
                call.arg(account.0).arg(id);
            }
            let reply = self.call(call, &epoch).await?;
            match reply.status() {
                "ok" => {
                    if reply.number(2) > 0 {
                        self.leases_lost.fetch_add(
                            reply.number(2) as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        tracing::warn!(
                            count = reply.number(2),
                            "reservations in flight here are no longer held in redis (lease ran out)"
                        );
                    }
                }
                // Registering in the new epoch gives every reservation a fresh lease.
                "epoch" => return self.adopt(reply.text(2)).await,
                other => return Err(ClusterError::Answer(other.to_string())),
            }
            start += REGISTER_CHUNK;
            if start >= pairs.len() {
                return Ok(());
            }
        }
    }
}

/// Deletes the budget keys of epochs older than `current` (left by a Redis that came
/// back from an old snapshot), a batch at a time, in the background.
async fn drop_older_epochs(cluster: Cluster, current: Arc<str>) {
    let Ok(current_id) = current.parse::<u128>() else {
        return;
    };
    let mut conn = cluster.conn.clone();
    let mut cursor: u64 = 0;
    let pattern = format!("{BUDGET_PREFIX}:*");
    loop {
        let step = timed(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async::<(u64, Vec<String>)>(&mut conn),
        )
        .await;
        let Ok((next, keys)) = step else {
            return;
        };
        let old: Vec<&String> = keys
            .iter()
            .filter(|k| {
                k.split(':')
                    .nth(1)
                    .and_then(|e| e.parse::<u128>().ok())
                    .is_some_and(|e| e < current_id)
            })
            .collect();
        if !old.is_empty() {
            let _ = timed(redis::cmd("UNLINK").arg(&old).query_async::<i64>(&mut conn)).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
