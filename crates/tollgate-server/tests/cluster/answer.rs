//! What an answer waits for in a cluster: its usage record's commit, not the Redis
//! settle that follows it (docs/cluster.md, "What one request costs").

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// Redis frozen while a request is upstream: before, the answer waited for its settle
/// until the 1.5 s Redis timeout; now it leaves once its record is committed, and the
/// settle, retried, counts once when Redis thaws.
#[tokio::test]
async fn a_frozen_redis_does_not_hold_a_finished_answer() {
    let cluster = start_cluster(30_000, 700).await;
    let (key_id, key) = cluster.create_key(0, json!({"name": "k"})).await;
    let url = format!("{}/v1/chat/completions", cluster.replicas[0].base);
    let sent = Instant::now();
    let request = cluster
        .client
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello"}]}))
        .send();
    let pause = async {
        // The reservation is made at once; the upstream answers after 700 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.redis.pause();
    };
    let (response, ()) = tokio::join!(request, pause);
    let response = response.expect("answer");
    let took = sent.elapsed();
    let status = response.status();
    cluster.redis.resume();
    assert_eq!(status, 200);
    // 700 ms upstream; waiting for the settle would have added the 1.5 s timeout.
    assert!(
        took < Duration::from_millis(1_800),
        "the answer waited {took:?}, as if for its settle"
    );

    // After the thaw the settle is retried and counts the ledger's cost once.
    let (total, charged, records) = cluster.ledger().await;
    assert_eq!(records.len(), 1);
    assert!(total > 0);
    assert_eq!(total, charged);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shared = cluster.shared_key(key_id).await;
        if shared.reserved == 0 {
            assert_eq!(shared.spent, total, "the settle counted once");
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {shared:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
