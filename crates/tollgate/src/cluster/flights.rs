//! What this replica has in flight in the shared budgets: the reservations it holds
//! (renewed while their requests run, registered again when Redis loses its data),
//! the settles that wait for another attempt, and the epoch of Redis's data it knows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::AccountId;

/// First wait before a settle that failed is tried again; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// One reservation of this replica.
#[derive(Debug, Clone)]
pub(super) struct Flight {
    pub account: AccountId,
    /// The name of the key's budget it is held in (see `names::budget_name`).
    pub budget: Arc<str>,
    pub amount: i64,
    /// The epoch the reservation is held in.
    pub epoch: Arc<str>,
    /// Known to be held. `false` for a reservation whose answer never came: it may
    /// have run, so it is released (a settle of 0) but never registered again.
    pub held: bool,
    /// Set once the request is settled: the cost, until Redis has counted it.
    pub settle: Option<Retry>,
}

/// A settle waiting for Redis.
#[derive(Debug, Clone)]
pub(super) struct Retry {
    pub cost: i64,
    next: Instant,
    backoff: Duration,
}

impl Retry {
    /// A settle at `cost`, first tried again after `RETRY_FIRST`.
    pub fn new(cost: i64) -> Retry {
        Retry {
            cost,
            next: Instant::now() + RETRY_FIRST,
            backoff: RETRY_FIRST,
        }
    }
}

/// A settle to try: the request id, its flight (with the cost in `settle`).
pub(super) type Due = (String, Flight);

struct State {
    epoch: Arc<str>,
    /// The highest write counter seen in `epoch` (to notice a Redis that went back in time).
    seen: u64,
    flights: HashMap<String, Flight>,
    /// When each unheld flight was given up (they are dropped after a lease).
    unheld_since: HashMap<String, Instant>,
}

/// This replica's flights and epoch.
pub(super) struct Flights {
    state: Mutex<State>,
}

impl Flights {
    /// Nothing in flight, no epoch known yet.
    pub fn new() -> Flights {
        Flights {
            state: Mutex::new(State {
                epoch: Arc::from(""),
                seen: 0,
                flights: HashMap::new(),
                unheld_since: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a few map operations; a panic cannot leave one half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch this replica works in and the highest counter it saw there.
    pub fn epoch(&self) -> (Arc<str>, u64) {
        let state = self.lock();
        (state.epoch.clone(), state.seen)
    }

    /// Notes a write counter answered in `epoch`.
    pub fn saw(&self, epoch: &str, seq: u64) {
        let mut state = self.lock();
        if &*state.epoch == epoch && seq > state.seen {
            state.seen = seq;
        }
    }

    /// Records a reservation; answers whether it was made in an epoch this replica
    /// has already left (it must then be registered again).
    pub fn hold(&self, id: &str, flight: Flight) -> bool {
        let mut state = self.lock();
        let stale = flight.epoch != state.epoch;
        if !flight.held {
            state.unheld_since.insert(id.to_string(), Instant::now());
        }
        state.flights.insert(id.to_string(), flight);
        stale
    }

    /// Marks a reservation settled at `cost`, to be counted by Redis; answers its flight.
    pub fn settling(&self, id: &str, cost: i64) -> Option<Flight> {
        let mut state = self.lock();
        let flight = state.flights.get_mut(id)?;
        flight.settle = Some(Retry::new(cost));
        Some(flight.clone())
    }

    /// The flight of a request.
    pub fn get(&self, id: &str) -> Option<Flight> {
        self.lock().flights.get(id).cloned()
    }

    /// Forgets a request whose settle Redis counted.
    pub fn done(&self, id: &str) {
        let mut state = self.lock();
        state.flights.remove(id);
        state.unheld_since.remove(id);
    }

    /// Reservations not yet registered in `target`, as (id, flight). Unheld ones of an
    /// older epoch are dropped (a new epoch holds nothing for them). If there are none,
    /// `target` becomes this replica's epoch (in the same step, so a reservation recorded
    /// later in an older epoch is seen as stale by `hold`).
    pub fn stale_or_adopt(&self, target: &Arc<str>) -> Option<Vec<(String, Flight)>> {
        let mut state = self.lock();
        let State {
            flights,
            unheld_since,
            ..
        } = &mut *state;
        flights.retain(|id, f| {
            let keep = f.held || f.epoch == *target;
            if !keep {
                unheld_since.remove(id);
            }
            keep
        });
        let stale: Vec<(String, Flight)> = flights
            .iter()
            .filter(|(_, f)| f.epoch != *target)
            .map(|(id, f)| (id.clone(), f.clone()))
            .collect();
        if stale.is_empty() {
            if state.epoch != *target {
                state.epoch = target.clone();
                state.seen = 0;
            }
            None
        } else {
            Some(stale)
        }
    }

    /// Notes that these reservations are now registered in `epoch`.
    pub fn registered(&self, ids: &[String], epoch: &Arc<str>) {
        let mut state = self.lock();
        for id in ids {
            if let Some(f) = state.flights.get_mut(id) {
                f.epoch = epoch.clone();
            }
        }
    }

    /// Whether some reservation is held in another epoch than this replica's.
    pub fn any_stale(&self) -> bool {
        let state = self.lock();
        state.flights.values().any(|f| f.epoch != state.epoch)
    }

    /// The (account, id) of every reservation held in the current epoch.
    pub fn renewals(&self) -> Vec<(AccountId, String)> {
        let state = self.lock();
        state
            .flights
            .iter()
            .filter(|(_, f)| f.held && f.epoch == state.epoch)
            .map(|(id, f)| (f.account, id.clone()))
            .collect()
    }

    /// Settles whose next attempt is due (their next attempt is pushed back), and
    /// unheld flights older than `lease` dropped (their lease gave them back).
    pub fn due(&self, lease: Duration) -> Vec<Due> {
        let now = Instant::now();
        let mut state = self.lock();
        let old: Vec<String> = state
            .unheld_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) > lease)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            state.unheld_since.remove(&id);
            state.flights.remove(&id);
        }
        let mut due = Vec::new();
        for (id, f) in state.flights.iter_mut() {
            if let Some(retry) = &mut f.settle {
                if retry.next <= now {
                    retry.backoff = (retry.backoff * 2).min(RETRY_MAX);
                    retry.next = now + retry.backoff;
                    due.push((id.clone(), f.clone()));
                }
            }
        }
        due
    }

    /// Counts of (held reservations, settles waiting), for diagnostics.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        let waiting = state
            .flights
            .values()
            .filter(|f| f.settle.is_some())
            .count();
        (state.flights.len(), waiting)
    }
}
