//! Replicas sharing one PostgreSQL database. (SQLite is one process's file: its migrator
//! takes no lock, so replicas racing to migrate one file is not a supported set-up.)

use crate::harness::*;

/// Several replicas starting at once on an empty database all migrate and open cleanly.
pub async fn replicas_start_at_once(db: TestDb) {
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.open().await })
        })
        .collect();
    let mut replicas = Vec::new();
    for replica in opening {
        replicas.push(replica.await.expect("replica start"));
    }
    for store in &replicas {
        store.migrate().await.expect("migrating again is a no-op");
    }
    let acme = account(&replicas[0], "acme").await;
    assert_eq!(
        replicas[3].account_by_name("acme").await.expect("get"),
        Some(acme)
    );
}
