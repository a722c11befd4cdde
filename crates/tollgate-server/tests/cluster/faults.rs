//! Redis faults under load, with keys and the account close to their limits: Redis
//! restarted empty, flushed, and paused past the replicas' operation timeout. Whatever
//! happens, no key or account exceeds its limit in the ledger, every delivered answer is
//! charged exactly once, Redis ends equal to the ledger (with the periodic check off, so
//! nothing repaired it), and a key is refused only when it is really out of budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// Workers per (key, replica).
const WORKERS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then a new empty server on the same port.
    Restart,
    /// FLUSHALL on the running server.
    Flush,
    /// SIGSTOP for longer than the replicas' Redis timeout, then SIGCONT.
    Pause,
}

/// One answer: (key index, status, request id, cost header).
type Answer = (usize, u16, Option<String>, Option<i64>);

fn body() -> Value {
    json!({"model": "gpt-test", "max_tokens": 100,
        "messages": [{"role": "user", "content": "spend [[fake:words=100]]"}]})
}

async fn send(cluster_client: &reqwest::Client, url: &str, key: &str, body: &Value) -> Answer {
    match cluster_client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let id = header("x-request-id");
            let cost = header("x-tollgate-cost").map(|c| nanos(&c));
            let complete = r.bytes().await.is_ok();
            assert!(complete || status != 200, "a 200 answer was cut");
            (0, status, id, cost)
        }
        Err(e) => panic!("request failed: {e}"),
    }
}

async fn fault_under_load(fault: Fault) {
    let body = body();
    let worst = worst_case(&body, 100);
    // The first key's own limit binds; the others are held by the account's balance.
    let key_limits = [8 * worst, 20 * worst, 20 * worst];
    let granted = 45 * worst;
    let mut cluster = start_cluster_with(Setup {
        // After a data loss, requests outlive the grace window (so the rebuilt budget
        // must count what the replicas register); in a pause, settles fall in it.
        upstream_latency_ms: match fault {
            Fault::Restart | Fault::Flush => 5_000,
            Fault::Pause => 400,
        },
        // No periodic check: Redis must stay equal to the ledger by itself.
        check_ms: 3_600_000,
        grant: credits(granted),
        ..Setup::default()
    })
    .await;
    let mut keys = Vec::new();
    for (i, limit) in key_limits.iter().enumerate() {
        let spec: Value = serde_json::from_str(&format!(
            r#"{{"name":"k{i}","credit_limit":{}}}"#,
            credits(*limit)
        ))
        .expect("json");
        keys.push(cluster.create_key(i % 3, spec).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut workers = Vec::new();
    for (k, (_, key)) in keys.iter().enumerate() {
        for replica in &cluster.replicas {
            for _ in 0..WORKERS {
                let (client, key, body) = (cluster.client.clone(), key.clone(), body.clone());
                let url = format!("{}/v1/chat/completions", replica.base);
                let (stop, answers) = (stop.clone(), answers.clone());
                workers.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let mut answer = send(&client, &url, &key, &body).await;
                        answer.0 = k;
                        let status = answer.1;
                        answers.lock().expect("answers").push(answer);
                        match status {
                            200 => {}
                            402 => tokio::time::sleep(Duration::from_millis(200)).await,
                            // Few requests while Redis is away, so the replicas' connections
                            // do not fill up and their settle attempts reach the paused server.
                            503 => tokio::time::sleep(Duration::from_secs(1)).await,
                            other => panic!("unexpected status {other}"),
                        }
                    }
                }));
            }
        }
    }

    let settles = watch_settles(&cluster.redis).await;
    // The fault strikes once the budgets are tight (a request was refused, so in-flight
    // reservations hold what is left) and requests were settled (Redis has the scripts:
    // attempts it queues can run).
    let tight = Instant::now() + Duration::from_secs(30);
    while Instant::now() < tight {
        let (ok, refused) = {
            let answers = answers.lock().expect("answers");
            let count = |s: u16| answers.iter().filter(|a| a.1 == s).count();
            (count(200), count(402))
        };
        if ok >= 10 && refused >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let struck = Instant::now();
    match fault {
        Fault::Restart => {
            cluster.redis.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.redis.restart().await;
        }
        Fault::Flush => {
            let mut conn = cluster.redis.conn().await;
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut conn)
                .await
                .expect("flushall");
        }
        Fault::Pause => {
            cluster.redis.pause();
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.redis.resume();
        }
    }
    eprintln!(
        "{fault:?} after {} answers, over after {} ms",
        answers.lock().expect("answers").len(),
        struck.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    let answers = answers.lock().expect("answers").clone();
    let count = |s: u16| answers.iter().filter(|a| a.1 == s).count();
    eprintln!(
        "{} answers: {} ok, {} refused (402), {} unavailable (503)",
        answers.len(),
        count(200),
        count(402),
        count(503)
    );
    assert!(count(200) >= 20, "the load was served");

    let runs = settles.finish().await;
    let replayed = runs.values().filter(|n| **n > 1).count();
    eprintln!(
        "settle script runs: {} for {} requests, {replayed} requests settled more than once",
        runs.values().sum::<usize>(),
        runs.len()
    );
    if let Fault::Pause = fault {
        assert!(
            replayed > 0,
            "the paused server ran some settle more than once (the attempts it queued)"
        );
    }
    let logs = cluster.logs();
    match fault {
        Fault::Restart | Fault::Flush => assert!(
            logs.contains("registered reservations held here in a new epoch"),
            "reservations were in flight when redis lost its data:\n{logs}"
        ),
        Fault::Pause => assert!(
            logs.contains("settling a shared reservation failed"),
            "settles timed out during the pause (so their attempts were replayed):\n{logs}"
        ),
    }

    settled_state_equals_ledger(&cluster, &keys, &answers).await;
    check_limits(&cluster, &keys, &key_limits, granted).await;

    // Each key is refused only when it (or the account) is really out of budget.
    let mut refusals = HashMap::new();
    for (i, (id, key)) in keys.iter().enumerate() {
        let url = format!("{}/v1/chat/completions", cluster.replicas[i].base);
        let mut served = 0;
        loop {
            let (_, status, _, _) = send(&cluster.client, &url, key, &body).await;
            match status {
                200 => served += 1,
                402 => break,
                other => panic!("unexpected status {other}"),
            }
            assert!(served < 100, "key {id} is never refused");
        }
        let (key_spent, _) = cluster.ledger_key(*id).await;
        let (_, charged, _) = cluster.ledger().await;
        let left = (key_limits[i] - key_spent).min(granted - charged);
        assert!(
            left < worst,
            "key {id} refused with {left} left of its budget (a request needs at most {worst})"
        );
        refusals.insert(*id, (served, left));
    }
    eprintln!("after the load: (served, left) per key: {refusals:?}");
    check_limits(&cluster, &keys, &key_limits, granted).await;
    let (_, charged, _) = cluster.ledger().await;
    assert_eq!(cluster.shared_account(1).await.spent, charged);
    assert!(
        !cluster.logs().contains("SHARED BUDGET DRIFT"),
        "nothing was repaired"
    );
}

