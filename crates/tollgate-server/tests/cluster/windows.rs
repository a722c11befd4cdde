//! Budget windows across three replicas: the window is part of the shared budget's
//! identity in Redis, so every replica counts the same day, week or month, a new window
//! starts on every replica the moment the (shared test) clock reaches it, and a request
//! that straddles a boundary is charged to the window it was reserved in.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Row;

use crate::support::*;

/// Each key's credit limit: a handful of requests.
const LIMIT: i64 = 1_000_000; // 0.001 credits

fn at(text: &str) -> i64 {
    tollgate::parse_rfc3339(text).expect("time")
}

fn set_clock(cluster: &Cluster, text: &str) {
    std::fs::write(clock_file(cluster.dir.path()), text).expect("clock");
}

/// Twelve clients on the three replicas, each sending until refused.
async fn exhaust(cluster: &Cluster, key: &str) {
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let client = cluster.client.clone();
            let url = format!("{}/v1/chat/completions", cluster.replicas[i % 3].base);
            let key = key.to_string();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let status = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&chat("hi"))
                        .send()
                        .await
                        .expect("request")
                        .status()
                        .as_u16();
                    match status {
                        200 => {}
                        402 => return,
                        other => panic!("unexpected {other}"),
                    }
                }
                panic!("never refused");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
}

/// The ledger's charges of `key` for requests reserved in [from, to).
async fn spent(cluster: &Cluster, key: i64, from: &str, to: &str) -> i64 {
    let pool = cluster.db.pool().await;
    sqlx::query(
        "SELECT COALESCE(SUM(cost), 0)::BIGINT FROM usage_records \
         WHERE key_id = $1 AND created_at >= $2 AND created_at < $3",
    )
    .bind(key)
    .bind(at(from))
    .bind(at(to))
    .fetch_one(&pool)
    .await
    .expect("sum")
    .get(0)
}

/// A field of a key's window budget in Redis.
async fn window_budget(cluster: &Cluster, key: i64, tag: &str, field: &str) -> Option<i64> {
    let name = format!("tg2:{}:k:{key}@{tag}", cluster.epoch().await);
    cluster.redis.field(&name, field).await
}

/// The window was spent exactly: never past the limit, and refused only when less than
/// one request's worst case was left.
fn assert_spent_exactly(what: &str, spent: i64) {
    let worst = worst_case(&chat("hi"), 100);
    assert!(spent <= LIMIT, "{what}: {spent} spent of {LIMIT}");
    assert!(
        LIMIT - spent < worst,
        "{what}: refused with {} left, a request needs at most {worst}",
        LIMIT - spent
    );
}

