//! Counters near the 64-bit limit: absurd usage (a provider reporting 10^18 tokens, a
//! cost near `i64::MAX`) is held at the limit, never an error, a REAL or a wrapped value,
//! and every read of the account keeps working, also after the store is opened again.

use std::sync::Arc;

use tollgate::store::{AccountId, KeyId, KeyKind, Store, UsageRecord, UsageTotals};

use crate::harness::*;

const MAX: i64 = i64::MAX;

fn absurd(request_id: &str, account: AccountId, key: KeyId, model: &str, at: i64) -> UsageRecord {
    UsageRecord {
        input_tokens: MAX,
        cached_input_tokens: MAX,
        output_tokens: MAX,
        cost: nanos(MAX - 1),
        ..record(request_id, account, key, model, 0, at)
    }
}

fn totals(requests: i64, cost: i64, input_tokens: i64, output_tokens: i64) -> UsageTotals {
    UsageTotals {
        requests,
        cost: nanos(cost),
        input_tokens,
        output_tokens,
        estimated_requests: 0,
        fallback_requests: 0,
    }
}

/// What the account reads as once the absurd records are in, and `later` ordinary
/// requests of `key` on the first day.
async fn assert_held_at_the_limit(
    store: &Arc<dyn Store>,
    account: AccountId,
    (key, calm): (KeyId, KeyId),
    later: i64,
) {
    let read = store
        .account(account)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!(read.charged, nanos(MAX));
    assert_eq!(read.balance(), nanos(100_000_000_000 - MAX));
    let keys = store
        .list_keys(account, KeyKind::Inference)
        .await
        .expect("keys");
    let usage: Vec<_> = keys.iter().map(|k| (k.id, k.usage)).collect();
    assert_eq!(usage, vec![(key, nanos(MAX)), (calm, nanos(7))]);

    let activity = store.activity(account, &day(T0)).await.expect("activity");
    assert_eq!(
        activity.days,
        vec![
            (day(T0), totals(3 + later, MAX, MAX, MAX)),
            (day(T0 + DAY), totals(1, MAX - 1, MAX, MAX)),
        ]
    );
    assert_eq!(
        activity.models,
        vec![
            ("m1".to_string(), totals(3 + later, MAX, MAX, MAX)),
            ("m2".to_string(), totals(1, MAX - 1, MAX, MAX)),
        ]
    );
    assert_eq!(
        activity.keys,
        vec![
            (key, "k".to_string(), totals(3 + later, MAX, MAX, MAX)),
            (calm, "calm".to_string(), totals(1, 7, 8, 9)),
        ]
    );
}

pub async fn absurd_usage_is_held_at_the_limit(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    store
        .grant_credits(acme.id, nanos(100_000_000_000), None, T0)
        .await
        .expect("grant");
    let key = inference_key(&store, acme.id, "k").await;
    let calm = inference_key(&store, acme.id, "calm").await;

    // Two absurd records in one batch (their sum overflows within it), then one more
    // with an ordinary record (it overflows the stored counters).
    let first = store
        .record_usage(&[
            absurd("a1", acme.id, key, "m1", T0),
            absurd("a2", acme.id, key, "m2", T0 + 1),
        ])
        .await
        .expect("the first absurd batch is written");
    assert_eq!(first, vec![true, true]);
    let second = store
        .record_usage(&[
            absurd("a3", acme.id, key, "m1", T0 + DAY),
            record("calm-1", acme.id, calm, "m1", 7, T0 + 2),
        ])
        .await
        .expect("the second absurd batch is written");
    assert_eq!(second, vec![true, true]);
    assert_held_at_the_limit(&store, acme.id, (key, calm), 0).await;

    // The ledger keeps each record as it came, and the store keeps writing.
    let a1 = store.usage_record("a1").await.expect("read").expect("a1");
    assert_eq!((a1.cost, a1.input_tokens), (nanos(MAX - 1), MAX));
    store
        .record_usage(&[record("later", acme.id, key, "m1", 5, T0 + 3)])
        .await
        .expect("an ordinary record after them");
    assert!(store.usage_record("later").await.expect("read").is_some());
    assert_held_at_the_limit(&store, acme.id, (key, calm), 1).await;

    // As after a restart.
    drop(store);
    let store = db.open().await;
    assert_held_at_the_limit(&store, acme.id, (key, calm), 1).await;
}
