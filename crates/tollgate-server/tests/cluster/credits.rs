//! Expiring credits in cluster mode: when a grant expires, the account's shared budget in
//! Redis drops by what expired (keeping what reservations in flight on any replica hold),
//! and the periodic check against the ledger agrees with it.

use std::time::Duration;

use tollgate::billing::Credits;
use tollgate::cluster::{budget_key, Cluster as Shared, SharedBudgets};
use tollgate::store::{NewGrant, UsageRecord};

use crate::support::*;

fn record(id: &str, account: i64, key: i64, cost: i64) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        account_id: tollgate::store::AccountId(account),
        key_id: tollgate::store::KeyId(key),
        model: "m".into(),
        endpoint: "/v1/chat/completions".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost: Credits::from_nanos(cost),
        status: 200,
        latency_ms: 1,
        created_at: tollgate::now(),
        detail: Default::default(),
    }
}

#[tokio::test]
async fn an_expiry_lowers_the_shared_budget_and_the_check_agrees() {
    let redis = PrivateRedis::start().await;
    let db = Database::create().await;
    let store = tollgate::store::open(&db.url).await.expect("store");
    let now = tollgate::now();
    let account = store.create_account("acme", now).await.expect("account");
    let a = account.id.0;
    // Past the first reservation, which waits out the new epoch's grace window (3 s).
    let expiry = now + 6;
    let grant = |amount: i64, expires_at: Option<i64>| NewGrant {
        amount: Credits::from_nanos(amount),
        note: None,
        expires_at,
    };
    store
        .add_grant(account.id, &grant(10_000, Some(expiry)), now)
        .await
        .expect("grant");
    store
        .add_grant(account.id, &grant(500, None), now)
        .await
        .expect("grant");
    let key = store
        .create_key(new_key(account.id, "k", None, now))
        .await
        .expect("key");
    let k = key.id.0;
    let cluster = Shared::connect(&redis.url, &db.url).await.expect("connect");
    // Leases long enough for the test; checks whenever asked.
    let budgets = SharedBudgets::new(
        cluster,
        store.clone(),
        Duration::from_secs(60),
        Duration::from_millis(1),
        tollgate::clock::Clock::system(),
    );
    let n = Credits::from_nanos;
    // Charges are committed to the ledger before they are settled, as the gateway does.
    let first = budgets.reserve(&key, n(1_000), "req_a").await.expect("a");
    store
        .record_usage(&[record("req_a", a, k, 700)])
        .await
        .expect("commit");
    budgets.settle(first, n(700)).await;
    assert_eq!(redis.account_budget(a).await, [10_500, 700, 0]);

    // In flight across the expiry.
    let across = budgets.reserve(&key, n(2_000), "req_b").await.expect("b");
    while tollgate::now() <= expiry {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    budgets.refresh_grants().await.expect("refresh");
    // 10,000 − 700 consumed = 9,300 left; 2,000 kept for the request in flight; 7,300
    // expired. What can be reserved now is the grant without expiry, 500.
    assert_eq!(redis.account_budget(a).await, [3_200, 700, 2_000]);
    let denied = budgets.reserve(&key, n(501), "req_c").await;
    assert!(
        denied.is_err(),
        "only the 500 that do not expire are available"
    );
    let last = budgets.reserve(&key, n(500), "req_d").await.expect("d");

    // The request across the expiry costs 1,500, paid from the kept part; the other 500
    // of it expire at the next refresh.
    store
        .record_usage(&[record("req_b", a, k, 1_500)])
        .await
        .expect("commit");
    budgets.settle(across, n(1_500)).await;
    budgets.settle(last, n(0)).await;
    budgets.refresh_grants().await.expect("refresh");
    assert_eq!(redis.account_budget(a).await, [2_700, 2_200, 0]);
    let settled = store
        .account(account.id)
        .await
        .expect("store")
        .expect("account");
    assert_eq!(settled.expired, n(7_800));
    assert_eq!(settled.balance(), n(500));
    assert_eq!(settled.net_granted().nanos(), 2_700);

    // The periodic check reads the ledger and finds the same budget: nothing to repair.
    tokio::time::sleep(Duration::from_millis(5)).await;
    budgets.check_due().await;
    assert_eq!(redis.account_budget(a).await, [2_700, 2_200, 0]);
    // And it is what it loads from scratch: damage the grants in Redis, check, repaired.
    let mut conn = redis.conn().await;
    let epoch = redis.epoch().await;
    let _: i64 = redis::cmd("HSET")
        .arg(budget_key(&epoch, "a", a))
        .arg("granted")
        .arg(10_500)
        .query_async(&mut conn)
        .await
        .expect("hset");
    tokio::time::sleep(Duration::from_millis(5)).await;
    budgets.check_due().await;
    assert_eq!(redis.account_budget(a).await, [2_700, 2_200, 0]);
}
