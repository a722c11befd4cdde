//! Expiring credits on the real stores: random histories of grants (some expiring),
//! corrections, charges through the usage ledger and a clock that moves, checked after
//! every step against an independent model (src/credits.rs is not used by it).

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tollgate::billing::Credits;
use tollgate::store::{AccountId, GrantRefused, KeyId, NewGrant, Store, StoreError};

use crate::harness::*;

#[derive(Debug, Clone)]
enum Step {
    Grant { amount: i64, lifetime: Option<i64> },
    Charge(i64),
    Debit(i64),
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1..1_000i64, proptest::option::of(1..40i64))
            .prop_map(|(amount, lifetime)| Step::Grant { amount, lifetime }),
        4 => (1..500i64).prop_map(Step::Charge),
        1 => (1..300i64).prop_map(Step::Debit),
        3 => (1..25i64).prop_map(Step::Wait),
    ]
}

/// Each charge or debit consumes at once, earliest expiry first, among the grants
/// unexpired at its time; beyond them it is debt, which the next grant pays; a grant's
/// remainder leaves at its expiry.
#[derive(Default)]
struct Model {
    now: i64,
    /// (id, remaining, expires_at)
    grants: Vec<(i64, i64, Option<i64>)>,
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

async fn check(
    store: &Arc<dyn Store>,
    account: AccountId,
    model: &Model,
) -> Result<(), TestCaseError> {
    let settled = store
        .settle_credits(account, model.now, Credits::ZERO)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .ok_or_else(|| TestCaseError::fail("account vanished"))?;
    prop_assert_eq!(settled.charged.nanos(), model.charged);
    prop_assert_eq!(settled.expired.nanos(), model.expired);
    prop_assert_eq!(settled.balance().nanos(), model.balance());
    prop_assert_eq!(
        settled.granted.nanos() - settled.charged.nanos() - settled.expired.nanos(),
        model.granted - model.charged - model.expired
    );
    let grants = store
        .credit_grants(account)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (id, remaining, _) in &model.grants {
        let g = grants
            .iter()
            .find(|g| g.id == *id)
            .ok_or_else(|| TestCaseError::fail(format!("grant {id} not listed")))?;
        prop_assert_eq!(g.remaining().nanos(), *remaining, "grant {}", id);
    }
    let unexpired: i64 = grants
        .iter()
        .filter(|g| g.expires_at.is_none_or(|e| e > model.now))
        .map(|g| g.remaining().nanos())
        .sum();
    prop_assert_eq!(unexpired - model.debt, settled.balance().nanos());
    let next = model
        .grants
        .iter()
        .filter(|g| g.1 > 0)
        .filter_map(|g| g.2)
        .min();
    prop_assert_eq!(settled.next_expiry, next);
    Ok(())
}

async fn run_history(
    store: Arc<dyn Store>,
    account: AccountId,
    key: KeyId,
    case: usize,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let mut model = Model {
        now: T0,
        ..Model::default()
    };
    let fail = |e: StoreError| TestCaseError::fail(e.to_string());
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Grant { amount, lifetime } => {
                let expires_at = lifetime.map(|l| model.now + l);
                let grant = NewGrant {
                    amount: nanos(amount),
                    note: Some(format!("step {i}")),
                    expires_at,
                };
                let id = store
                    .add_grant(account, &grant, model.now)
                    .await
                    .map_err(fail)?;
                model.granted += amount;
                model.grants.push((id, amount, expires_at));
                let debt = std::mem::take(&mut model.debt);
                model.consume(debt);
            }
            Step::Charge(cost) => {
                let id = format!("c{case}-{}-{i}", account.0);
                let r = record(&id, account, key, "m", cost, model.now);
                store.record_usage(&[r]).await.map_err(fail)?;
                model.charged += cost;
                model.consume(cost);
            }
            Step::Debit(amount) => {
                let grant = NewGrant {
                    amount: nanos(-amount),
                    note: Some("correction".into()),
                    expires_at: None,
                };
                match store.add_grant(account, &grant, model.now).await {
                    Ok(_) => {
                        prop_assert!(model.balance() >= amount, "a correction overdrew");
                        model.granted -= amount;
                        model.consume(amount);
                    }
                    Err(StoreError::Grant(GrantRefused::Overdraw { balance })) => {
                        prop_assert!(model.balance() < amount, "a correction was refused");
                        prop_assert_eq!(balance.nanos(), model.balance().max(0));
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
            Step::Wait(seconds) => model.advance(model.now + seconds),
        }
        check(&store, account, &model).await?;
    }
    Ok(())
}

/// Random histories: the identity balance = Σ unexpired remainders = grants − charges −
/// expired remainders holds after every step, to the unit, and every grant's remainder
/// is the model's (so grants are consumed earliest expiry first).
pub async fn expiring_credits_follow_the_model(db: TestDb) {
    let store = db.open().await;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&proptest::collection::vec(step(), 1..40), |steps| {
            let case = uuid_like() as usize;
            let store = store.clone();
            handle.block_on(async {
                let name = format!("acct-{case}");
                let account = store.create_account(&name, T0).await.expect("account");
                let key = inference_key(&store, account.id, &name).await;
                run_history(store, account.id, key, case, steps).await
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    })
    .await
    .expect("the property runner panicked");
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Requests in flight at an expiry keep what they hold; it expires once they are done.
pub async fn an_expiry_keeps_what_requests_in_flight_hold(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let grant = |amount: i64, expires_at: Option<i64>| NewGrant {
        amount: nanos(amount),
        note: None,
        expires_at,
    };
    store
        .add_grant(acme.id, &grant(1_000, Some(T0 + 60)), T0)
        .await
        .expect("grant");
    store
        .add_grant(acme.id, &grant(500, None), T0)
        .await
        .expect("grant");
    store
        .record_usage(&[record("a", acme.id, key, "m", 100, T0 + 1)])
        .await
        .expect("charge");
    // At the expiry, requests in flight hold 300: that much of the grant stays.
    let at_expiry = store
        .settle_credits(acme.id, T0 + 60, nanos(300))
        .await
        .expect("settle")
        .expect("account");
    assert_eq!(at_expiry.expired, nanos(600));
    assert_eq!(at_expiry.balance(), nanos(800));
    assert_eq!(
        at_expiry.next_expiry,
        Some(T0 + 60),
        "the kept part is still due"
    );
    // They finish, charged 250 (from the kept part); the other 50 expire.
    store
        .record_usage(&[record("b", acme.id, key, "m", 250, T0 + 61)])
        .await
        .expect("charge");
    let after = store
        .settle_credits(acme.id, T0 + 62, nanos(0))
        .await
        .expect("settle")
        .expect("account");
    assert_eq!(after.expired, nanos(650));
    assert_eq!(
        after.balance(),
        nanos(500),
        "the grant without expiry is untouched"
    );
    assert_eq!(after.next_expiry, None);
    let grants = store.credit_grants(acme.id).await.expect("grants");
    let expiring = grants
        .iter()
        .find(|g| g.expires_at.is_some())
        .expect("listed");
    assert_eq!(
        (expiring.consumed, expiring.expired, expiring.remaining()),
        (nanos(350), nanos(650), nanos(0))
    );
    // A settlement with more in flight later never brings expired credits back.
    let again = store
        .settle_credits(acme.id, T0 + 63, nanos(10_000))
        .await
        .expect("settle")
        .expect("account");
    assert_eq!(again.expired, nanos(650));
}

/// Charges, grants and settlements at once: the identity holds afterwards, exactly.
pub async fn concurrent_charges_grants_and_expiries_stay_exact(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let mut tasks = Vec::new();
    for t in 0..4i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25i64 {
                let now = T0 + i;
                match (t + i) % 3 {
                    0 => {
                        let grant = NewGrant {
                            amount: nanos(1_000 + i),
                            note: None,
                            expires_at: Some(now + 5 + t),
                        };
                        store.add_grant(acme.id, &grant, now).await.expect("grant");
                    }
                    1 => {
                        let id = format!("r{t}-{i}");
                        store
                            .record_usage(&[record(&id, acme.id, key, "m", 300 + i, now)])
                            .await
                            .expect("charge");
                    }
                    _ => {
                        store
                            .settle_credits(acme.id, now, Credits::ZERO)
                            .await
                            .expect("settle");
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let settled = store
        .settle_credits(acme.id, T0 + 1_000, Credits::ZERO)
        .await
        .expect("settle")
        .expect("account");
    let grants = store.credit_grants(acme.id).await.expect("grants");
    let consumed: i64 = grants.iter().map(|g| g.consumed.nanos()).sum();
    let expired: i64 = grants.iter().map(|g| g.expired.nanos()).sum();
    let granted: i64 = grants.iter().map(|g| g.amount.nanos()).sum();
    assert_eq!(expired, settled.expired.nanos());
    assert_eq!(granted, settled.granted.nanos());
    // Every grant has expired: whatever was not consumed left; beyond that is debt.
    assert!(grants.iter().all(|g| g.remaining() == Credits::ZERO));
    assert_eq!(consumed + expired, granted);
    assert_eq!(
        settled.balance().nanos(),
        granted - settled.charged.nanos() - expired
    );
    assert!(consumed <= settled.charged.nanos());
}
