//! Cluster mode: three `tollgate` replicas on loopback sharing the machine's PostgreSQL
//! and a Redis of the test's own, in front of the fake upstream. Each test gets a fresh
//! PostgreSQL database and its own `redis-server` (tests restart, pause and flush it).

mod budgets;
mod credits;
mod faults;
mod feed;
mod logs;
mod services;
mod slices;
mod support;
mod windows;
mod withheld;

use std::process::Command;
use std::time::{Duration, Instant};

use fake_upstream::Options;
use serde_json::{json, Value};
use sqlx::Row;

use support::*;

#[tokio::test]
async fn a_deleted_key_is_refused_by_every_replica_within_a_second() {
    let cluster = start_cluster(30_000, 0).await;
    let (id, key) = cluster.create_key(0, json!({"name": "doomed"})).await;
    // Every replica has the key's identity cached.
    for r in &cluster.replicas {
        for _ in 0..3 {
            let s = cluster
                .client
                .get(format!("{}/v1/models", r.base))
                .bearer_auth(&key)
                .send()
                .await
                .expect("models");
            assert_eq!(s.status(), 200);
        }
    }
    let deleted_at = Instant::now();
    let response = cluster
        .client
        .delete(format!("{}/v1/account/keys/{id}", cluster.replicas[0].base))
        .bearer_auth(&cluster.prov_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    for (i, r) in cluster.replicas.iter().enumerate().skip(1) {
        loop {
            let status = cluster
                .client
                .get(format!("{}/v1/models", r.base))
                .bearer_auth(&key)
                .send()
                .await
                .expect("models")
                .status();
            if status == 401 {
                break;
            }
            assert!(
                deleted_at.elapsed() < Duration::from_secs(1),
                "replica {i} still accepts the deleted key"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "replica {i} refused the deleted key {} ms after the delete",
            deleted_at.elapsed().as_millis()
        );
    }
    // A disable through replica 1 reaches replica 2 as well.
    let (id, key) = cluster.create_key(0, json!({"name": "paused"})).await;
    let url = format!("{}/v1/models", cluster.replicas[2].base);
    assert_eq!(
        cluster
            .client
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .expect("models")
            .status(),
        200
    );
    let at = Instant::now();
    cluster
        .client
        .patch(format!("{}/v1/account/keys/{id}", cluster.replicas[1].base))
        .bearer_auth(&cluster.prov_key)
        .json(&json!({"is_enabled": false}))
        .send()
        .await
        .expect("patch");
    while cluster
        .client
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect("models")
        .status()
        != 401
    {
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "the disabled key still works on replica 2"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "replica 2 refused the disabled key {} ms after the change",
        at.elapsed().as_millis()
    );
}

#[tokio::test]
async fn concurrent_requests_across_replicas_never_overspend() {
    let cluster = start_cluster(30_000, 500).await;
    let body = chat("race across replicas");
    let body_len = serde_json::to_vec(&body).expect("json").len() as i128;
    // Worst case per request: every body byte an input token, 100 output tokens.
    let worst = ((body_len * 400_000_000 + 100 * 1_600_000_000 + 999_999) / 1_000_000) as i64;
    let limit = 20 * worst;
    let limit_text = tollgate::billing::Credits::from_nanos(limit).to_decimal_string(1);
    let (_, key) = cluster
        .create_key(
            0,
            serde_json::from_str(&format!(r#"{{"name":"race","credit_limit":{limit_text}}}"#))
                .expect("json"),
        )
        .await;
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let client = cluster.client.clone();
            let url = format!("{}/v1/chat/completions", cluster.replicas[i % 3].base);
            let key = key.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                let cost = r
                    .headers()
                    .get("x-tollgate-cost")
                    .map(|v| v.to_str().expect("cost").to_string());
                let _ = r.bytes().await;
                (status, cost)
            })
        })
        .collect();
    let mut ok = 0;
    let mut delivered = 0i64;
    for task in tasks {
        let (status, cost) = task.await.expect("task");
        match status {
            200 => {
                ok += 1;
                delivered += nanos(&cost.expect("cost header"));
            }
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    eprintln!("{ok} of 300 requests succeeded against a limit of 20 worst cases");
    assert!((1..=20).contains(&ok));
    let (total, charged, records) = cluster.ledger().await;
    assert!(total <= limit, "charged {total} > limit {limit}");
    assert_eq!(total, delivered);
    assert_eq!(charged, total);
    assert_eq!(records.len(), ok);
    let view: Value = cluster
        .client
        .get(format!("{}/v1/key", cluster.replicas[1].base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    assert_eq!(nanos(view["usage"].as_str().expect("usage")), total);
    let balance: Value = cluster
        .client
        .get(format!("{}/v1/account/balance", cluster.replicas[2].base))
        .bearer_auth(&cluster.prov_key)
        .send()
        .await
        .expect("balance")
        .json()
        .await
        .expect("json");
    assert_eq!(
        nanos(balance["balance"].as_str().expect("balance")),
        100_000_000_000 - total
    );
}

#[tokio::test]
async fn a_rate_limit_holds_across_replicas() {
    let cluster = start_cluster(30_000, 0).await;
    let (_, key) = cluster
        .create_key(0, json!({"name": "limited", "rate_limit_rpm": 10}))
        .await;
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..30 {
        let r = cluster
            .client
            .post(format!(
                "{}/v1/chat/completions",
                cluster.replicas[i % 3].base
            ))
            .bearer_auth(&key)
            .json(&chat("hi"))
            .send()
            .await
            .expect("request");
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 20));
}

#[tokio::test]
async fn kill_9_of_a_replica_under_load_loses_no_delivered_charge_and_leaks_no_reservation() {
    let lease_ms = 5_000;
    let mut cluster = start_cluster(lease_ms, 300).await;
    let (_, key) = cluster.create_key(0, json!({"name": "load"})).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..240)
        .map(|i| {
            let client = cluster.client.clone();
            let url = format!("{}/v1/chat/completions", cluster.replicas[i % 3].base);
            let key = key.clone();
            tokio::spawn(async move {
                // Spread over ~1.2 s so the kill lands in the middle of the load.
                tokio::time::sleep(Duration::from_millis((i as u64 % 40) * 30)).await;
                let r = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&chat("load [[fake:words=20]]"))
                    .send()
                    .await;
                match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let id = r
                            .headers()
                            .get("x-request-id")
                            .map(|v| v.to_str().expect("id").to_string());
                        let cost = r
                            .headers()
                            .get("x-tollgate-cost")
                            .map(|v| v.to_str().expect("cost").to_string());
                        match r.bytes().await {
                            Ok(body)
                                if status == 200
                                    && serde_json::from_slice::<Value>(&body).is_ok() =>
                            {
                                Some((id, cost))
                            }
                            _ => None,
                        }
                    }
                    Err(_) => None,
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.replicas[1].kill9();
    eprintln!("killed replica 1 at {} ms", started.elapsed().as_millis());
    let mut delivered = Vec::new();
    for task in tasks {
        if let Some((Some(id), Some(cost))) = task.await.expect("task") {
            delivered.push((id, nanos(&cost)));
        }
    }
    // Everything the living replicas started is settled; what is still held belongs to
    // the dead one.
    let mut conn = cluster.redis.conn().await;
    let leases = tollgate::cluster::budget_key(&cluster.epoch().await, "r", 1);
    let orphans: i64 = redis::cmd("ZCARD")
        .arg(&leases)
        .query_async(&mut conn)
        .await
        .expect("zcard");
    eprintln!(
        "{orphans} reservations of the killed replica still held {} ms after the start",
        started.elapsed().as_millis()
    );
    assert!(orphans > 0, "the killed replica had requests in flight");
    let (_, charged, records) = cluster.ledger().await;
    eprintln!(
        "{} responses delivered, {} usage records",
        delivered.len(),
        records.len()
    );
    assert!(
        delivered.len() >= 100,
        "most requests should have been served"
    );
    for (id, cost) in &delivered {
        let matching: Vec<_> = records.iter().filter(|r| &r.0 == id).collect();
        assert_eq!(
            matching.len(),
            1,
            "request {id} must be charged exactly once"
        );
        assert_eq!(
            matching[0].1, *cost,
            "request {id} charged what its header said"
        );
    }
    assert_eq!(
        charged,
        records.iter().map(|r| r.1).sum::<i64>(),
        "derived total equals the ledger"
    );

    // The dead replica's reservations run out with their lease, and the next
    // reservation on the account gives them back.
    tokio::time::sleep(Duration::from_millis(lease_ms + 500)).await;
    let after_kill = started.elapsed();
    let r = cluster
        .client
        .post(format!("{}/v1/chat/completions", cluster.replicas[0].base))
        .bearer_auth(&key)
        .json(&chat("after"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let held: i64 = redis::cmd("ZCARD")
        .arg(&leases)
        .query_async(&mut conn)
        .await
        .expect("zcard");
    let reserved = cluster.shared_account(1).await.reserved;
    assert_eq!(
        (held, reserved),
        (0, 0),
        "no reservation outlives its lease"
    );
    eprintln!(
        "all reservations released {} ms after the start",
        after_kill.as_millis()
    );
    let _ = (&cluster.config, &cluster.dir);
}

/// Redis going away: requests are refused (503) rather than metered without a shared
/// budget, and service resumes by itself when Redis is back.
#[tokio::test]
async fn without_redis_requests_are_refused_and_service_recovers_by_itself() {
    let mut redis = PrivateRedis::start().await;
    let upstream = fake_upstream::start(Options {
        openai_api_key: Some("up-secret".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream");
    let db = Database::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\nredis_url = \"{}\"\n[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"UP_KEY\"\n[[models]]\nid = \"gpt-test\"\nprovider = \"up\"\nmax_output_tokens = 100\npricing = {{ input = \"0.40\", output = \"1.60\" }}\n",
            db.url,
            redis.url,
            upstream.base_url()
        ),
    )
    .expect("config");
    let replica = start_replica(dir.path(), &config, 0);
    wait_ready(&replica.base, &replica.log).await;
    let prov = std::fs::read_to_string(
        dir.path()
            .join("replica-0/tollgate-data/provisioning-key.txt"),
    )
    .expect("key");
    let client = reqwest::Client::new();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "credits",
            "grant",
            "default",
            "10",
            "--config",
            config.to_str().expect("path"),
        ])
        .output()
        .expect("grant");
    assert!(output.status.success());
    let created: Value = client
        .post(format!("{}/v1/account/keys", replica.base))
        .bearer_auth(prov.trim())
        .json(&json!({"name": "k"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let key = created["key"].as_str().expect("key").to_string();
    let call = || async {
        client
            .post(format!("{}/v1/chat/completions", replica.base))
            .bearer_auth(&key)
            .json(&chat("hi"))
            .send()
            .await
            .expect("request")
    };
    assert_eq!(call().await.status(), 200);

    redis.kill();
    let refused = call().await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "metering_unavailable");
    let records_before: i64 = sqlx::query("SELECT COUNT(*) FROM usage_records WHERE cost > 0")
        .fetch_one(&db.pool().await)
        .await
        .expect("count")
        .get(0);
    assert_eq!(records_before, 1, "nothing was served without a budget");

    redis.restart().await;
    let back = Instant::now();
    loop {
        let status = call().await.status();
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "no recovery without a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "served again {} ms after redis came back",
        back.elapsed().as_millis()
    );
}

#[tokio::test]
async fn a_rotated_secret_stops_on_every_replica() {
    let cluster = start_cluster(30_000, 0).await;
    let (id, old) = cluster.create_key(0, json!({"name": "rotating"})).await;
    let models = |r: usize, key: &str| {
        cluster
            .client
            .get(format!("{}/v1/models", cluster.replicas[r].base))
            .bearer_auth(key.to_string())
            .send()
    };
    // Every replica caches the old secret.
    for r in 0..3 {
        assert_eq!(models(r, &old).await.expect("models").status(), 200);
    }
    let rotate = |grace: i64| {
        cluster
            .client
            .post(format!(
                "{}/v1/account/keys/{id}/rotate",
                cluster.replicas[0].base
            ))
            .bearer_auth(&cluster.prov_key)
            .json(&json!({"grace_seconds": grace}))
            .send()
    };
    // With a grace period: both secrets work everywhere, then the old one stops everywhere.
    let rotated: Value = rotate(2).await.expect("rotate").json().await.expect("json");
    let new = rotated["key"].as_str().expect("key").to_string();
    for r in 0..3 {
        assert_eq!(models(r, &new).await.expect("models").status(), 200);
        assert_eq!(
            models(r, &old).await.expect("models").status(),
            200,
            "replica {r}"
        );
    }
    let started = Instant::now();
    for r in 0..3 {
        while models(r, &old).await.expect("models").status() != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "replica {r}: old secret outlived its grace"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(models(r, &new).await.expect("models").status(), 200);
    }
    // Without one: the secret just replaced stops on every replica within a second.
    let rotated: Value = rotate(0).await.expect("rotate").json().await.expect("json");
    let newest = rotated["key"].as_str().expect("key").to_string();
    let at = Instant::now();
    for r in 0..3 {
        while models(r, &new).await.expect("models").status() != 401 {
            assert!(
                at.elapsed() < Duration::from_secs(1),
                "replica {r} still takes the replaced secret"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(models(r, &newest).await.expect("models").status(), 200);
    }
}

#[tokio::test]
async fn an_account_rate_limit_by_model_pattern_is_exact_across_replicas() {
    let cluster = start_cluster_with(Setup {
        extra_config: r#"
[[models]]
id = "llama:free"
provider = "up"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = { input = "0", output = "0" }

[[rate_limits]]
models = "*:free"
scope = "account"
rpm = 10
rpd = 100
"#
        .into(),
        ..Setup::default()
    })
    .await;
    let (_, a) = cluster.create_key(0, json!({"name": "a"})).await;
    let (_, b) = cluster.create_key(1, json!({"name": "b"})).await;
    let body = json!({"model": "llama:free", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let tasks: Vec<_> = (0..36)
        .map(|i| {
            let client = cluster.client.clone();
            let url = format!("{}/v1/chat/completions", cluster.replicas[i % 3].base);
            let key = if i % 2 == 0 { a.clone() } else { b.clone() };
            let body = body.clone();
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            (200, _) => ok += 1,
            (429, true) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (ok, limited),
        (10, 26),
        "ten a minute for the account, over both keys and all replicas"
    );
    // The account's other models are not limited.
    for r in 0..3 {
        let s = cluster
            .client
            .post(format!("{}/v1/chat/completions", cluster.replicas[r].base))
            .bearer_auth(&a)
            .json(&chat("hi"))
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(s, 200);
    }
}
