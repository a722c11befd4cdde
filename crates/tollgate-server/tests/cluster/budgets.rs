//! The shared budgets' own promises: a settle run twice counts once (also when its
//! lease ran out before it came), a renewal counts lost only leases that ran out, the
//! periodic check against the ledger repairs drift while never "repairing" a budget that
//! is merely busy (also when an account's keys are checked in chunks), and the first uses
//! of many keys at once are loaded together.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tollgate::billing::Credits;
use tollgate::cluster::{budget_key, Cluster as Shared, SettleOutcome, SharedBudgets, CHUNK_KEYS};

use crate::support::*;

/// (charged, reserved) of account 1 and (usage, reserved) of key `key` in Redis.
async fn shared(redis: &PrivateRedis, key: i64) -> [i64; 4] {
    let epoch = redis.epoch().await;
    let mut out = [0; 4];
    for (i, (hash, field)) in [
        (budget_key(&epoch, "a", 1), "charged"),
        (budget_key(&epoch, "a", 1), "reserved"),
        (budget_key(&epoch, "k", key), "usage"),
        (budget_key(&epoch, "k", key), "reserved"),
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = redis.field(&hash, field).await.unwrap_or(0);
    }
    out
}

/// One account (1,000,000 nanos granted) with one key of `limit`, and its shared budgets
/// with a one-second lease that nothing renews (no background tick runs here).
struct OneKey {
    redis: PrivateRedis,
    _db: Database,
    account: tollgate::store::AccountId,
    key: tollgate::store::KeyRecord,
    budgets: SharedBudgets,
}

async fn one_key(limit: Option<i64>) -> OneKey {
    let redis = PrivateRedis::start().await;
    let db = Database::create().await;
    let store = tollgate::store::open(&db.url).await.expect("store");
    let now = tollgate::now();
    let account = store.create_account("acme", now).await.expect("account");
    store
        .grant_credits(account.id, Credits::from_nanos(1_000_000), None, now)
        .await
        .expect("grant");
    let key = store
        .create_key(new_key(
            account.id,
            "k",
            limit.map(Credits::from_nanos),
            now,
        ))
        .await
        .expect("key");
    let cluster = Shared::connect(&redis.url, &db.url).await.expect("connect");
    let budgets = SharedBudgets::new(
        cluster,
        store,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        tollgate::clock::Clock::system(),
    );
    OneKey {
        redis,
        _db: db,
        account: account.id,
        key,
        budgets,
    }
}

#[tokio::test]
async fn the_same_settle_run_twice_counts_once() {
    // (`_db` bound: the database lives as long as the test.)
    let OneKey {
        redis,
        _db,
        key,
        budgets,
        ..
    } = one_key(Some(500_000)).await;
    let n = Credits::from_nanos;
    // The first reservation starts the epoch and waits out its grace window.
    let a = budgets.reserve(&key, n(1000), "req_a").await.expect("a");
    assert_eq!(shared(&redis, key.id.0).await, [0, 1000, 0, 1000]);
    let settled = budgets.settle_once(&a, n(700)).await.expect("settle");
    assert_eq!(settled, SettleOutcome::Counted);
    let again = budgets.settle_once(&a, n(700)).await.expect("settle");
    assert_eq!(again, SettleOutcome::AlreadyCounted);
    assert_eq!(shared(&redis, key.id.0).await, [700, 0, 700, 0]);

    // A settle that comes after its lease ran out (and the next reservation gave the
    // amount back) still counts, once.
    let b = budgets.reserve(&key, n(2000), "req_b").await.expect("b");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let c = budgets.reserve(&key, n(1000), "req_c").await.expect("c");
    assert_eq!(shared(&redis, key.id.0).await, [700, 1000, 700, 1000]);
    for expected in [SettleOutcome::Counted, SettleOutcome::AlreadyCounted] {
        let outcome = budgets.settle_once(&b, n(1500)).await.expect("settle");
        assert_eq!(outcome, expected);
    }
    assert_eq!(shared(&redis, key.id.0).await, [2200, 1000, 2200, 1000]);
    budgets.settle(c, n(0)).await;
    assert_eq!(shared(&redis, key.id.0).await, [2200, 0, 2200, 0]);
    assert_eq!(budgets.in_flight(), (0, 0));
}

