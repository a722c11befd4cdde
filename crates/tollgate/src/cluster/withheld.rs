//! Answers withheld because their usage record was not committed in time (the ledger
//! was unreachable): the record stays queued in the writer and reaches the ledger once it
//! recovers. Until then the reservation, renewed by this replica, holds the cost in Redis
//! (no overspend); once the record is in the ledger, the settle counts it (ledger first,
//! then Redis, as for every request). Before this, such a reservation was renewed for as
//! long as the replica lived and never settled (bench/cluster_faults.py found it).

use std::time::{Duration, Instant};

use super::budgets::SharedBudgets;
use crate::billing::meter::Reservation;
use crate::billing::Credits;

/// How long a reservation waits for its record to reach the ledger. Past it the
/// reservation is let go: its lease runs out and is given back, and the periodic check
/// counts the charge if the record comes later.
const RECORD_PATIENCE: Duration = Duration::from_secs(600);
/// The longest pause between two looks at the ledger.
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl SharedBudgets {
    /// Settles `reservation` at `cost` once its usage record is in the ledger.
    pub async fn settle_when_recorded(&self, reservation: Reservation, cost: Credits) {
        let deadline = Instant::now() + RECORD_PATIENCE;
        let mut pause = Duration::from_millis(200);
        loop {
            tokio::time::sleep(pause).await;
            if let Ok(Some(_)) = self.store.usage_record(&reservation.id).await {
                self.settle(reservation, cost).await;
                return;
            }
            if Instant::now() > deadline {
                tracing::error!(
                    request_id = %reservation.id,
                    "a withheld answer's usage record is not in the ledger after 10 minutes; its reservation is let go (the periodic check counts the charge if it comes)"
                );
                match &reservation.lease {
                    // Its slice spends nothing for it (the check counts it if it comes).
                    Some(_) => self.settle(reservation, Credits::ZERO).await,
                    None => self.flights.forget(&reservation.id),
                }
                return;
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}