/// Counts, per request id, the settle scripts Redis runs with a cost (seen through
/// MONITOR: the settle is the budget script with 8 keys; it ran if its first command, the
/// INCR of the epoch's counter, follows it, and did not if Redis refused it, e.g.
/// NOSCRIPT).
struct SettleWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<HashMap<String, usize>>,
}

async fn watch_settles(redis: &PrivateRedis) -> SettleWatch {
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let monitor = client.get_async_monitor().await.expect("monitor");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut runs: HashMap<String, usize> = HashMap::new();
        let mut lines = monitor.into_on_message::<String>();
        let mut called: Option<String> = None;
        while !flag.load(Ordering::Relaxed) {
            let Ok(Some(line)) =
                tokio::time::timeout(Duration::from_millis(200), lines.next()).await
            else {
                continue;
            };
            if let Some(id) = called.take() {
                if line.contains("[0 lua] \"INCR\"") {
                    *runs.entry(id).or_default() += 1;
                }
            }
            let mut words = line
                .split(' ')
                .skip_while(|w| !w.eq_ignore_ascii_case("\"evalsha\""));
            if words.nth(2) != Some("\"8\"") {
                continue;
            }
            let mut after = line.split(' ').skip_while(|w| !w.starts_with("\"req_"));
            if let (Some(id), Some(cost)) = (after.next(), after.next()) {
                // Releases (cost 0) of reservations that may not exist are not settles.
                if cost != "\"0\"" {
                    called = Some(id.trim_matches('"').to_string());
                }
            }
        }
        runs
    });
    SettleWatch { stop, task }
}

impl SettleWatch {
    async fn finish(self) -> HashMap<String, usize> {
        // MONITOR lines trail the commands a little.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("monitor task")
    }
}