/// A renewal finds no lease for a reservation whose lease ran out, and none for one
/// settled since the replica listed what it holds (under load, one a renewal or so): only
/// the first is lost. Counting both logged "lease ran out" for requests that were fine.
#[tokio::test]
async fn a_renewal_counts_only_leases_that_ran_out() {
    // Nothing renews the one-second leases until the test calls `tick`.
    let OneKey {
        redis,
        _db,
        account,
        key,
        budgets,
    } = one_key(None).await;
    let n = Credits::from_nanos;
    let ran_out = budgets
        .reserve(&key, n(1000), "req_out")
        .await
        .expect("out");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The next reservations give the lapsed one's amount back (its data marked `x`).
    let settled = budgets
        .reserve(&key, n(1000), "req_settled")
        .await
        .expect("settled");
    let live = budgets
        .reserve(&key, n(1000), "req_live")
        .await
        .expect("live");
    assert_eq!(shared(&redis, key.id.0).await, [0, 2000, 0, 2000]);
    // What a settle does in Redis, run after this replica listed what it holds: the
    // reservation's lease and data are gone while the replica still renews it.
    let mut conn = redis.conn().await;
    let epoch = redis.epoch().await;
    let acct = account.0;
    let _: i64 = redis::cmd("ZREM")
        .arg(budget_key(&epoch, "r", acct))
        .arg(&settled.id)
        .query_async(&mut conn)
        .await
        .expect("zrem");
    let _: i64 = redis::cmd("HDEL")
        .arg(budget_key(&epoch, "rd", acct))
        .arg(&settled.id)
        .query_async(&mut conn)
        .await
        .expect("hdel");
    assert_eq!(budgets.in_flight().0, 3, "all three are still held here");
    budgets.tick().await;
    assert_eq!(budgets.leases_lost(), 1, "only the lapsed lease is lost");
    budgets.settle(live, n(0)).await;
    budgets.settle(ran_out, n(0)).await;
}

/// 60 keys of one account used for the first time at once: each needs its budget loaded,
/// and a load holds the account's lock. One load per key in turn made a burst of new
/// keys wait for seconds (p99 1.6 s in the key-mix bench); a load takes every key queued
/// while the one before ran, so a few loads serve them all, each budget exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_keys_is_loaded_together() {
    let redis = PrivateRedis::start().await;
    let db = Database::create().await;
    let store = tollgate::store::open(&db.url).await.expect("store");
    let now = tollgate::now();
    let account = store.create_account("acme", now).await.expect("account");
    store
        .grant_credits(account.id, Credits::from_nanos(10_000_000), None, now)
        .await
        .expect("grant");
    let mut keys = Vec::new();
    for i in 0..60i64 {
        let key = store
            .create_key(new_key(
                account.id,
                &format!("k{i}"),
                Some(Credits::from_nanos(1_000 + i)),
                now,
            ))
            .await
            .expect("key");
        keys.push(key);
    }
    let cluster = Shared::connect(&redis.url, &db.url).await.expect("connect");
    let budgets = Arc::new(SharedBudgets::new(
        cluster,
        store.clone(),
        Duration::from_secs(30),
        Duration::from_secs(3600),
        tollgate::clock::Clock::system(),
    ));
    // The account's first reservation starts the epoch and waits out its grace window.
    let first = budgets
        .reserve(&keys[0], Credits::from_nanos(1), "warm")
        .await
        .expect("first");
    budgets.settle(first, Credits::ZERO).await;
    let loads_before = budgets.loads_run();
    let burst: Vec<_> = keys[1..]
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let (budgets, key) = (budgets.clone(), key.clone());
            tokio::spawn(async move {
                // Each key's whole limit: exact only if its budget was loaded right.
                let limit = key.credit_limit.expect("limit");
                let held = budgets.reserve(&key, limit, &format!("req_{i}")).await;
                let over = budgets
                    .reserve(&key, Credits::from_nanos(1), &format!("over_{i}"))
                    .await;
                (held.is_ok(), over.is_err())
            })
        })
        .collect();
    for task in burst {
        let (held, refused_past_limit) = task.await.expect("task");
        assert!(held, "a new key's whole limit was reserved");
        assert!(refused_past_limit, "one nano past it was refused");
    }
    let loads = budgets.loads_run() - loads_before;
    assert!(
        loads <= 10,
        "59 first uses took {loads} loads: each key was loaded on its own"
    );
}

