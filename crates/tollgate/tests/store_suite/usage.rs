//! The usage ledger: idempotent appends and the counters derived from it.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate::billing::Credits;
use tollgate::store::{ActivityRollup, KeyId, UsageRecord};

use crate::harness::*;

pub async fn idempotent_within_and_across_batches(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;

    assert!(store
        .record_usage(&[])
        .await
        .expect("empty batch")
        .is_empty());

    let r1 = record("req-1", acme.id, key, "m", 100, T0);
    let r2 = record("req-2", acme.id, key, "m", 20, T0 + 1);
    // The same request id again, with a different cost: the first one wins.
    let r1_again = record("req-1", acme.id, key, "m", 999_999, T0 + 2);
    assert_eq!(
        store
            .record_usage(&[r1.clone(), r2.clone(), r1_again.clone()])
            .await
            .expect("record"),
        vec![true, true, false]
    );

    let r3 = record("req-3", acme.id, key, "m", 3, T0 + 3);
    assert_eq!(
        store
            .record_usage(&[r1_again.clone(), r3.clone(), r2.clone(), r3.clone()])
            .await
            .expect("record"),
        vec![false, true, false, false]
    );
    // A retried batch that was already committed charges nothing.
    assert_eq!(
        store
            .record_usage(&[r1.clone(), r2.clone(), r3.clone()])
            .await
            .expect("record"),
        vec![false, false, false]
    );

    assert_counters_match(&db, &store, &[acme.id], &[r1, r2, r3]).await;
}

pub async fn counters_equal_ledger_sums(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let idle = account(&store, "idle").await;
    let keys = [
        (acme.id, inference_key(&store, acme.id, "a1").await),
        (acme.id, inference_key(&store, acme.id, "a2").await),
        (other.id, inference_key(&store, other.id, "o1").await),
    ];
    inference_key(&store, idle.id, "unused").await;
    let models = ["gpt-4o", "claude-sonnet", "llama-3"];

    let mut rng = StdRng::seed_from_u64(7);
    let mut ledger: Vec<UsageRecord> = Vec::new();
    let mut seen = HashSet::new();
    let mut next_id = 0;
    // Half of the batches are one record: on PostgreSQL the usage function has a path of
    // its own for those.
    for _ in 0..60 {
        let size = if rng.gen_bool(0.5) {
            1
        } else {
            rng.gen_range(2..=30)
        };
        let mut batch = Vec::with_capacity(size);
        for _ in 0..size {
            // About one record in five repeats an earlier request id (a retry).
            if next_id > 0 && rng.gen_bool(0.2) {
                let old = rng.gen_range(0..next_id);
                let (account, key) = keys[rng.gen_range(0..keys.len())];
                batch.push(record(&format!("req-{old}"), account, key, "retry", 1, T0));
                continue;
            }
            let (account, key) = keys[rng.gen_range(0..keys.len())];
            batch.push(record(
                &format!("req-{next_id}"),
                account,
                key,
                models[rng.gen_range(0..models.len())],
                rng.gen_range(0..5_000_000),
                T0 + rng.gen_range(0..4 * DAY),
            ));
            next_id += 1;
        }
        let expected: Vec<bool> = batch
            .iter()
            .map(|r| {
                let new = seen.insert(r.request_id.clone());
                if new {
                    ledger.push(r.clone());
                }
                new
            })
            .collect();
        assert_eq!(store.record_usage(&batch).await.expect("record"), expected);
    }
    assert!(ledger.len() > 300, "{} distinct records", ledger.len());
    assert_counters_match(&db, &store, &[acme.id, other.id, idle.id], &ledger).await;
}

