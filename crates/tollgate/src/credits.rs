//! Expiring credits: which grant a charge consumes (the one that expires first) and what
//! a grant leaves behind when it expires. Pure arithmetic over an account's grants; the
//! stores load the rows, run it inside one transaction and write back what changed.
//!
//! The ledger of an account: grants (positive rows of `credit_grants`, each with an
//! optional expiry), debits (negative rows: corrections) and charges (the usage ledger,
//! summed in `accounts.charged`). *Demand* is charges plus debits. Demand is *allocated*
//! to grants lazily, earliest expiry first (grants without expiry last, ties by id):
//! before a grant is added or corrected, before grants expire, and when the grants are
//! listed. A grant's remainder is `amount - consumed - expired`, and at every instant
//!
//! ```text
//! balance = Σ remainders − unallocated demand = grants − debits − charges − expired
//! ```
//!
//! A grant expires by [`CreditLedger::expire`]: demand is allocated first (charges
//! committed before the expiry was processed count before it), then its remainder
//! leaves the balance, except what requests in flight may still need (at most their
//! reservations, earliest expiry first): that part stays until they are done and
//! expires at the next settlement. So a request reserved before an expiry never takes
//! the balance below zero by finishing after it. docs/credits.md has the details.

/// One row of `credit_grants` as the ledger needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub id: i64,
    /// More than zero for a grant; below zero for a debit (a correction).
    pub amount: i64,
    pub expires_at: Option<i64>,
    /// Demand allocated to this grant.
    pub consumed: i64,
    /// What left the balance when it expired.
    pub expired: i64,
}

impl GrantRow {
    /// What is left of a grant (zero for a debit).
    pub fn remaining(&self) -> i64 {
        if self.amount > 0 {
            self.amount - self.consumed - self.expired
        } else {
            0
        }
    }

    /// Whether the grant's expiry has come at `now`.
    pub fn is_due(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// The order in which demand consumes grants: earliest expiry first, never-expiring
    /// last, then by id.
    fn order(&self) -> (bool, i64, i64) {
        (
            self.expires_at.is_none(),
            self.expires_at.unwrap_or(0),
            self.id,
        )
    }
}

/// An account's open grants (those with a remainder) and its demand totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditLedger {
    /// Charges plus debits, over the account's whole history.
    pub demand: i64,
    /// How much of `demand` has been allocated to grants.
    pub allocated: i64,
    /// The account's grants with a remainder, in any order.
    pub grants: Vec<GrantRow>,
}

/// What a settlement changed: the grants to write back and how much expired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Ids of grants whose `consumed` or `expired` changed.
    pub grants: Vec<i64>,
    /// Expired by this settlement (to add to the account's total).
    pub expired: i64,
}

impl CreditLedger {
    /// Demand not yet allocated to a grant: debt when no grant has a remainder.
    pub fn pending(&self) -> i64 {
        self.demand - self.allocated
    }

    /// The balance: remainders minus unallocated demand. May be below zero.
    pub fn balance(&self) -> i64 {
        self.grants.iter().map(GrantRow::remaining).sum::<i64>() - self.pending()
    }

    /// The balance without the remainders of grants due at `now` (what a correction may
    /// take, before their expiry is processed).
    pub fn balance_without_due(&self, now: i64) -> i64 {
        self.grants
            .iter()
            .filter(|g| !g.is_due(now))
            .map(GrantRow::remaining)
            .sum::<i64>()
            - self.pending()
    }

    /// The earliest expiry among grants with a remainder.
    pub fn next_expiry(&self) -> Option<i64> {
        self.grants
            .iter()
            .filter(|g| g.remaining() > 0)
            .filter_map(|g| g.expires_at)
            .min()
    }

    fn sort(&mut self) {
        self.grants.sort_by_key(GrantRow::order);
    }

    /// Allocates pending demand to the grants, earliest expiry first. Demand beyond every
    /// remainder stays pending (debt) and is allocated to the next grant.
    pub fn allocate(&mut self, changes: &mut Changes) {
        self.sort();
        let mut pending = self.pending();
        for g in &mut self.grants {
            if pending <= 0 {
                break;
            }
            let take = pending.min(g.remaining());
            if take > 0 {
                g.consumed += take;
                self.allocated += take;
                pending -= take;
                note(changes, g.id);
            }
        }
    }

