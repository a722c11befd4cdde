//! A replica's log: `RUST_LOG` with several directives picks each target's level. With
//! the filter on the layers instead of on the whole subscriber, a replica on PostgreSQL
//! lost most of its own lines as soon as `RUST_LOG` named a second target (the access
//! lines, "tollgate listening"): tokio-rs/tracing#2929.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn a_log_filter_of_several_directives_keeps_each_line_it_enables() {
    let cluster = start_cluster(30_000, 0).await;
    let (_, key) = cluster
        .create_key(0, serde_json::json!({"name": "k"}))
        .await;
    let replica = start_replica_logging(
        cluster.dir.path(),
        &cluster.config,
        9,
        "info,tollgate::cluster=debug",
    );
    wait_ready(&replica.base, &replica.log).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = cluster
            .client
            .post(format!("{}/v1/chat/completions", replica.base))
            .bearer_auth(&key)
            .json(&chat(&format!("hello {i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        ids.push(
            r.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .expect("request id")
                .to_string(),
        );
    }
    // Lines are written by a thread of their own: wait for the last access line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = replica.log_text();
        if log.contains(&ids[2]) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(log.contains("tollgate listening"), "{log}");
    for id in &ids {
        assert!(
            log.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("tollgate::observe::access")),
            "no access line for {id}:\n{log}"
        );
    }
    // The debug line of the target named (the budget's first load on this replica)...
    assert!(
        log.contains("shared budget synced with the ledger"),
        "{log}"
    );
    // ...and no debug line of any other target (sqlx logs each query at debug).
    assert!(
        log.lines()
            .filter(|l| l.contains(" DEBUG "))
            .all(|l| l.contains("tollgate::cluster")),
        "{log}"
    );
}
