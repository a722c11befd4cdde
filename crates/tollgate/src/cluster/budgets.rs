//! Budgets shared by every replica: reserve and settle through Redis, leases renewed by
//! the replica that holds them, settles that count once however often they run, and
//! the move to a new epoch when Redis loses its data (docs/cluster.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Script, ScriptInvocation};

use super::flights::{Flight, Flights, Retry};
use super::names::{budget_name, Names};
use super::scripts::{self, with_constants};
use super::slices::{is_slice, Admit, Slices, SLICE_LIFE};
use super::sync::{Mode, Synced};
use super::{timed, Cluster, ClusterError};
use crate::billing::meter::{QuotaError, Reservation, ReserveError};
use crate::billing::window::LimitReset;
use crate::billing::Credits;
use crate::clock::Clock;
use crate::store::{AccountId, KeyId, KeyRecord, Store};

/// How often each replica runs [`SharedBudgets::tick`] (heartbeat, settle retries).
pub const TICK: Duration = Duration::from_secs(1);
/// After Redis lost its data, how long no reservation is admitted, so that every live
/// replica (which notices within a `TICK` plus one answer) registers what it holds.
pub const GRACE: Duration = Duration::from_secs(3);
/// How long a marker (an expired lease, a settled re-registration) is kept.
const MARKER_TTL: Duration = Duration::from_secs(600);
/// How long a reservation waits for its budget to be loaded (after a data loss, for the
/// grace window) before a 503.
const PATIENCE: Duration = Duration::from_secs(5);
/// Reservations registered per script run.
pub(super) const REGISTER_CHUNK: usize = 500;
/// Settle retries sent at once by a tick.
pub(super) const RETRY_CHUNK: usize = 64;

pub(super) struct Scripts {
    pub reserve: Script,
    pub settle: Script,
    pub renew: Script,
    pub register: Script,
    pub sync_begin: Script,
    pub sync_read: Script,
    pub sync_apply: Script,
    pub sync_end: Script,
    pub set_if_loaded: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let make = |text: &str| {
            Script::new(&with_constants(
                text,
                GRACE.as_millis() as u64,
                MARKER_TTL.as_millis() as u64,
            ))
        };
        Scripts {
            reserve: make(scripts::RESERVE),
            settle: make(scripts::SETTLE),
            renew: make(scripts::RENEW),
            register: make(scripts::REGISTER),
            sync_begin: make(scripts::SYNC_BEGIN),
            sync_read: make(scripts::SYNC_READ),
            sync_apply: make(scripts::SYNC_APPLY),
            sync_end: make(scripts::SYNC_END),
            set_if_loaded: Script::new(scripts::SET_IF_LOADED),
        }
    }
}

/// A script's answer: a status, the epoch's write counter, then values.
pub(super) struct Reply(pub Vec<String>);

impl Reply {
    /// The first value: `ok`, `epoch`, `load`...
    pub fn status(&self) -> &str {
        self.text(0)
    }
    /// Value `i`, or "" if there is none.
    pub fn text(&self, i: usize) -> &str {
        self.0.get(i).map_or("", String::as_str)
    }
    /// Value `i` as an integer, or 0.
    pub fn number(&self, i: usize) -> i64 {
        self.text(i).parse().unwrap_or(0)
    }
}

/// What one run of the settle script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// The cost is now counted.
    Counted,
    /// Nothing to do: this settle ran before.
    AlreadyCounted,
    /// Redis is in another epoch (named): the reservation must be registered there first.
    NewEpoch(String),
}

/// Budgets shared by every replica: reservations are held in Redis under a lease that
/// this replica renews while the request runs; a crashed replica's leases run out and
/// the next reservation on the account gives them back.
pub struct SharedBudgets {
    pub(super) cluster: Cluster,
    pub(super) store: Arc<dyn Store>,
    pub(super) lease: Duration,
    pub(super) check_every: Duration,
    pub(super) flights: Flights,
    /// One move to a new epoch at a time.
    pub(super) adopting: tokio::sync::Mutex<()>,
    /// Accounts used here, with the time of their next check against the ledger.
    pub(super) touched: Mutex<HashMap<AccountId, Instant>>,
    /// Keys waiting for their budget's first load, per account (`sync.rs`).
    pub(super) loads: Mutex<HashMap<AccountId, Arc<super::sync::KeyLoads>>>,
    /// Loads run here (each one sync of one or more keys), for diagnostics.
    pub(super) loads_run: std::sync::atomic::AtomicU64,
    /// Reservations of this replica found with their lease run out, for diagnostics.
    pub(super) leases_lost: std::sync::atomic::AtomicU64,
    /// Checks here that found a loaded budget differing from the ledger, for diagnostics.
    pub(super) repairs: std::sync::atomic::AtomicU64,
    /// Requests' reservations taken here from a slice, and in Redis.
    from_slices: std::sync::atomic::AtomicU64,
    in_redis: std::sync::atomic::AtomicU64,
    pub(super) last_renewal: Mutex<Option<Instant>>,
    /// What the change feed of credit grants has told (`grants.rs`).
    pub(super) grants: Mutex<super::grants::GrantFeed>,
    pub(super) scripts: Scripts,
    /// This replica's slices of budgets (`slices.rs`).
    pub(super) slices: Slices,
    /// The clock of budget windows.
    pub(super) clock: Clock,
}

