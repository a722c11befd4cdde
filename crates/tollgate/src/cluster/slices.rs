//! Budget slices (docs/cluster.md, "Budget leases"): a replica with steady traffic on a
//! key's budget reserves a slice of it in Redis, a reservation like a request's but
//! `SLICE_REQUESTS` times its worst case, and serves the key's next requests from it in
//! memory, with no Redis call. Their records name the slice (`lease_id`); once the slice
//! is closed and every request it served is in the ledger, it is settled at what they
//! cost, as one request would be. Zero overspend holds as for requests: a slice holds
//! its amount in Redis until settled, and a request spends only what it took from it.
//!
//! A slice stops admitting when a request does not fit in what is left of it, after
//! `life` (at most a third of the lease, so it never admits past a lease the replica may
//! have lost), when its key changes, and when Redis moves to a new epoch. Only a budget
//! with room for `ROOM_SLICES` more slices gets one, so slices do not park the last of
//! a budget; a request refused while slices hold part of it waits for them to close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::billing::meter::Reservation;
use crate::store::KeyId;

/// A slice holds this many times the worst case of the request that opens it.
pub const SLICE_REQUESTS: i64 = 32;
/// Requests on a budget within one second on this replica before it gets a slice.
const HOT: u32 = 16;
/// A slice opens only while the budget's room (as Redis last answered) is at least this
/// many slices beyond it.
const ROOM_SLICES: i64 = 8;
/// The longest a slice admits requests.
pub const SLICE_LIFE: Duration = Duration::from_secs(1);

/// Whether a reservation id is a slice's.
pub fn is_slice(id: &str) -> bool {
    id.starts_with("L:")
}

/// One slice of a budget, held in Redis by its own reservation.
#[derive(Debug)]
pub struct Slice {
    /// The slice's own reservation (its id starts `L:`).
    pub(super) reservation: Reservation,
    opened: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What is left to take.
    free: i64,
    /// What the requests it served cost, once settled.
    spent: i64,
    /// Requests taken and not yet settled.
    in_flight: u32,
    closed: bool,
    /// Handed to the settle (once).
    settling: bool,
}

impl Slice {
    fn new(reservation: Reservation) -> Slice {
        Slice {
            state: Mutex::new(State {
                free: reservation.amount.nanos(),
                ..State::default()
            }),
            reservation,
            opened: Instant::now(),
        }
    }

    pub fn id(&self) -> &str {
        &self.reservation.id
    }

