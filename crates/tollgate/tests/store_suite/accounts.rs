//! Accounts and credit grants.

use tollgate::billing::Credits;
use tollgate::store::{AccountId, GrantRefused, StoreError};

use crate::harness::*;

pub async fn create_list_and_lookup(db: TestDb) {
    let store = db.open().await;
    assert!(store.list_accounts().await.expect("list").is_empty());

    let alpha = store.create_account("alpha", T0).await.expect("alpha");
    let beta = store.create_account("beta", T0 + 5).await.expect("beta");
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.created_at, T0);
    assert_eq!(alpha.granted, nanos(0));
    assert_eq!(alpha.charged, nanos(0));
    assert_ne!(alpha.id, beta.id);

    assert_eq!(
        store.list_accounts().await.expect("list"),
        vec![alpha.clone(), beta.clone()],
        "listed oldest first, as created"
    );
    assert_eq!(
        store.account(beta.id).await.expect("get"),
        Some(beta.clone())
    );
    assert_eq!(
        store.account_by_name("alpha").await.expect("by name"),
        Some(alpha.clone())
    );
    assert_eq!(store.account_by_name("gamma").await.expect("by name"), None);
    assert_eq!(
        store
            .account(tollgate::store::AccountId(beta.id.0 + 1000))
            .await
            .expect("get"),
        None
    );
    store.ping().await.expect("ping");
}

pub async fn duplicate_name_conflicts(db: TestDb) {
    let store = db.open().await;
    let first = account(&store, "acme").await;
    match store.create_account("acme", T0 + 1).await {
        Err(StoreError::Conflict(what)) => assert!(what.contains("acme"), "{what}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The failed insert changed nothing and the store still works.
    assert_eq!(store.list_accounts().await.expect("list"), vec![first]);
    account(&store, "acme-2").await;
}

pub async fn grants_sum_and_balance(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;

    let g1 = store
        .grant_credits(acme.id, nanos(10_000_000_000), Some("top-up"), T0)
        .await
        .expect("grant");
    let g2 = store
        .grant_credits(acme.id, nanos(5_000_000_000), None, T0 + 1)
        .await
        .expect("grant");
    // A negative grant is a correction.
    let g3 = store
        .grant_credits(acme.id, nanos(-3_000_000_001), Some("correction"), T0 + 2)
        .await
        .expect("grant");
    assert!(g1 < g2 && g2 < g3, "grant ids increase: {g1} {g2} {g3}");
    store
        .grant_credits(other.id, nanos(7), None, T0)
        .await
        .expect("grant");

    let acme_now = store.account(acme.id).await.expect("get").expect("exists");
    assert_eq!(acme_now.granted, nanos(11_999_999_999));
    assert_eq!(acme_now.charged, nanos(0));
    assert_eq!(acme_now.balance(), nanos(11_999_999_999));

    let key = inference_key(&store, acme.id, "k").await;
    store
        .record_usage(&[record("req-1", acme.id, key, "m", 1_999_999_999, T0)])
        .await
        .expect("record");
    let acme_now = store
        .account_by_name("acme")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(acme_now.charged, nanos(1_999_999_999));
    assert_eq!(acme_now.balance(), nanos(10_000_000_000));

    // A correction larger than the rest would take the balance below zero: refused,
    // and nothing is written.
    match store
        .grant_credits(acme.id, nanos(-10_000_000_001), None, T0 + 3)
        .await
    {
        Err(StoreError::Grant(GrantRefused::Overdraw { balance })) => {
            assert_eq!(balance, nanos(10_000_000_000))
        }
        other => panic!("expected an overdraw refusal, got {other:?}"),
    }
    // One that takes it to exactly zero passes.
    store
        .grant_credits(acme.id, nanos(-10_000_000_000), None, T0 + 3)
        .await
        .expect("to zero");
    let acme_now = store.account(acme.id).await.expect("get").expect("exists");
    assert_eq!(acme_now.balance(), nanos(0));
    assert_eq!(acme_now.granted, nanos(1_999_999_999));

    let other_now = store.account(other.id).await.expect("get").expect("exists");
    assert_eq!((other_now.granted, other_now.charged), (nanos(7), nanos(0)));
    let listed = store.list_accounts().await.expect("list");
    assert_eq!(listed, vec![acme_now, other_now]);
}

/// Grants add up to at most `Credits::MAX_AMOUNT` (so their sum never nears the 64-bit
/// limit), never below zero, and only for an account that exists.
pub async fn grants_are_bounded(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    store
        .grant_credits(acme.id, Credits::MAX_AMOUNT, Some("all of it"), T0)
        .await
        .expect("the maximum");
    match store.grant_credits(acme.id, nanos(1), None, T0).await {
        Err(StoreError::Grant(GrantRefused::OverMaximum { granted })) => {
            assert_eq!(granted, Credits::MAX_AMOUNT)
        }
        other => panic!("expected a refusal past the maximum, got {other:?}"),
    }
    // Not even a huge amount the command line would refuse gets past the store.
    let huge = Credits::from_nanos(i64::MAX);
    assert!(matches!(
        store.grant_credits(acme.id, huge, None, T0).await,
        Err(StoreError::Grant(GrantRefused::OverMaximum { .. }))
    ));
    assert!(matches!(
        store
            .grant_credits(acme.id, Credits::from_nanos(i64::MIN), None, T0)
            .await,
        Err(StoreError::Grant(GrantRefused::Overdraw { .. }))
    ));
    let acme_now = store.account(acme.id).await.expect("get").expect("exists");
    assert_eq!(acme_now.granted, Credits::MAX_AMOUNT);

    let other = account(&store, "other").await;
    assert!(matches!(
        store.grant_credits(other.id, nanos(-1), None, T0).await,
        Err(StoreError::Grant(GrantRefused::Overdraw { .. }))
    ));
    assert!(matches!(
        store
            .grant_credits(AccountId(other.id.0 + 1000), nanos(1), None, T0)
            .await,
        Err(StoreError::Grant(GrantRefused::NoAccount))
    ));
    assert_eq!(
        store
            .account(other.id)
            .await
            .expect("get")
            .expect("exists")
            .granted,
        nanos(0)
    );
}

/// Corrections racing for the same balance: each is checked against the others, so
/// together they never take it below zero.
pub async fn concurrent_corrections_never_overdraw(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    const BALANCE: i64 = 5;
    const ATTEMPTS: usize = 40;
    store
        .grant_credits(acme.id, nanos(BALANCE), None, T0)
        .await
        .expect("grant");
    // All start at once, each on a connection of its own.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
    let attempts: Vec<_> = (0..ATTEMPTS)
        .map(|_| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store
                    .grant_credits(acme.id, nanos(-1), Some("fix"), T0)
                    .await
            })
        })
        .collect();
    let (mut passed, mut refused) = (0i64, 0i64);
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => passed += 1,
            Err(StoreError::Grant(GrantRefused::Overdraw { balance })) => {
                assert!(!balance.is_negative());
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((passed, refused), (BALANCE, ATTEMPTS as i64 - BALANCE));
    let acme_now = store.account(acme.id).await.expect("get").expect("exists");
    assert_eq!(acme_now.balance(), nanos(0));
}