/// `Store::activity`: the roll-ups per day, model and key from a day on, their orders
/// (ties included), other accounts left out, and the names of renamed, deleted and
/// unknown keys.
pub async fn activity_groups_since_day(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    // Created in this order, so `zed` has the lowest id.
    let zed = inference_key(&store, acme.id, "zed").await;
    let ann = inference_key(&store, acme.id, "ann").await;
    let bob = inference_key(&store, acme.id, "bob").await;
    let theirs = inference_key(&store, other.id, "theirs").await;

    let ledger = vec![
        // 2025-12-31
        record("old", acme.id, bob, "gpt", 1_000, T0 - 1),
        // 2026-01-01
        record("a1", acme.id, zed, "gpt", 10, T0),
        record("a2", acme.id, zed, "gpt", 25, T0 + DAY - 1),
        record("a3", acme.id, ann, "Zeta", 30, T0 + 5),
        // 2026-01-02
        record("b1", acme.id, ann, "alpha", 50, T0 + DAY),
        record("b2", acme.id, bob, "gpt", 5, T0 + DAY + 1),
        // 2026-01-03: nothing. 2026-01-04:
        record("d1", acme.id, bob, "alpha", 5, T0 + 3 * DAY),
        record("d2", acme.id, bob, "Zeta", 25, T0 + 3 * DAY + 7),
        // Another account, on the same days and models.
        record("o1", other.id, theirs, "gpt", 60, T0 + DAY),
        record("o2", other.id, theirs, "Zeta", 70, T0 + 3 * DAY),
    ];
    assert_eq!(
        store.record_usage(&ledger).await.expect("record"),
        vec![true; ledger.len()]
    );
    let r = |id: &str| {
        ledger
            .iter()
            .find(|r| r.request_id == id)
            .expect("a record of the ledger")
    };
    let sum = |ids: &[&str]| totals_of(ids.iter().map(|id| r(id)));

    // Spelled out once. Days with usage only, oldest first. Models "Zeta" and "alpha" both
    // cost 55: byte order puts "Zeta" first. Keys `zed` and `bob` both cost 35: the lower
    // id, `zed`, comes first.
    let from_jan_1 = ActivityRollup {
        days: vec![
            ("2026-01-01".into(), sum(&["a1", "a2", "a3"])),
            ("2026-01-02".into(), sum(&["b1", "b2"])),
            ("2026-01-04".into(), sum(&["d1", "d2"])),
        ],
        models: vec![
            ("Zeta".into(), sum(&["a3", "d2"])),
            ("alpha".into(), sum(&["b1", "d1"])),
            ("gpt".into(), sum(&["a1", "a2", "b2"])),
        ],
        keys: vec![
            (ann, "ann".into(), sum(&["a3", "b1"])),
            (zed, "zed".into(), sum(&["a1", "a2"])),
            (bob, "bob".into(), sum(&["b2", "d1", "d2"])),
        ],
    };
    assert_eq!(from_jan_1.models[0].1.cost, from_jan_1.models[1].1.cost);
    assert_eq!(from_jan_1.keys[1].2.cost, from_jan_1.keys[2].2.cost);
    assert_eq!(
        store
            .activity(acme.id, "2026-01-01")
            .await
            .expect("activity"),
        from_jan_1
    );

    let mut names: HashMap<KeyId, String> = [(zed, "zed"), (ann, "ann"), (bob, "bob")]
        .into_iter()
        .map(|(id, name)| (id, name.to_string()))
        .collect();
    names.insert(theirs, "theirs".into());
    for since in [
        "2025-06-30",
        "2025-12-31",
        "2026-01-02",
        "2026-01-03",
        "2026-01-04",
    ] {
        let expected = expected_activity(&ledger, acme.id, since, &names);
        assert!(!expected.days.is_empty());
        assert_eq!(
            store.activity(acme.id, since).await.expect("activity"),
            expected,
            "activity since {since}"
        );
    }
    assert_eq!(
        store
            .activity(acme.id, "2026-01-05")
            .await
            .expect("activity"),
        ActivityRollup::default()
    );
    assert_eq!(
        store
            .activity(other.id, "2026-01-01")
            .await
            .expect("activity"),
        ActivityRollup {
            days: vec![
                ("2026-01-02".into(), sum(&["o1"])),
                ("2026-01-04".into(), sum(&["o2"])),
            ],
            models: vec![("Zeta".into(), sum(&["o2"])), ("gpt".into(), sum(&["o1"]))],
            keys: vec![(theirs, "theirs".into(), sum(&["o1", "o2"]))],
        }
    );
    let idle = account(&store, "idle").await;
    assert_eq!(
        store
            .activity(idle.id, "0000-00-00")
            .await
            .expect("activity"),
        ActivityRollup::default()
    );

    // A renamed key shows its current name; a deleted key keeps its usage and its name;
    // a key without a row in `api_keys` has an empty name.
    store
        .update_key(
            acme.id,
            ann,
            &tollgate::store::KeyPatch {
                name: Some("renamed".into()),
                ..Default::default()
            },
            T0 + 3 * DAY,
        )
        .await
        .expect("update")
        .expect("found");
    assert!(store
        .delete_key(
            Some(acme.id),
            tollgate::store::KeyKind::Inference,
            ann,
            T0 + 3 * DAY,
        )
        .await
        .expect("delete"));
    execute_sql(
        &db,
        &format!(
            "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, \
             input_tokens, output_tokens) VALUES ({}, '2026-01-04', 999999, 'gpt', 1, 1, 1, 1)",
            acme.id.0
        ),
    )
    .await;
    let keys: Vec<(KeyId, String)> = store
        .activity(acme.id, "2026-01-01")
        .await
        .expect("activity")
        .keys
        .into_iter()
        .map(|(id, name, _)| (id, name))
        .collect();
    assert_eq!(
        keys,
        vec![
            (ann, "renamed".to_string()),
            (zed, "zed".to_string()),
            (bob, "bob".to_string()),
            (KeyId(999_999), String::new()),
        ]
    );
}