#[tokio::test]
async fn the_periodic_check_repairs_drift_and_leaves_busy_budgets_alone() {
    let cluster = start_cluster_with(Setup {
        upstream_latency_ms: 100,
        check_ms: 1000,
        ..Setup::default()
    })
    .await;
    let (key_id, key) = cluster.create_key(0, json!({"name": "busy"})).await;
    // Several seconds of concurrent requests on every replica: checks run every second
    // while settles race them.
    let served = keep_busy(&cluster, &[key], Duration::from_secs(8)).await;
    eprintln!("{served} requests during the checks");
    assert!(served > 50);
    wait_equal(&cluster, &[key_id]).await;
    assert!(
        !cluster.logs().contains("SHARED BUDGET DRIFT"),
        "a check 'repaired' a budget that was only busy:\n{}",
        cluster.logs()
    );

    let broken = damage(&cluster, key_id).await;
    wait_equal(&cluster, &[key_id]).await;
    eprintln!(
        "repaired {} ms after the damage",
        broken.elapsed().as_millis()
    );
    expect_repair_logged(&cluster).await;
}

/// An account with more keys than one script of a check sets is checked in chunks of
/// keys, each script its own (so Redis is never held for long), and each chunk is exact
/// while requests settle on keys of every chunk: no busy key is "repaired", and drift in
/// the last chunk is.
#[tokio::test]
async fn the_check_of_many_keys_runs_in_chunks_each_exact_under_load() {
    let cluster = start_cluster_with(Setup {
        upstream_latency_ms: 50,
        check_ms: 1000,
        ..Setup::default()
    })
    .await;
    let n = CHUNK_KEYS * 5 / 2;
    let mut keys = Vec::new();
    for i in 0..n {
        keys.push(
            cluster
                .create_key(i % 3, json!({"name": format!("k{i}")}))
                .await,
        );
    }
    // Every key's first use loads it, so the checks cover them all.
    let first_uses = keys.iter().enumerate().map(|(i, (_, key))| {
        let cluster = &cluster;
        async move { assert_eq!(status(cluster, i % 3, key).await, 200) }
    });
    futures_util::stream::iter(first_uses)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    let mut conn = cluster.redis.conn().await;
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "1000000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .expect("config");
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .expect("slowlog");
    // Busy keys in the first, second and last chunk of the checks.
    let busy = [0, CHUNK_KEYS + 7, n - 1];
    let busy_keys: Vec<String> = busy.iter().map(|&i| keys[i].1.clone()).collect();
    let busy_ids: Vec<i64> = busy.iter().map(|&i| keys[i].0).collect();
    let served = keep_busy(&cluster, &busy_keys, Duration::from_secs(6)).await;
    eprintln!("{served} requests during the checks of {n} keys");
    assert!(served > 50);
    wait_equal(&cluster, &busy_ids).await;
    assert!(
        !cluster.logs().contains("SHARED BUDGET DRIFT"),
        "a check 'repaired' a budget that was only busy:\n{}",
        cluster.logs()
    );

    // The scripts Redis ran meanwhile (the log keeps at most 32 arguments of each and
    // says how many more there were): a check's scripts carry four arguments per key.
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("slowlog");
    let sizes: Vec<usize> = entries.iter().filter_map(script_arguments).collect();
    let chunked = sizes.iter().filter(|&&a| a > 4 * CHUNK_KEYS / 4).count();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    eprintln!(
        "{} scripts, {chunked} of them carrying over {} keys, the largest {largest} arguments",
        sizes.len(),
        CHUNK_KEYS / 4
    );
    assert!(
        chunked >= 3,
        "the checks of {n} keys ran ({chunked} large scripts)"
    );
    assert!(
        largest <= 4 * CHUNK_KEYS + 400,
        "one script carried {largest} arguments: more keys than a chunk"
    );

    let last = keys[n - 1].0;
    let broken = damage(&cluster, last).await;
    wait_equal(&cluster, &busy_ids).await;
    eprintln!(
        "repaired {} ms after the damage",
        broken.elapsed().as_millis()
    );
    expect_repair_logged(&cluster).await;
}