/// Waits until nothing is held in Redis any more, then checks that Redis equals the
/// ledger and that the ledger holds exactly the delivered answers.
async fn settled_state_equals_ledger(
    cluster: &Cluster,
    keys: &[(i64, String)],
    answers: &[Answer],
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, charged, _) = cluster.ledger().await;
        let account = cluster.shared_account(1).await;
        let mut settled = account.reserved == 0 && account.spent == charged;
        for (id, _) in keys {
            let shared = cluster.shared_key(*id).await;
            let (sum, usage) = cluster.ledger_key(*id).await;
            settled &= shared.reserved == 0 && shared.spent == usage && usage == sum;
        }
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis never settled to the ledger: account {account:?}, ledger {charged}; keys {:?}",
            {
                let mut v = Vec::new();
                for (id, _) in keys {
                    v.push((cluster.shared_key(*id).await, cluster.ledger_key(*id).await));
                }
                v
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (total, charged, records) = cluster.ledger().await;
    assert_eq!(total, charged, "the account's total is its ledger's sum");
    let mut delivered: HashMap<&str, i64> = HashMap::new();
    for (_, status, id, cost) in answers {
        if *status == 200 {
            let id = id.as_deref().expect("request id");
            delivered.insert(id, cost.expect("cost header"));
        }
    }
    let charged_records: HashMap<&str, i64> = records
        .iter()
        .filter(|r| r.1 > 0)
        .map(|r| (r.0.as_str(), r.1))
        .collect();
    assert_eq!(
        charged_records, delivered,
        "the ledger charges exactly the delivered answers, at the cost they announced"
    );
}

async fn check_limits(cluster: &Cluster, keys: &[(i64, String)], limits: &[i64], granted: i64) {
    for ((id, _), limit) in keys.iter().zip(limits) {
        let (spent, usage) = cluster.ledger_key(*id).await;
        assert_eq!(spent, usage);
        assert!(
            spent <= *limit,
            "key {id} spent {spent} > its limit {limit}"
        );
    }
    let (total, charged, _) = cluster.ledger().await;
    assert_eq!(total, charged);
    assert!(
        charged <= granted,
        "the account spent {charged} > {granted}"
    );
}

#[tokio::test]
async fn redis_restarted_empty_under_load_never_overspends_nor_double_counts() {
    fault_under_load(Fault::Restart).await;
}

#[tokio::test]
async fn redis_flushed_under_load_never_overspends_nor_double_counts() {
    fault_under_load(Fault::Flush).await;
}

#[tokio::test]
async fn redis_paused_past_the_timeout_under_load_never_overspends_nor_double_counts() {
    fault_under_load(Fault::Pause).await;
}

/// Redis restarted from an older snapshot: its budgets miss what was charged since, and
/// without notice a key would be served that much past its limit. The replicas saw a
/// later write counter than the snapshot's, so the first of them to call starts a new
/// epoch and the budgets are rebuilt from the ledger.
#[tokio::test]
async fn redis_back_from_an_old_snapshot_starts_a_new_epoch() {
    let body = body();
    let worst = worst_case(&body, 100);
    let limit = 10 * worst;
    let mut cluster = start_cluster_with(Setup::default()).await;
    let spec: Value = serde_json::from_str(&format!(
        r#"{{"name":"k","credit_limit":{}}}"#,
        credits(limit)
    ))
    .expect("json");
    let (id, key) = cluster.create_key(0, spec).await;
    let url = |i: usize| format!("{}/v1/chat/completions", cluster.replicas[i % 3].base);
    for i in 0..4 {
        let (_, status, _, _) = send(&cluster.client, &url(i), &key, &body).await;
        assert_eq!(status, 200);
    }
    let mut conn = cluster.redis.conn().await;
    let _: () = redis::cmd("SAVE")
        .query_async(&mut conn)
        .await
        .expect("save");
    let saved = cluster.shared_key(id).await.spent;
    let old_epoch = cluster.epoch().await;
    for i in 0..6 {
        let (_, status, _, _) = send(&cluster.client, &url(i), &key, &body).await;
        assert_eq!(status, 200);
    }
    // Every replica's heartbeat writes after the snapshot.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.redis.kill();
    cluster.redis.restart().await;
    assert_eq!(cluster.epoch().await, old_epoch, "the snapshot is back");
    assert_eq!(cluster.shared_key(id).await.spent, saved);

    let mut served = 0;
    loop {
        let (_, status, _, _) = send(&cluster.client, &url(served), &key, &body).await;
        match status {
            200 => served += 1,
            402 => break,
            // The replicas reconnect.
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("unexpected status {other}"),
        }
        assert!(served < 20, "the key is never refused");
    }
    let (spent, usage) = cluster.ledger_key(id).await;
    eprintln!("{served} served after the restart; the key spent {spent} of {limit}");
    assert_eq!(spent, usage);
    assert!(spent <= limit, "the key spent {spent} > its limit {limit}");
    assert!(limit - spent < worst, "refused with {} left", limit - spent);
    assert_ne!(cluster.epoch().await, old_epoch, "a new epoch");
    assert_eq!(cluster.shared_key(id).await.spent, spent);
    let logs = cluster.logs();
    assert!(logs.contains("moved to a new epoch"), "{logs}");
}