async fn own(cluster: &Cluster, replica: usize, key: &str) -> Value {
    cluster
        .client
        .get(format!("{}/v1/key", cluster.replicas[replica].base))
        .bearer_auth(key)
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn windows_are_exact_across_replicas_and_start_again_at_their_boundaries() {
    let cluster = start_cluster(30_000, 0).await;
    set_clock(&cluster, "2028-02-27T23:59:00Z"); // a Sunday
    let limit = json!(0.001);
    let (daily_id, daily) = cluster
        .create_key(
            0,
            json!({"name": "d", "credit_limit": limit, "limit_reset": "daily"}),
        )
        .await;
    let (weekly_id, weekly) = cluster
        .create_key(
            1,
            json!({"name": "w", "credit_limit": limit, "limit_reset": "weekly"}),
        )
        .await;
    let (monthly_id, monthly) = cluster
        .create_key(
            2,
            json!({"name": "m", "credit_limit": limit, "limit_reset": "monthly"}),
        )
        .await;
    for key in [&daily, &weekly, &monthly] {
        exhaust(&cluster, key).await;
    }
    let sunday = ("2028-02-27T00:00:00Z", "2028-02-28T00:00:00Z");
    for (what, id) in [
        ("daily", daily_id),
        ("weekly", weekly_id),
        ("monthly", monthly_id),
    ] {
        assert_spent_exactly(what, spent(&cluster, id, sunday.0, sunday.1).await);
    }
    assert_eq!(
        window_budget(&cluster, daily_id, "d2028-02-27", "usage").await,
        Some(spent(&cluster, daily_id, sunday.0, sunday.1).await),
        "Redis holds the day's budget as the ledger has it"
    );

    // Monday 00:00: a new day and a new week on every replica, the same month.
    set_clock(&cluster, "2028-02-28T00:00:00Z");
    for r in 0..3 {
        assert_eq!(
            status(&cluster, r, &monthly).await,
            402,
            "replica {r}: same month"
        );
    }
    exhaust(&cluster, &daily).await;
    exhaust(&cluster, &weekly).await;
    let monday = ("2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z");
    assert_spent_exactly(
        "daily, Monday",
        spent(&cluster, daily_id, monday.0, monday.1).await,
    );
    assert_spent_exactly(
        "weekly, new week",
        spent(&cluster, weekly_id, monday.0, "2028-03-06T00:00:00Z").await,
    );
    for r in 0..3 {
        let view = own(&cluster, r, &weekly).await;
        assert_eq!(view["limit_resets_at"], "2028-03-06T00:00:00Z");
        assert_eq!(
            nanos(view["usage_weekly"].as_str().expect("usage")),
            spent(&cluster, weekly_id, monday.0, "2028-03-06T00:00:00Z").await
        );
    }

    // Leap day, one second before March; a straddling request on each replica.
    set_clock(&cluster, "2028-02-29T23:59:59Z");
    for r in 0..3 {
        assert_eq!(
            status(&cluster, r, &weekly).await,
            402,
            "replica {r}: same week"
        );
    }
    let slow: Vec<_> = (0..3)
        .map(|r| {
            let client = cluster.client.clone();
            let url = format!("{}/v1/chat/completions", cluster.replicas[r].base);
            let key = daily.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&chat("late [[fake:first_byte_ms=800]]"))
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_clock(&cluster, "2028-03-01T00:00:00Z");
    for s in slow {
        assert_eq!(s.await.expect("task"), 200);
    }
    let leap_day = spent(
        &cluster,
        daily_id,
        "2028-02-29T00:00:00Z",
        "2028-03-01T00:00:00Z",
    )
    .await;
    assert!(
        leap_day > 0,
        "the straddling requests are charged to February 29"
    );
    // March: the monthly key is free again, the weekly one is not; the daily key has its
    // whole limit (the straddlers counted in the day they were reserved in).
    for r in 0..3 {
        assert_eq!(
            status(&cluster, r, &weekly).await,
            402,
            "replica {r}: same week"
        );
        let view = own(&cluster, r, &daily).await;
        assert_eq!(view["usage_daily"], "0.00", "replica {r}");
        assert_eq!(
            nanos(view["limit_remaining"].as_str().expect("remaining")),
            LIMIT
        );
    }
    exhaust(&cluster, &monthly).await;
    exhaust(&cluster, &daily).await;
    let march_1 = ("2028-03-01T00:00:00Z", "2028-03-02T00:00:00Z");
    assert_spent_exactly(
        "monthly, March",
        spent(&cluster, monthly_id, march_1.0, "2028-04-01T00:00:00Z").await,
    );
    assert_spent_exactly(
        "daily, March 1",
        spent(&cluster, daily_id, march_1.0, march_1.1).await,
    );
    assert_eq!(
        window_budget(&cluster, daily_id, "d2028-02-29", "usage").await,
        Some(leap_day),
        "the straddlers settled into their own day's budget"
    );
    assert_eq!(
        window_budget(&cluster, daily_id, "d2028-03-01", "usage").await,
        Some(spent(&cluster, daily_id, march_1.0, march_1.1).await)
    );
    for id in [daily_id, weekly_id, monthly_id] {
        let (sum, usage) = cluster.ledger_key(id).await;
        assert_eq!(sum, usage, "key {id}: the lifetime usage is the ledger's");
    }
    let logs = cluster.logs();
    assert!(!logs.contains("SHARED BUDGET DRIFT"), "{logs}");
}

/// A check reads the windows of all an account's keys in one query of the roll-up: each
/// key's usage must be the days of its own window, not those of another key's longer one
/// (a daily and a monthly key, both with usage earlier in the month).
#[tokio::test]
async fn a_check_counts_each_key_in_its_own_window() {
    let cluster = start_cluster_with(Setup {
        check_ms: 1000,
        ..Setup::default()
    })
    .await;
    set_clock(&cluster, "2028-02-27T12:00:00Z");
    let limit = json!(1.0);
    let mut keys = Vec::new();
    for (name, reset) in [("d", "daily"), ("m", "monthly")] {
        let made = cluster
            .create_key(
                0,
                json!({"name": name, "credit_limit": limit, "limit_reset": reset}),
            )
            .await;
        keys.push(made);
    }
    // Earlier days of the month, as the roll-up holds them; then one request per key,
    // which loads its budget (each on its own) and makes the account's checks cover it.
    let pool = cluster.db.pool().await;
    for (id, _) in &keys {
        for (day, cost) in [
            ("2028-01-31", 500),
            ("2028-02-25", 1000),
            ("2028-02-26", 3000),
        ] {
            sqlx::query(
                "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, \
                 input_tokens, output_tokens) VALUES (1, $1, $2, 'earlier', 1, $3, 0, 0)",
            )
            .bind(day)
            .bind(id)
            .bind(cost)
            .execute(&pool)
            .await
            .expect("roll-up");
        }
    }
    for (_, key) in &keys {
        assert_eq!(status(&cluster, 0, key).await, 200);
    }
    // A check after the loads (each sync stamps the account's budget).
    let synced_at = || cluster.shared_field("a", 1, "synced_at");
    let loaded = synced_at().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while synced_at().await == loaded {
        assert!(std::time::Instant::now() < deadline, "no check ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let today = spent(
        &cluster,
        keys[0].0,
        "2028-02-27T00:00:00Z",
        "2028-02-28T00:00:00Z",
    )
    .await;
    assert_eq!(
        window_budget(&cluster, keys[0].0, "d2028-02-27", "usage").await,
        Some(today),
        "the daily key counts its day only"
    );
    let month = spent(
        &cluster,
        keys[1].0,
        "2028-02-01T00:00:00Z",
        "2028-03-01T00:00:00Z",
    )
    .await;
    assert_eq!(
        window_budget(&cluster, keys[1].0, "m2028-02", "usage").await,
        Some(month + 4000),
        "the monthly key counts its month's days"
    );
    let logs = cluster.logs();
    assert!(!logs.contains("SHARED BUDGET DRIFT"), "{logs}");
}
