//! An answer withheld because its usage record was not committed in time: its
//! reservation holds the worst case in Redis until the record reaches the ledger, and is
//! then settled once at the record's cost (before, it was renewed for as long as the
//! replica lived and never settled).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::billing::Credits;
use tollgate::cluster::{Cluster as Shared, SharedBudgets};
use tollgate::store::NewGrant;

use crate::support::*;

#[tokio::test]
async fn a_withheld_answer_is_settled_once_its_record_reaches_the_ledger() {
    let redis = PrivateRedis::start().await;
    let db = Database::create().await;
    let store = tollgate::store::open(&db.url).await.expect("store");
    let now = tollgate::now();
    let account = store.create_account("acme", now).await.expect("account");
    let a = account.id.0;
    store
        .add_grant(
            account.id,
            &NewGrant {
                amount: Credits::from_nanos(10_000),
                note: None,
                expires_at: None,
            },
            now,
        )
        .await
        .expect("grant");
    let key = store
        .create_key(new_key(account.id, "k", None, now))
        .await
        .expect("key");
    let cluster = Shared::connect(&redis.url, &db.url).await.expect("connect");
    let budgets = Arc::new(SharedBudgets::new(
        cluster,
        store.clone(),
        Duration::from_secs(60),
        Duration::from_secs(3600),
        tollgate::clock::Clock::system(),
    ));
    let n = Credits::from_nanos;
    let reservation = budgets.reserve(&key, n(1_000), "req_w").await.expect("w");
    assert_eq!(redis.account_budget(a).await, [10_000, 0, 1_000]);

    // The answer was withheld: its record is still on its way to the ledger.
    let waiting = {
        let budgets = budgets.clone();
        tokio::spawn(async move { budgets.settle_when_recorded(reservation, n(700)).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        redis.account_budget(a).await,
        [10_000, 0, 1_000],
        "the worst case stays held while the ledger lacks the record"
    );

    store
        .record_usage(&[record("req_w", a, key.id.0, 700)])
        .await
        .expect("commit");
    let committed = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("settled in time")
        .expect("task");
    println!("settled {:?} after the commit", committed.elapsed());
    assert_eq!(redis.account_budget(a).await, [10_000, 700, 0]);
    assert_eq!(budgets.in_flight(), (0, 0), "nothing is held any more");
}