    /// Processes the expiries due at `now`: pending demand is allocated first, then each
    /// due grant's remainder expires, except up to `in_flight` (what requests in flight
    /// hold), kept for them, earliest expiry first. A kept part never grows: it only
    /// shrinks by what is charged to it and by later settlements.
    pub fn expire(&mut self, now: i64, in_flight: i64, changes: &mut Changes) {
        self.allocate(changes);
        let mut keep = in_flight.max(0);
        for g in &mut self.grants {
            if !g.is_due(now) {
                continue;
            }
            let remaining = g.remaining();
            if remaining <= 0 {
                continue;
            }
            let kept = remaining.min(keep);
            keep -= kept;
            let gone = remaining - kept;
            if gone > 0 {
                g.expired += gone;
                changes.expired += gone;
                note(changes, g.id);
            }
        }
    }
}

fn note(changes: &mut Changes, id: i64) {
    if !changes.grants.contains(&id) {
        changes.grants.push(id);
    }
}

/// Parses a `--expires-in` duration: a whole number followed by `s`, `m`, `h`, `d` or
/// `w` (`60d`, `12h`). Refuses zero, signs, fractions and anything past ten years.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "'{text}' is not a duration: a whole number and a unit (s, m, h, d, w), e.g. 60d"
            ))
        }
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{text}' is not a duration: a whole number and a unit (s, m, h, d, w), e.g. 60d"
        ));
    }
    const MAX: i64 = 10 * 366 * 86_400;
    let n: i64 = number
        .parse()
        .map_err(|_| format!("'{text}' is too long (at most ten years)"))?;
    match n.checked_mul(seconds_per) {
        Some(0) => Err("a duration must be more than zero".to_string()),
        Some(s) if s <= MAX => Ok(s),
        _ => Err(format!("'{text}' is too long (at most ten years)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant(id: i64, amount: i64, expires_at: Option<i64>) -> GrantRow {
        GrantRow {
            id,
            amount,
            expires_at,
            consumed: 0,
            expired: 0,
        }
    }

    #[test]
    fn demand_consumes_the_grant_that_expires_first() {
        let mut ledger = CreditLedger {
            demand: 7,
            allocated: 0,
            grants: vec![
                grant(1, 10, None),
                grant(2, 5, Some(200)),
                grant(3, 5, Some(100)),
            ],
        };
        let mut changes = Changes::default();
        ledger.allocate(&mut changes);
        let consumed: Vec<(i64, i64)> = ledger.grants.iter().map(|g| (g.id, g.consumed)).collect();
        assert_eq!(consumed, vec![(3, 5), (2, 2), (1, 0)]);
        assert_eq!(ledger.balance(), 13);
        assert_eq!(changes.grants, vec![3, 2]);
    }

    #[test]
    fn an_expiry_keeps_what_requests_in_flight_hold() {
        let mut ledger = CreditLedger {
            demand: 2,
            allocated: 0,
            grants: vec![grant(1, 10, Some(100)), grant(2, 3, None)],
        };
        let mut changes = Changes::default();
        ledger.expire(100, 3, &mut changes);
        // 2 consumed, 3 kept for the requests in flight, 5 expired.
        assert_eq!(ledger.grants[0].consumed, 2);
        assert_eq!(ledger.grants[0].expired, 5);
        assert_eq!(ledger.balance(), 6);
        // The requests settle at 1: charged to the kept part, the rest then expires.
        ledger.demand += 1;
        let mut changes = Changes::default();
        ledger.expire(101, 0, &mut changes);
        assert_eq!(
            (ledger.grants[0].consumed, ledger.grants[0].expired),
            (3, 7)
        );
        assert_eq!(changes.expired, 2);
        assert_eq!(ledger.balance(), 3);
    }

    #[test]
    fn debt_is_paid_by_the_next_grant() {
        let mut ledger = CreditLedger {
            demand: 4,
            allocated: 0,
            grants: vec![grant(1, 3, None)],
        };
        let mut changes = Changes::default();
        ledger.allocate(&mut changes);
        assert_eq!(ledger.balance(), -1);
        ledger.grants.push(grant(2, 10, Some(50)));
        ledger.allocate(&mut changes);
        assert_eq!(
            ledger.grants.iter().find(|g| g.id == 2).map(|g| g.consumed),
            Some(1)
        );
        assert_eq!(ledger.balance(), 9);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60d"), Ok(60 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "1.5d",
            "60",
            "60y",
            "+3d",
            "99999999999999999999d",
            "4000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Step {
        Grant { amount: i64, lifetime: Option<i64> },
        Charge(i64),
        Wait(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1..1_000i64, proptest::option::of(1..50i64))
                .prop_map(|(amount, lifetime)| Step::Grant { amount, lifetime }),
            (1..600i64).prop_map(Step::Charge),
            (1..30i64).prop_map(Step::Wait),
        ]
    }

    /// An independent model: every charge consumes at once, earliest expiry first, among
    /// the grants unexpired at its time; a grant's remainder vanishes at its expiry.
    #[derive(Default)]
    struct Model {
        now: i64,
        grants: Vec<(i64, i64, Option<i64>)>, // (id, remaining, expires_at)
        debt: i64,
        granted: i64,
        charged: i64,
        expired: i64,
    }

    impl Model {
        fn advance(&mut self, to: i64) {
            self.now = to;
            for g in &mut self.grants {
                if g.2.is_some_and(|e| e <= to) && g.1 > 0 {
                    self.expired += g.1;
                    g.1 = 0;
                }
            }
        }
        fn consume(&mut self, mut amount: i64) {
            self.grants
                .sort_by_key(|g| (g.2.is_none(), g.2.unwrap_or(0), g.0));
            for g in &mut self.grants {
                let take = amount.min(g.1);
                g.1 -= take;
                amount -= take;
            }
            self.debt += amount;
        }
        fn balance(&self) -> i64 {
            self.grants.iter().map(|g| g.1).sum::<i64>() - self.debt
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn the_ledger_matches_the_model_after_every_step(steps in proptest::collection::vec(step(), 1..60)) {
            let mut ledger = CreditLedger { demand: 0, allocated: 0, grants: vec![] };
            let mut model = Model::default();
            let mut next_id = 1;
            for step in steps {
                let mut changes = Changes::default();
                match step {
                    Step::Grant { amount, lifetime } => {
                        ledger.allocate(&mut changes);
                        let expires_at = lifetime.map(|l| model.now + l);
                        ledger.grants.push(grant(next_id, amount, expires_at));
                        ledger.allocate(&mut changes);
                        model.granted += amount;
                        // Debt is paid by the new grant.
                        model.grants.push((next_id, amount, expires_at));
                        let debt = std::mem::take(&mut model.debt);
                        model.consume(debt);
                        next_id += 1;
                    }
                    Step::Charge(cost) => {
                        ledger.demand += cost;
                        model.charged += cost;
                        let before: Vec<(i64, i64, Option<i64>)> = {
                            let mut l = ledger.clone();
                            l.sort();
                            l.grants.iter().map(|g| (g.id, g.remaining(), g.expires_at)).collect()
                        };
                        ledger.allocate(&mut changes);
                        // Earliest expiry first: a grant was consumed only if every grant
                        // that expires before it is used up.
                        let after: Vec<(i64, i64)> = ledger.grants.iter().map(|g| (g.id, g.remaining())).collect();
                        for (i, (id, was, _)) in before.iter().enumerate() {
                            let now = after.iter().find(|a| a.0 == *id).map_or(0, |a| a.1);
                            if now < *was {
                                for (earlier, _, _) in &before[..i] {
                                    let left = after.iter().find(|a| a.0 == *earlier).map_or(0, |a| a.1);
                                    prop_assert_eq!(left, 0, "grant {} consumed before {}", id, earlier);
                                }
                            }
                        }
                        model.consume(cost);
                    }
                    Step::Wait(seconds) => {
                        model.advance(model.now + seconds);
                        ledger.expire(model.now, 0, &mut changes);
                    }
                }
                let expired: i64 = ledger.grants.iter().map(|g| g.expired).sum();
                prop_assert_eq!(expired, model.expired);
                prop_assert_eq!(ledger.balance(), model.balance());
                prop_assert_eq!(ledger.balance(), model.granted - model.charged - model.expired);
                let unexpired: i64 = ledger.grants.iter().filter(|g| !g.is_due(model.now)).map(GrantRow::remaining).sum();
                prop_assert_eq!(ledger.balance(), unexpired - ledger.pending());
            }
        }
    }
}