pub async fn usage_record_lookup(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let written = UsageRecord {
        request_id: "req-lookup".into(),
        account_id: acme.id,
        key_id: key,
        model: "gpt-4o-mini".into(),
        endpoint: "/v1/messages".into(),
        input_tokens: 1234,
        cached_input_tokens: 1000,
        output_tokens: 56,
        cost: nanos(4_200_000_123),
        status: 499,
        latency_ms: 8765,
        created_at: T0 + 42,
        detail: Default::default(),
    };
    assert_eq!(
        store.usage_record("req-lookup").await.expect("lookup"),
        None
    );
    store
        .record_usage(std::slice::from_ref(&written))
        .await
        .expect("record");
    assert_eq!(
        store.usage_record("req-lookup").await.expect("lookup"),
        Some(written)
    );
    assert_eq!(store.usage_record("req-other").await.expect("lookup"), None);
}

/// A record naming an account or a key that does not exist is refused, and nothing of its
/// batch is written or charged (SQLite: its foreign keys; PostgreSQL: the usage function's
/// own checks, migration 0013).
pub async fn records_of_unknown_accounts_or_keys_are_refused(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let good = record("req-good", acme.id, key, "m", 100, T0);
    let unknown_key = record("req-no-key", acme.id, KeyId(key.0 + 1000), "m", 5, T0);
    let mut unknown_account = record("req-no-account", acme.id, key, "m", 7, T0);
    unknown_account.account_id = tollgate::store::AccountId(acme.id.0 + 1000);
    for bad in [unknown_key, unknown_account] {
        let refused = store.record_usage(&[good.clone(), bad.clone()]).await;
        assert!(refused.is_err(), "{} was written", bad.request_id);
        assert!(!refused.expect_err("refused").is_transient());
        assert_eq!(store.usage_record("req-good").await.expect("lookup"), None);
        // Alone (the usage function's path for one record).
        let refused = store.record_usage(std::slice::from_ref(&bad)).await;
        assert!(refused.is_err(), "{} was written alone", bad.request_id);
        assert!(!refused.expect_err("refused").is_transient());
        assert_eq!(
            store.usage_record(&bad.request_id).await.expect("lookup"),
            None
        );
    }
    assert_counters_match(&db, &store, &[acme.id], &[]).await;
    assert_eq!(
        store
            .record_usage(std::slice::from_ref(&good))
            .await
            .expect("alone"),
        vec![true]
    );
    assert_counters_match(&db, &store, &[acme.id], &[good]).await;
}

