//! Credit grants reach every replica's shared budget through the change feed
//! (LISTEN/NOTIFY), not through a periodic re-read of every account: a grant made by the
//! operator's command (another process, straight into PostgreSQL) is in Redis within
//! about a second, far sooner than the fallback scan (60 s).

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::support::*;

#[tokio::test]
async fn a_grant_reaches_the_shared_budget_through_the_change_feed() {
    let cluster = start_cluster_with(Setup {
        grant: "1".into(),
        ..Setup::default()
    })
    .await;
    let (_, key) = cluster
        .create_key(0, serde_json::json!({"name": "k"}))
        .await;
    // Every replica uses the account, so its shared budget is loaded and followed.
    for r in &cluster.replicas {
        let status = cluster
            .client
            .post(format!("{}/v1/chat/completions", r.base))
            .bearer_auth(&key)
            .json(&chat("hi"))
            .send()
            .await
            .expect("chat")
            .status();
        assert_eq!(status, 200);
    }
    let pool = cluster.db.pool().await;
    let account: i64 = sqlx::query("SELECT id FROM accounts WHERE name = 'default'")
        .fetch_one(&pool)
        .await
        .expect("account")
        .get(0);
    assert_eq!(
        cluster.shared_field("a", account, "granted").await,
        Some(nanos("1"))
    );
    // Past the replicas' first full scans (each runs one when its feed starts listening).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Each replica listens on the feed (so none of them re-reads every account).
    let listening: i64 = sqlx::query(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%tollgate_grants%'",
    )
    .fetch_one(&pool)
    .await
    .expect("listeners")
    .get(0);
    assert_eq!(listening, 3, "one listener per replica");

    let granted_at = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["credits", "grant", "default", "5", "--config"])
        .arg(&cluster.config)
        .output()
        .expect("grant");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        if cluster.shared_field("a", account, "granted").await == Some(nanos("6")) {
            break;
        }
        assert!(
            granted_at.elapsed() < Duration::from_secs(5),
            "the grant did not reach the shared budget in 5 s (the fallback scan is every 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("grant seen in Redis after {:?}", granted_at.elapsed());
}