/// The number of arguments of a `SLOWLOG GET` entry that ran a script, if it did.
fn script_arguments(entry: &redis::Value) -> Option<usize> {
    let redis::Value::Array(fields) = entry else {
        return None;
    };
    let Some(redis::Value::Array(args)) = fields.get(3) else {
        return None;
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    if !text(args.first()?).eq_ignore_ascii_case("evalsha") {
        return None;
    }
    // "... (N more arguments)" in place of the 32nd.
    let more = text(args.last()?)
        .strip_prefix("... (")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    Some(match more {
        Some(more) => args.len() - 1 + more,
        None => args.len(),
    })
}

/// Sends requests from four clients per replica with `keys` in turn for `how_long`; all
/// must be served. Answers how many were.
async fn keep_busy(cluster: &Cluster, keys: &[String], how_long: Duration) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for replica in &cluster.replicas {
        for w in 0..4 {
            let (client, keys, stop) = (cluster.client.clone(), keys.to_vec(), stop.clone());
            let url = format!("{}/v1/chat/completions", replica.base);
            workers.push(tokio::spawn(async move {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(&url)
                        .bearer_auth(&keys[(w + served) % keys.len()])
                        .json(&chat("busy [[fake:words=20]]"))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    served += 1;
                }
                served
            }));
        }
    }
    tokio::time::sleep(how_long).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for worker in workers {
        served += worker.await.expect("worker");
    }
    served
}

/// Makes Redis wrong: the account charged too high, `key`'s usage too low, a phantom
/// reservation. Answers when.
async fn damage(cluster: &Cluster, key: i64) -> Instant {
    let epoch = cluster.epoch().await;
    let mut conn = cluster.redis.conn().await;
    for (hash, field, by) in [
        (budget_key(&epoch, "a", 1), "charged", 123_456),
        (budget_key(&epoch, "a", 1), "reserved", 999),
        (budget_key(&epoch, "k", key), "usage", -654),
    ] {
        let _: i64 = redis::cmd("HINCRBY")
            .arg(hash)
            .arg(field)
            .arg(by)
            .query_async(&mut conn)
            .await
            .expect("hincrby");
    }
    Instant::now()
}

/// The repair of [`damage`] is logged with its amounts. The replica logs after the script
/// that repaired returns, so the lines can follow the repaired budget by a moment.
async fn expect_repair_logged(cluster: &Cluster) {
    let expected = [
        "SHARED BUDGET DRIFT",
        "drift_nanos=-123456",
        "drift_nanos=654",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let logs = loop {
        let logs = cluster.logs();
        if expected.iter().all(|n| logs.contains(n)) || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for line in expected {
        assert!(
            logs.contains(line),
            "the repair is logged with {line}:\n{logs}"
        );
    }
}

/// Waits until Redis holds exactly the ledger's totals for the account and `keys`, and
/// nothing in flight.
async fn wait_equal(cluster: &Cluster, keys: &[i64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, charged, _) = cluster.ledger().await;
        let account = cluster.shared_account(1).await;
        let mut equal = account.spent == charged && account.reserved == 0;
        let mut seen = vec![format!("account: redis {account:?}, ledger {charged}")];
        for &key in keys {
            let (_, usage) = cluster.ledger_key(key).await;
            let shared_key = cluster.shared_key(key).await;
            equal &= shared_key.spent == usage && shared_key.reserved == 0;
            seen.push(format!("key {key}: redis {shared_key:?}, ledger {usage}"));
        }
        if equal {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis never equal to the ledger: {}",
            seen.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