pub(super) fn unavailable(e: ClusterError) -> ReserveError {
    ReserveError::Unavailable(e.to_string())
}

impl SharedBudgets {
    /// `lease`: a reservation's life without renewal; `check_every`: how often each
    /// account's shared budget is checked against the ledger.
    pub fn new(
        cluster: Cluster,
        store: Arc<dyn Store>,
        lease: Duration,
        check_every: Duration,
        clock: Clock,
    ) -> Self {
        SharedBudgets {
            clock,
            cluster,
            store,
            lease,
            check_every,
            flights: Flights::new(),
            adopting: tokio::sync::Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
            loads: Mutex::new(HashMap::new()),
            loads_run: Default::default(),
            leases_lost: Default::default(),
            repairs: Default::default(),
            from_slices: Default::default(),
            in_redis: Default::default(),
            last_renewal: Mutex::new(None),
            grants: Mutex::new(Default::default()),
            scripts: Scripts::new(),
            slices: Slices::new(),
        }
    }

    /// The lease of a reservation.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Runs a script; notes the write counter it answers.
    pub(super) async fn call(
        &self,
        invocation: ScriptInvocation<'_>,
        epoch: &str,
    ) -> Result<Reply, ClusterError> {
        let mut conn = self.cluster.conn.clone();
        let reply = Reply(timed(invocation.invoke_async::<Vec<String>>(&mut conn)).await?);
        if reply.status() != "epoch" {
            if let Ok(seq) = reply.text(1).parse() {
                self.flights.saw(epoch, seq);
            }
        }
        Ok(reply)
    }

    /// Holds `amount` for request `id` against the key's limit and the account's balance:
    /// from this replica's slice of the key's budget if it has one (`slices.rs`), else
    /// in Redis.
    pub async fn reserve(
        &self,
        key: &KeyRecord,
        amount: Credits,
        id: &str,
    ) -> Result<Reservation, ReserveError> {
        let at = self.clock.now();
        let window = key.limit_reset.map(|r| r.window_at(at));
        let budget: Arc<str> = Arc::from(budget_name(key.id, window.as_ref()));
        let member = |slice| Reservation {
            id: id.to_string(),
            account: key.account_id,
            key: key.id,
            amount,
            at,
            window,
            lease: Some(slice),
        };
        let counted = |r: Reservation| {
            let which = if r.lease.is_some() {
                &self.from_slices
            } else {
                &self.in_redis
            };
            which.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r
        };
        match self
            .slices
            .admit(&budget, amount.nanos(), self.slice_life())
        {
            Admit::Served(slice) => return Ok(counted(member(slice))),
            Admit::Open(size) => {
                let slice_id = format!("L:{}", uuid::Uuid::new_v4().simple());
                let opened = self
                    .reserve_in_redis(key, Credits::from_nanos(size), &slice_id)
                    .await;
                let opened = match opened {
                    // Opened across a window's end: it belongs to the next window.
                    Ok(r) if r.window != window => {
                        self.settle(r, Credits::ZERO).await;
                        None
                    }
                    Ok(r) => Some((r, amount.nanos())),
                    Err(_) => None,
                };
                if let Some(slice) = self.slices.opened(&budget, opened) {
                    return Ok(counted(member(slice)));
                }
            }
            Admit::Alone => {}
        }
        self.reserve_in_redis(key, amount, id).await.map(counted)
    }