/// The usage writer sends up to 1024 records in one transaction.
pub async fn largest_batch(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let keys = [
        (acme.id, inference_key(&store, acme.id, "a").await),
        (acme.id, inference_key(&store, acme.id, "b").await),
        (other.id, inference_key(&store, other.id, "c").await),
    ];
    let batch: Vec<UsageRecord> = (0..1024)
        .map(|i| {
            let (account, key) = keys[i % keys.len()];
            let model = ["x", "y"][i % 2];
            record(
                &format!("big-{i}"),
                account,
                key,
                model,
                i as i64 * 1_000,
                T0 + i as i64 * 300,
            )
        })
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(
        store.record_usage(&batch).await.expect("record"),
        vec![true; 1024]
    );
    let elapsed = started.elapsed();
    assert_eq!(
        store.record_usage(&batch).await.expect("record"),
        vec![false; 1024]
    );
    let backend = db.url().split(':').next().unwrap_or_default();
    eprintln!("{backend}: one batch of 1024 new records written in {elapsed:?}");
    // Half retries, half new: on PostgreSQL the batch function then keeps only the
    // inserted records by their ids (migration 0017 skips that only when all are new).
    let mixed: Vec<UsageRecord> = batch
        .iter()
        .enumerate()
        .map(|(i, old)| {
            if i % 2 == 0 {
                return old.clone();
            }
            let mut new = old.clone();
            new.request_id = format!("big-again-{i}");
            new.cost = Credits::from_nanos(i as i64 * 7);
            new
        })
        .collect();
    let expected: Vec<bool> = (0..1024).map(|i| i % 2 == 1).collect();
    assert_eq!(store.record_usage(&mixed).await.expect("record"), expected);
    let ledger: Vec<UsageRecord> = batch
        .iter()
        .chain(mixed.iter().skip(1).step_by(2))
        .cloned()
        .collect();
    assert_counters_match(&db, &store, &[acme.id, other.id], &ledger).await;
}

/// The per-day charges a key's window usages are summed from: per key and day, from a day
/// on, for one key or all of an account's, never another account's.
pub async fn day_charges_per_key_and_day(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let k1 = inference_key(&store, acme.id, "k1").await;
    let k2 = inference_key(&store, acme.id, "k2").await;
    let ko = inference_key(&store, other.id, "ko").await;
    let d = 86_400;
    let batch = vec![
        record("r1", acme.id, k1, "m", 5, T0),
        record("r2", acme.id, k1, "m", 7, T0 + d),
        record("r3", acme.id, k1, "n", 11, T0 + d + 60),
        record("r4", acme.id, k2, "m", 13, T0 + d),
        record("r5", other.id, ko, "m", 17, T0 + d),
        record("r6", acme.id, k1, "m", 19, T0 + d + 120),
    ];
    store.record_usage(&batch).await.expect("record");
    let mut all: Vec<(i64, String, i64)> = store
        .day_charges(acme.id, None, &day(T0 + d))
        .await
        .expect("charges")
        .into_iter()
        .map(|c| (c.key.0, c.day, c.cost))
        .collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            (k1.0, day(T0 + d), 11),
            (k1.0, day(T0 + d), 7 + 19),
            (k2.0, day(T0 + d), 13),
        ],
        "per (key, day, model) from the day on; the day before and other accounts left out"
    );
    let one: i64 = store
        .day_charges(acme.id, Some(k1), &day(T0))
        .await
        .expect("charges")
        .iter()
        .map(|c| c.cost)
        .sum();
    assert_eq!(one, 5 + 7 + 11 + 19);
}
