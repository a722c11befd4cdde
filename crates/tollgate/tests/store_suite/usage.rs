//! The usage ledger: idempotent appends and the counters derived from it.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate::store::{DailyUsage, UsageRecord};

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

    assert_counters_match(&store, &[acme.id], &[r1, r2, r3]).await;
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
    for _ in 0..40 {
        let size = rng.gen_range(1..=30);
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
    assert_counters_match(&store, &[acme.id, other.id, idle.id], &ledger).await;
}

pub async fn daily_usage_since_day(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let k1 = inference_key(&store, acme.id, "first").await;
    let k2 = inference_key(&store, acme.id, "second").await;
    let ko = inference_key(&store, other.id, "theirs").await;

    store
        .record_usage(&[
            record("d0-a", acme.id, k1, "m1", 10, T0),
            record("d0-b", acme.id, k1, "m1", 20, T0 + DAY - 1),
            record("d1-a", acme.id, k1, "m2", 30, T0 + DAY),
            record("d1-b", acme.id, k2, "m1", 40, T0 + DAY + 5),
            record("d2-a", acme.id, k2, "m1", 50, T0 + 2 * DAY),
            record("d1-o", other.id, ko, "m1", 60, T0 + DAY),
        ])
        .await
        .expect("record");

    let row = |day: &str, key, name: &str, model: &str, requests, cost: i64, inputs, outputs| {
        DailyUsage {
            day: day.into(),
            key_id: key,
            key_name: name.into(),
            model: model.into(),
            requests,
            cost: nanos(cost),
            input_tokens: inputs,
            output_tokens: outputs,
        }
    };
    // Tokens follow from the costs (see `record`): input = cost % 1000 + 1, output = cost % 100 + 2.
    let all = vec![
        row("2026-01-01", k1, "first", "m1", 2, 30, 11 + 21, 12 + 22),
        row("2026-01-02", k1, "first", "m2", 1, 30, 31, 32),
        row("2026-01-02", k2, "second", "m1", 1, 40, 41, 42),
        row("2026-01-03", k2, "second", "m1", 1, 50, 51, 52),
    ];
    assert_eq!(
        store
            .daily_usage(acme.id, "2026-01-01")
            .await
            .expect("daily"),
        all
    );
    assert_eq!(
        store
            .daily_usage(acme.id, "2025-06-30")
            .await
            .expect("daily"),
        all
    );
    assert_eq!(
        store
            .daily_usage(acme.id, "2026-01-02")
            .await
            .expect("daily"),
        all[1..].to_vec()
    );
    assert_eq!(
        store
            .daily_usage(acme.id, "2026-01-03")
            .await
            .expect("daily"),
        all[3..].to_vec()
    );
    assert!(store
        .daily_usage(acme.id, "2026-01-04")
        .await
        .expect("daily")
        .is_empty());
    assert_eq!(
        store
            .daily_usage(other.id, "2026-01-01")
            .await
            .expect("daily"),
        vec![row("2026-01-02", ko, "theirs", "m1", 1, 60, 61, 62)]
    );

    // A renamed key shows its current name; a deleted key keeps its rows.
    store
        .update_key(
            acme.id,
            k2,
            &tollgate::store::KeyPatch {
                name: Some("renamed".into()),
                ..Default::default()
            },
            T0 + 3 * DAY,
        )
        .await
        .expect("update")
        .expect("found");
    store
        .delete_key(
            Some(acme.id),
            tollgate::store::KeyKind::Inference,
            k2,
            T0 + 3 * DAY,
        )
        .await
        .expect("delete");
    let names: Vec<String> = store
        .daily_usage(acme.id, "2026-01-03")
        .await
        .expect("daily")
        .into_iter()
        .map(|d| d.key_name)
        .collect();
    assert_eq!(names, vec!["renamed".to_string()]);
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
    assert_counters_match(&store, &[acme.id, other.id], &batch).await;
}