    /// The slice's own reservation, to settle it by.
    pub(super) fn own(&self) -> Reservation {
        let r = &self.reservation;
        Reservation {
            id: r.id.clone(),
            account: r.account,
            key: r.key,
            amount: r.amount,
            at: r.at,
            window: r.window,
            lease: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `amount` for a request, if the slice is open, younger than `life` and has
    /// it; otherwise closes it.
    fn take(&self, amount: i64, life: Duration) -> bool {
        let mut s = self.lock();
        if !s.closed && amount <= s.free && self.opened.elapsed() < life {
            s.free -= amount;
            s.in_flight += 1;
            return true;
        }
        s.closed = true;
        false
    }

    /// A request it served is settled at `cost` (of the `amount` it took). Answers what
    /// the slice spent when it is closed and this was its last request: settle it then.
    pub(super) fn finish(&self, amount: i64, cost: i64) -> Option<i64> {
        let mut s = self.lock();
        s.free += amount - cost;
        s.spent += cost;
        s.in_flight = s.in_flight.saturating_sub(1);
        s.ready()
    }

    /// Stops admitting; answers what it spent if nothing is in flight (settle it then).
    fn close(&self) -> Option<i64> {
        let mut s = self.lock();
        s.closed = true;
        s.ready()
    }

    fn done(&self) -> bool {
        self.lock().settling
    }
}

impl State {
    fn ready(&mut self) -> Option<i64> {
        if self.closed && self.in_flight == 0 && !self.settling {
            self.settling = true;
            return Some(self.spent);
        }
        None
    }
}

/// What a request on a budget does.
pub(super) enum Admit {
    /// Served from this slice.
    Served(Arc<Slice>),
    /// Opens a slice of this amount and is served from it.
    Open(i64),
    /// Reserves for itself alone.
    Alone,
}

/// A budget's traffic here and its open slice.
#[derive(Default)]
struct Entry {
    slice: Option<Arc<Slice>>,
    /// The second (since `Slices::start`) `count` is of.
    second: u64,
    count: u32,
    /// Its room as Redis last answered.
    room: Option<i64>,
    opening: bool,
}

/// This replica's slices, by budget name (`names::budget_name`).
pub(super) struct Slices {
    start: Instant,
    entries: Mutex<HashMap<Arc<str>, Entry>>,
    /// Closed slices not yet handed to their settle.
    closed: Mutex<Vec<Arc<Slice>>>,
}

impl Slices {
    pub fn new() -> Slices {
        Slices {
            start: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            closed: Mutex::new(Vec::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed(&self) -> MutexGuard<'_, Vec<Arc<Slice>>> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a request of worst case `amount` on `budget` does.
    pub fn admit(&self, budget: &Arc<str>, amount: i64, life: Duration) -> Admit {
        let second = self.start.elapsed().as_secs();
        let mut entries = self.entries();
        let entry = entries.entry(budget.clone()).or_default();
        if entry.second != second {
            entry.second = second;
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        if let Some(slice) = &entry.slice {
            if slice.take(amount, life) {
                return Admit::Served(slice.clone());
            }
            let closed = entry.slice.take();
            self.closed().extend(closed);
        }
        let size = amount.saturating_mul(SLICE_REQUESTS);
        let room_for = size.saturating_mul(ROOM_SLICES + 1);
        if amount > 0
            && entry.count >= HOT
            && !entry.opening
            && entry.room.is_some_and(|room| room >= room_for)
        {
            entry.opening = true;
            return Admit::Open(size);
        }
        Admit::Alone
    }

    /// The end of an `Admit::Open`: the slice opened (its first request taking
    /// `amount`), or `None` if it did not.
    pub fn opened(
        &self,
        budget: &Arc<str>,
        slice: Option<(Reservation, i64)>,
    ) -> Option<Arc<Slice>> {
        let mut entries = self.entries();
        let entry = entries.entry(budget.clone()).or_default();
        entry.opening = false;
        let (reservation, amount) = slice?;
        let slice = Arc::new(Slice::new(reservation));
        let taken = slice.take(amount, SLICE_LIFE);
        debug_assert!(taken, "a slice holds its first request");
        if let Some(old) = entry.slice.replace(slice.clone()) {
            old.close();
            self.closed().push(old);
        }
        Some(slice)
    }

    /// Notes a budget's room as Redis answered it.
    pub fn note_room(&self, budget: &Arc<str>, room: i64) {
        if let Some(entry) = self.entries().get_mut(budget) {
            entry.room = Some(room);
        }
    }

    /// Closes the open slices of `key` (its limit changed, or it was deleted).
    pub fn close_key(&self, key: KeyId) {
        self.close_where(|s| s.reservation.key == key);
    }

    /// Closes every open slice (Redis moved to a new epoch).
    pub fn close_all(&self) {
        self.close_where(|_| true);
    }

    fn close_where(&self, which: impl Fn(&Slice) -> bool) {
        let mut entries = self.entries();
        let mut closed = self.closed();
        for entry in entries.values_mut() {
            if entry.slice.as_deref().is_some_and(&which) {
                if let Some(slice) = entry.slice.take() {
                    slice.close();
                    closed.push(slice);
                }
            }
        }
    }

    /// Closes slices older than `life`, forgets budgets idle for two seconds, and
    /// answers the closed slices with nothing in flight, with what they spent: each must
    /// be settled (once; this hands each one out once).
    pub fn sweep(&self, life: Duration) -> Vec<(Arc<Slice>, i64)> {
        let second = self.start.elapsed().as_secs();
        let mut entries = self.entries();
        let mut closed = self.closed();
        entries.retain(|_, entry| {
            if entry
                .slice
                .as_ref()
                .is_some_and(|s| s.opened.elapsed() >= life)
            {
                closed.extend(entry.slice.take());
            }
            entry.slice.is_some() || entry.opening || entry.second + 2 > second
        });
        drop(entries);
        let mut ready = Vec::new();
        for slice in closed.iter() {
            if let Some(spent) = slice.close() {
                ready.push((slice.clone(), spent));
            }
        }
        closed.retain(|s| !s.done());
        ready
    }

    /// (open slices, closed ones not yet settled), for diagnostics.
    pub fn counts(&self) -> (usize, usize) {
        let open = self
            .entries()
            .values()
            .filter(|e| e.slice.is_some())
            .count();
        (open, self.closed().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::Credits;
    use crate::store::AccountId;

    fn own(amount: i64) -> Reservation {
        Reservation {
            id: "L:test".into(),
            account: AccountId(1),
            key: KeyId(7),
            amount: Credits::from_nanos(amount),
            at: 0,
            window: None,
            lease: None,
        }
    }

    fn served(admit: Admit) -> Arc<Slice> {
        match admit {
            Admit::Served(slice) => slice,
            _ => panic!("not served from the slice"),
        }
    }

    /// A budget gets a slice once hot and with room; its requests take from it until one
    /// does not fit, and the closed slice is handed to its settle once, at what it spent.
    #[test]
    fn a_hot_budget_is_served_from_one_slice_settled_once_at_what_it_spent() {
        let slices = Slices::new();
        let budget: Arc<str> = Arc::from("7");
        let life = Duration::from_secs(60);
        for _ in 0..HOT - 1 {
            assert!(matches!(slices.admit(&budget, 10, life), Admit::Alone));
        }
        // Hot, but no room known yet; then too little room for nine slices.
        assert!(matches!(slices.admit(&budget, 10, life), Admit::Alone));
        slices.note_room(&budget, 10 * SLICE_REQUESTS * (ROOM_SLICES + 1) - 1);
        assert!(matches!(slices.admit(&budget, 10, life), Admit::Alone));
        slices.note_room(&budget, 10 * SLICE_REQUESTS * (ROOM_SLICES + 1));
        let Admit::Open(size) = slices.admit(&budget, 10, life) else {
            panic!("no slice opened");
        };
        assert_eq!(size, 10 * SLICE_REQUESTS);
        // While it opens, others reserve alone.
        assert!(matches!(slices.admit(&budget, 10, life), Admit::Alone));
        let first = slices
            .opened(&budget, Some((own(size), 10)))
            .expect("opened");
        let mut taken = vec![first];
        for _ in 1..SLICE_REQUESTS {
            taken.push(served(slices.admit(&budget, 10, life)));
        }
        // Full: the next request closes it and opens the next one (here it fails to).
        assert!(matches!(slices.admit(&budget, 10, life), Admit::Open(_)));
        assert!(slices.opened(&budget, None).is_none());
        assert_eq!(slices.counts(), (0, 1));
        let last = taken.pop().expect("one");
        for slice in &taken {
            assert_eq!(slice.finish(10, 4), None);
        }
        assert!(
            slices.sweep(life).is_empty(),
            "a request is still in flight"
        );
        assert_eq!(last.finish(10, 3), Some(4 * (SLICE_REQUESTS - 1) + 3));
        assert!(slices.sweep(life).is_empty(), "handed out once");
        assert_eq!(slices.counts(), (0, 0));
    }

    /// An idle slice closes at its life's end and the sweep settles it; a key's change
    /// closes its slice at once.
    #[test]
    fn slices_close_at_their_life_end_and_when_their_key_changes() {
        let slices = Slices::new();
        let budget: Arc<str> = Arc::from("7");
        slices.admit(&budget, 10, SLICE_LIFE);
        let slice = slices
            .opened(&budget, Some((own(320), 10)))
            .expect("opened");
        assert_eq!(slice.finish(10, 6), None);
        assert!(slices.sweep(Duration::from_secs(60)).is_empty());
        let ready = slices.sweep(Duration::ZERO);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1, 6);

        let other = slices
            .opened(&budget, Some((own(320), 10)))
            .expect("opened");
        slices.close_key(KeyId(8));
        assert_eq!(slices.counts(), (1, 0));
        slices.close_key(KeyId(7));
        assert_eq!(slices.counts(), (0, 1));
        assert_eq!(other.finish(10, 2), Some(2));
    }
}
