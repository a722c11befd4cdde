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
    /// Being registered in a newer epoch (`adopt`): until the registration is answered,
    /// a settle counted in the old epoch does not finish the flight.
    pub registering: bool,
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

    /// Forgets a request, wherever it is held.
    pub fn forget(&self, id: &str) {
        let mut state = self.lock();
        state.flights.remove(id);
        state.unheld_since.remove(id);
    }

    /// Notes that Redis counted the settle of `id` in `epoch`, and forgets the request,
    /// unless it is (or is being) registered in a newer epoch: a settle counted in the old
    /// epoch just before Redis lost its data leaves the reservation held in the new one,
    /// where it must be settled too (or it stays held, its cost already in the ledger).
    /// Answers whether the request is done.
    pub fn settled(&self, id: &str, epoch: &str) -> bool {
        let mut state = self.lock();
        match state.flights.get(id) {
            Some(f) if f.registering || &*f.epoch != epoch => false,
            _ => {
                state.flights.remove(id);
                state.unheld_since.remove(id);
                true
            }
        }
    }

    /// Reservations not yet registered in `target`, as (id, flight), marked as being
    /// registered. Unheld ones of an older epoch are dropped (a new epoch holds nothing
    /// for them). If there are none, `target` becomes this replica's epoch (in the same
    /// step, so a reservation recorded later in an older epoch is seen as stale by `hold`).
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
            .iter_mut()
            .filter(|(_, f)| f.epoch != *target)
            .map(|(id, f)| {
                f.registering = true;
                (id.clone(), f.clone())
            })
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
                f.registering = false;
            }
        }
    }

    /// Ends a move to a new epoch: flights it did not register (it failed, or Redis moved
    /// on again) are no longer being registered.
    pub fn registration_over(&self) {
        for f in self.lock().flights.values_mut() {
            f.registering = false;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(epoch: &Arc<str>) -> Flight {
        Flight {
            account: AccountId(1),
            budget: Arc::from("7"),
            amount: 100,
            epoch: epoch.clone(),
            held: true,
            settle: None,
            registering: false,
        }
    }

    /// Redis lost its data while a settle was on its way: the settle counted in the old
    /// epoch, and its answer came back after the move to the new epoch had taken the
    /// reservation to register it there. Forgetting it then would leave it held in the new
    /// epoch for good (its cost already in the ledger), so it stays until settled there.
    #[test]
    fn a_settle_counted_in_an_old_epoch_does_not_finish_a_reservation_registered_in_a_new_one() {
        let (old, new): (Arc<str>, Arc<str>) = (Arc::from("1"), Arc::from("2"));
        let flights = Flights::new();
        assert!(flights.stale_or_adopt(&old).is_none());
        assert!(!flights.hold("r", flight(&old)));
        flights.settling("r", 40);

        let stale = flights.stale_or_adopt(&new).expect("held in the old epoch");
        assert_eq!(stale.len(), 1);
        // The old epoch's answer arrives while the registration is under way.
        assert!(!flights.settled("r", &old));
        flights.registered(&["r".to_string()], &new);
        // Late, once registered: still not the epoch it is held in.
        assert!(!flights.settled("r", &old));
        let kept = flights.get("r").expect("kept");
        assert_eq!(&*kept.epoch, "2");
        assert_eq!(kept.settle.map(|s| s.cost), Some(40));
        assert!(flights.settled("r", &new));
        assert!(flights.get("r").is_none());
    }

    /// A registration that failed leaves the reservation in its epoch, not being
    /// registered, so a settle there finishes it.
    #[test]
    fn a_failed_registration_leaves_the_flight_settleable_where_it_is() {
        let (old, new): (Arc<str>, Arc<str>) = (Arc::from("1"), Arc::from("2"));
        let flights = Flights::new();
        assert!(flights.stale_or_adopt(&old).is_none());
        assert!(!flights.hold("r", flight(&old)));
        assert!(flights.stale_or_adopt(&new).is_some());
        flights.registration_over();
        assert!(flights.settled("r", &old));
    }
}
