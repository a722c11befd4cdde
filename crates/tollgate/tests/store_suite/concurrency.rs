//! Concurrent writers, on one store and across replicas sharing a database.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tollgate::store::{AccountId, KeyId, Store, UsageRecord, UsageTotals};
use tollgate::usage::UsageWriter;

use crate::harness::*;

async fn accounts_and_keys(store: &Arc<dyn Store>) -> (Vec<AccountId>, Vec<(AccountId, KeyId)>) {
    let mut accounts = Vec::new();
    let mut keys = Vec::new();
    for a in 0..3 {
        let acc = account(store, &format!("acc-{a}")).await;
        accounts.push(acc.id);
        for k in 0..2 {
            keys.push((
                acc.id,
                inference_key(store, acc.id, &format!("k-{a}-{k}")).await,
            ));
        }
    }
    (accounts, keys)
}

/// Records spread over every account, key, model and a few days.
fn records(prefix: &str, n: usize, keys: &[(AccountId, KeyId)]) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| {
            let (account, key) = keys[i % keys.len()];
            let model = ["m-a", "m-b", "m-c"][i % 3];
            let cost = 1_000_003 + (i as i64 * 7_919) % 100_000;
            record(
                &format!("{prefix}-{i}"),
                account,
                key,
                model,
                cost,
                T0 + (i as i64 % 5) * DAY / 2,
            )
        })
        .collect()
}

/// 8 tasks each write 200 distinct records in shuffled batches (touching every account and
/// key in different orders) and retry each batch once: the counters come out exact. Half
/// of the tasks send batches of 25, half one record at a time (on PostgreSQL the usage
/// function has a path of its own for one record), all at once.
pub async fn concurrent_writers_are_exact(db: TestDb) {
    let store = db.open().await;
    let (accounts, keys) = accounts_and_keys(&store).await;

    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        let mut mine = records(&format!("task{t}"), 200, &keys);
        tasks.push(tokio::spawn(async move {
            mine.shuffle(&mut StdRng::seed_from_u64(t));
            let size = if t % 2 == 0 { 25 } else { 1 };
            for batch in mine.chunks(size) {
                assert_eq!(
                    store.record_usage(batch).await.expect("record"),
                    vec![true; batch.len()]
                );
                assert_eq!(
                    store.record_usage(batch).await.expect("retry"),
                    vec![false; batch.len()]
                );
            }
            mine
        }));
    }
    let mut ledger = Vec::new();
    for task in tasks {
        ledger.extend(task.await.expect("writer task"));
    }
    assert_eq!(ledger.len(), 1600);
    assert_counters_match(&db, &store, &accounts, &ledger).await;
}

/// The usage writer as the server runs it on this store: 400 records sent at once, every
/// tenth twice as a retried request would send it, are each committed once, in far fewer
/// commits than records, and every counter matches the ledger.
pub async fn the_usage_writer_commits_concurrent_records_once_in_shared_batches(db: TestDb) {
    let store = db.open().await;
    let (accounts, keys) = accounts_and_keys(&store).await;
    let all = records("writer", 400, &keys);
    let wait = std::time::Duration::from_secs(10);
    let (writer, task) = UsageWriter::start(store.clone(), wait)
        .await
        .expect("writer");
    let mut waits = Vec::new();
    for (i, record) in all.iter().enumerate() {
        for _ in 0..if i % 10 == 0 { 2 } else { 1 } {
            let (writer, record) = (writer.clone(), record.clone());
            waits.push(tokio::spawn(async move { writer.record(record).await }));
        }
    }
    for wait in waits {
        wait.await.expect("task").expect("the record is safe");
    }
    writer.flushed().await;
    let commits = writer.commits();
    assert!(commits < 100, "{commits} commits for 440 records");
    drop(writer);
    task.await
        .expect("the writer ends once its handles are gone");
    assert_counters_match(&db, &store, &accounts, &all).await;
}

/// Two replicas on one database write overlapping batches in opposite orders, as after a
/// fail-over retry: every request id is written by exactly one of them and charged once.
pub async fn two_replicas_charge_each_request_once(db: TestDb) {
    let replica_a = db.open().await;
    let replica_b = db.open().await;
    let (accounts, keys) = accounts_and_keys(&replica_a).await;
    let all = records("shared", 1200, &keys);

    // A writes 0..900 forwards; B writes 300..1200 backwards and shuffled within batches.
    let forward: Vec<UsageRecord> = all[..900].to_vec();
    let mut backward: Vec<UsageRecord> = all[300..].iter().rev().cloned().collect();
    let mut rng = StdRng::seed_from_u64(99);
    for chunk in backward.chunks_mut(70) {
        chunk.shuffle(&mut rng);
    }
    let write = |store: Arc<dyn Store>, records: Vec<UsageRecord>, size: usize| {
        tokio::spawn(async move {
            let mut written = Vec::new();
            for batch in records.chunks(size) {
                let flags = store.record_usage(batch).await.expect("record");
                written.extend(
                    batch
                        .iter()
                        .zip(flags)
                        .map(|(r, w)| (r.request_id.clone(), w)),
                );
            }
            written
        })
    };
    let a = write(replica_a.clone(), forward, 100);
    let b = write(replica_b.clone(), backward, 70);
    let (a, b) = (a.await.expect("replica a"), b.await.expect("replica b"));

    let mut writes: HashMap<String, usize> = HashMap::new();
    for (id, written) in a.into_iter().chain(b) {
        *writes.entry(id).or_default() += usize::from(written);
    }
    assert_eq!(writes.len(), all.len());
    let wrong: Vec<_> = writes.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        wrong.is_empty(),
        "request ids not written exactly once: {wrong:?}"
    );

    // Both replicas see the same, exact totals.
    assert_counters_match(&db, &replica_a, &accounts, &all).await;
    assert_counters_match(&db, &replica_b, &accounts, &all).await;
}

/// While usage batches commit, each `Store::activity` answer is of one moment: its keys
/// and its models add up to its days.
pub async fn activity_is_consistent_under_writes(db: TestDb) {
    let store = db.open().await;
    let (accounts, keys) = accounts_and_keys(&store).await;
    let writer = {
        let store = store.clone();
        let ledger = records("live", 3000, &keys);
        tokio::spawn(async move {
            for batch in ledger.chunks(5) {
                store.record_usage(batch).await.expect("record");
            }
        })
    };
    let mut reads = 0;
    let mut last_requests = 0;
    while !writer.is_finished() {
        let activity = store
            .activity(accounts[0], "0000-00-00")
            .await
            .expect("activity");
        let sum = |totals: Vec<&UsageTotals>| {
            totals.iter().fold((0, 0, 0, 0), |s, t| {
                (
                    s.0 + t.requests,
                    s.1 + t.cost.nanos(),
                    s.2 + t.input_tokens,
                    s.3 + t.output_tokens,
                )
            })
        };
        let days = sum(activity.days.iter().map(|(_, t)| t).collect());
        assert_eq!(
            sum(activity.models.iter().map(|(_, t)| t).collect()),
            days,
            "models against days, read {reads}"
        );
        assert_eq!(
            sum(activity.keys.iter().map(|(_, _, t)| t).collect()),
            days,
            "keys against days, read {reads}"
        );
        assert!(days.0 >= last_requests, "activity went back in time");
        last_requests = days.0;
        reads += 1;
    }
    writer.await.expect("writer task");
    assert!(reads > 10, "only {reads} reads while writing");
}