    /// Requests' reservations taken here so far: (from a slice, in Redis).
    pub fn reservations(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.from_slices.load(Relaxed), self.in_redis.load(Relaxed))
    }

    /// How long a slice admits requests: never past a third of the lease, the longest a
    /// renewal may be away (so a slice never admits once Redis may have let it go).
    fn slice_life(&self) -> Duration {
        SLICE_LIFE.min(self.lease / 3)
    }

    /// Holds `amount` for `id` (a request or a slice) in Redis.
    async fn reserve_in_redis(
        &self,
        key: &KeyRecord,
        amount: Credits,
        id: &str,
    ) -> Result<Reservation, ReserveError> {
        let deadline = Instant::now() + PATIENCE;
        // A refusal while slices hold part of the budget waits for them to close.
        let slices_close = Instant::now() + SLICE_LIFE + Duration::from_millis(250);
        loop {
            // The window is taken afresh on every try: a load may cross a boundary.
            let at = self.clock.now();
            let window = key.limit_reset.map(|r| r.window_at(at));
            let budget: Arc<str> = Arc::from(budget_name(key.id, window.as_ref()));
            let (epoch, seen) = self.flights.epoch();
            let names = Names::new(&epoch);
            let mut call = self.scripts.reserve.prepare_invoke();
            call.key(names.counter())
                .key(names.account(key.account_id))
                .key(names.budget(&budget))
                .key(names.leases(key.account_id))
                .key(names.data(key.account_id))
                .key(names.markers(key.account_id))
                .arg(&*epoch)
                .arg(seen)
                .arg(self.lease.as_millis() as u64)
                .arg(id)
                .arg(amount.nanos())
                .arg(&*budget)
                .arg(names.key_prefix());
            let flight = |held| Flight {
                account: key.account_id,
                budget: budget.clone(),
                amount: amount.nanos(),
                epoch: epoch.clone(),
                held,
                settle: (!held).then(|| Retry::new(0)),
                registering: false,
            };
            let reply = match self.call(call, &epoch).await {
                Ok(reply) => reply,
                Err(e) => {
                    if e.may_have_run() {
                        // It may hold the amount: give it back as soon as Redis answers.
                        self.flights.hold(id, flight(false));
                    }
                    return Err(unavailable(e));
                }
            };
            let number = |i: usize| Credits::from_nanos(reply.number(i));
            if reply.status() != "epoch" && reply.text(2) == "1" {
                // A slice's lease ran out (its replica died or froze): it stays held
                // until a check counts what its requests spent, so the check runs now.
                let checked = self.sync(key.account_id, None, Mode::Check).await;
                if !matches!(checked, Ok(Synced::Done)) {
                    self.check_soon(key.account_id);
                }
            }
            let sliced = match reply.status() {
                "key" => reply.number(5),
                "balance" => reply.number(4),
                _ => 0,
            };
            if sliced > 0 && !is_slice(id) && Instant::now() < slices_close {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            match reply.status() {
                "ok" => {
                    self.touch(key.account_id);
                    self.slices.note_room(&budget, reply.number(3));
                    if self.flights.hold(id, flight(true)) {
                        if let Err(e) = self.reregister().await {
                            tracing::warn!(error = %e, "registering a reservation in the new epoch failed; the next tick retries");
                        }
                    }
                    return Ok(Reservation {
                        id: id.to_string(),
                        account: key.account_id,
                        key: key.id,
                        amount,
                        at,
                        window,
                        lease: None,
                    });
                }
                "key" => {
                    return Err(ReserveError::Quota(QuotaError::KeyLimit {
                        limit: number(3),
                        remaining: number(4).max(Credits::ZERO),
                        needed: amount,
                        resets_at: window.map(|w| w.resets_at()),
                    }))
                }
                "balance" => {
                    return Err(ReserveError::Quota(QuotaError::Balance {
                        remaining: number(3).max(Credits::ZERO),
                        needed: amount,
                    }))
                }
                "epoch" => self.adopt(reply.text(2)).await.map_err(unavailable)?,
                "load" => match self.load(key.account_id, key.id).await? {
                    Synced::Done | Synced::Skipped => {}
                    Synced::Busy | Synced::Lost => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Synced::Wait(wait) => {
                        tokio::time::sleep(wait.min(Duration::from_millis(250))).await
                    }
                },
                other => return Err(unavailable(ClusterError::Answer(other.to_string()))),
            }
            if Instant::now() > deadline {
                return Err(ReserveError::Unavailable(
                    "the shared budget is being rebuilt; retry shortly".into(),
                ));
            }
        }
    }

    /// Replaces a reservation by the actual cost. Call it after the cost is committed to
    /// the ledger (see docs/cluster.md). If Redis does not answer, the settle stays with
    /// this replica (its reservation still held and renewed) and is retried by `tick`.
    /// A request served from a slice is settled in the slice; the slice itself once it
    /// is closed and its last request settled.
    pub async fn settle(&self, reservation: Reservation, cost: Credits) {
        match &reservation.lease {
            Some(slice) => {
                if let Some(spent) = slice.finish(reservation.amount.nanos(), cost.nanos()) {
                    self.settle_in_redis(slice.own(), Credits::from_nanos(spent))
                        .await;
                }
            }
            None => self.settle_in_redis(reservation, cost).await,
        }
    }

    /// Settles the closed slices with nothing in flight (the tick's).
    pub(super) async fn settle_closed_slices(&self) {
        for (slice, spent) in self.slices.sweep(self.slice_life()) {
            self.settle_in_redis(slice.own(), Credits::from_nanos(spent))
                .await;
        }
    }

    /// `settle` of a reservation held in Redis.
    async fn settle_in_redis(&self, reservation: Reservation, cost: Credits) {
        if self
            .flights
            .settling(&reservation.id, cost.nanos())
            .is_none()
        {
            // Not held here (cannot happen): settle in the current epoch all the same.
            let (epoch, _) = self.flights.epoch();
            self.flights.hold(
                &reservation.id,
                Flight {
                    account: reservation.account,
                    budget: Arc::from(budget_name(reservation.key, reservation.window.as_ref())),
                    amount: reservation.amount.nanos(),
                    epoch,
                    held: true,
                    settle: Some(Retry::new(cost.nanos())),
                    registering: false,
                },
            );
        }
        for _ in 0..3 {
            match self.settle_once(&reservation, cost).await {
                Ok(SettleOutcome::Counted | SettleOutcome::AlreadyCounted) => {
                    if self.flights.get(&reservation.id).is_none() {
                        return;
                    }
                    // Counted in an epoch Redis has since left, and held in the new one
                    // too: settle it there once its registration is answered.
                    drop(self.adopting.lock().await);
                }
                Ok(SettleOutcome::NewEpoch(epoch)) => {
                    if let Err(e) = self.adopt(&epoch).await {
                        tracing::warn!(error = %e, "moving to a new epoch failed; the settle is retried");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, id = %reservation.id, "settling a shared reservation failed; it is retried");
                    return;
                }
            }
        }
    }

    /// Runs the settle script once for `reservation` at `cost`, in the epoch its
    /// reservation is held in. Running it again counts nothing more.
    pub async fn settle_once(
        &self,
        reservation: &Reservation,
        cost: Credits,
    ) -> Result<SettleOutcome, ClusterError> {
        let flight = self.flights.get(&reservation.id);
        let epoch = match &flight {
            Some(f) => f.epoch.clone(),
            None => self.flights.epoch().0,
        };
        // Charged to the budget of the window the request was reserved in.
        let budget = budget_name(reservation.key, reservation.window.as_ref());
        self.settle_in(
            &reservation.id,
            reservation.account,
            &budget,
            cost.nanos(),
            &epoch,
        )
        .await
    }

    pub(super) async fn settle_in(
        &self,
        id: &str,
        account: AccountId,
        budget: &str,
        cost: i64,
        epoch: &Arc<str>,
    ) -> Result<SettleOutcome, ClusterError> {
        let names = Names::new(epoch);
        let seen = {
            let (current, seen) = self.flights.epoch();
            if current == *epoch {
                seen
            } else {
                0
            }
        };
        let mut call = self.scripts.settle.prepare_invoke();
        call.key(names.counter())
            .key(names.account(account))
            .key(names.budget(budget))
            .key(names.leases(account))
            .key(names.data(account))
            .key(names.markers(account))
            .key(names.sync_flag(account))
            .key(names.sync_log(account))
            .arg(&**epoch)
            .arg(seen)
            .arg(id)
            .arg(cost);
        let reply = self.call(call, epoch).await?;
        let outcome = match reply.status() {
            "ok" => SettleOutcome::Counted,
            "dup" => SettleOutcome::AlreadyCounted,
            "epoch" => return Ok(SettleOutcome::NewEpoch(reply.text(2).to_string())),
            other => return Err(ClusterError::Answer(other.to_string())),
        };
        self.flights.settled(id, epoch);
        Ok(outcome)
    }

    /// Budget loads run here (each loads one or more keys), for diagnostics.
    pub fn loads_run(&self) -> u64 {
        self.loads_run.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reservations held here that a renewal found with their lease run out (given back
    /// while their request ran), for diagnostics.
    pub fn leases_lost(&self) -> u64 {
        self.leases_lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks here that found a loaded budget differing from the ledger (and repaired it),
    /// for diagnostics.
    pub fn repairs(&self) -> u64 {
        self.repairs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (reservations held here, settles waiting for Redis), for diagnostics.
    pub fn in_flight(&self) -> (usize, usize) {
        self.flights.counts()
    }

    /// Makes the account's check due at the next tick (a slice's lease ran out and the
    /// check run at once did not finish).
    pub(super) fn check_soon(&self, account: AccountId) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.insert(account, Instant::now());
    }

    /// (open slices, closed ones waiting for their requests), for diagnostics.
    pub fn slices(&self) -> (usize, usize) {
        self.slices.counts()
    }

    /// Notes an account used here, so that it gets checked against the ledger.
    pub(super) fn touch(&self, account: AccountId) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched
            .entry(account)
            .or_insert_with(|| Instant::now() + self.check_every);
    }

    /// Follows a key's new limit (also before the key is loaded: a load keeps it).
    pub async fn key_changed(&self, key: &KeyRecord) -> Result<(), ClusterError> {
        self.slices.close_key(key.id);
        let limit = key
            .credit_limit
            .map_or_else(|| "none".to_string(), |l| l.nanos().to_string());
        let (epoch, _) = self.flights.epoch();
        if epoch.is_empty() {
            // No epoch known yet: the first load reads the limit from the database.
            return Ok(());
        }
        let window = key.limit_reset.map(|r| r.window_at(self.clock.now()));
        let budget = budget_name(key.id, window.as_ref());
        let mut conn = self.cluster.conn.clone();
        timed(
            redis::cmd("HSET")
                .arg(Names::new(&epoch).budget(&budget))
                .arg("limit")
                .arg(limit)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Forgets a deleted key's budget.
    pub async fn key_deleted(&self, id: KeyId) -> Result<(), ClusterError> {
        self.slices.close_key(id);
        let (epoch, _) = self.flights.epoch();
        let names = Names::new(&epoch);
        let at = self.clock.now();
        let mut del = redis::cmd("DEL");
        del.arg(names.key(id));
        // The current window of each kind (older ones expire on their own).
        for reset in LimitReset::ALL {
            del.arg(names.budget(&budget_name(id, Some(&reset.window_at(at)))));
        }
        let mut conn = self.cluster.conn.clone();
        timed(del.query_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Processes the account's due expiries, keeping what every replica's requests in
    /// flight hold (the account's `reserved` in Redis), and copies the result to Redis.
    pub async fn settle_credits(
        &self,
        account: AccountId,
    ) -> Result<Option<crate::store::Account>, ReserveError> {
        let Some(reserved) = self.reserved(account).await.map_err(unavailable)? else {
            // No epoch known yet: what other replicas hold is unknown, so nothing expires
            // here; a replica that knows it processes the expiry within a second.
            return Ok(self.store.account(account).await?);
        };
        let settled = self
            .store
            .settle_credits(account, crate::now(), Credits::from_nanos(reserved))
            .await?;
        if let Some(settled) = &settled {
            self.set_granted(settled).await.map_err(unavailable)?;
        }
        Ok(settled)
    }

    /// What the account's reservations hold across replicas (0 when not loaded; `None`
    /// while this replica knows no epoch).
    async fn reserved(&self, account: AccountId) -> Result<Option<i64>, ClusterError> {
        let (epoch, _) = self.flights.epoch();
        if epoch.is_empty() {
            return Ok(None);
        }
        let mut conn = self.cluster.conn.clone();
        let reserved: Option<i64> = timed(
            redis::cmd("HGET")
                .arg(Names::new(&epoch).account(account))
                .arg("reserved")
                .query_async(&mut conn),
        )
        .await?;
        Ok(Some(reserved.unwrap_or(0).max(0)))
    }

    /// Sets the shared budget's grants (net of expired remainders), if it is loaded.
    pub(super) async fn set_granted(
        &self,
        account: &crate::store::Account,
    ) -> Result<(), ClusterError> {
        let (epoch, _) = self.flights.epoch();
        if epoch.is_empty() {
            return Ok(());
        }
        let names = Names::new(&epoch);
        let mut conn = self.cluster.conn.clone();
        timed(
            self.scripts
                .set_if_loaded
                .key(names.account(account.id))
                .arg("granted")
                .arg(account.net_granted().nanos())
                .arg("granted")
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }
}
