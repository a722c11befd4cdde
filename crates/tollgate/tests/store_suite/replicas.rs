//! Replicas sharing one PostgreSQL database. (SQLite is one process's file: its migrator
//! takes no lock, so replicas racing to migrate one file is not a supported set-up.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::Connection;

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

/// Ends (`pg_terminate_backend`) the usage writer's connection: the only one whose last
/// statement was the usage function.
async fn end_the_writers_connection(db: &TestDb) {
    let mut admin = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    let ended: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND query LIKE 'SELECT tollgate_record_usage(%') ended",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert_eq!(ended, 1, "the writer's connection");
}

/// The usage writer commits on a connection of its own (its own runtime's). When the
/// database ends that connection (here `pg_terminate_backend`, as a restart or an
/// operator would), the next record is committed on a new one within 2 s, both when it
/// arrives at once (the commit fails and is retried at once on a new connection; a
/// writer that kept the dead one would find it gone only at its idle test, after its
/// retries' backoff had grown past a second: 2.3 s) and after a pause (the idle test
/// finds it gone); every record is charged once.
pub async fn the_usage_writer_reconnects_after_the_database_ends_its_connection(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let wait = std::time::Duration::from_secs(2);
    let (writer, task) = tollgate::usage::UsageWriter::start(store.clone(), wait)
        .await
        .expect("writer");
    let mut all = Vec::new();
    for (round, pause) in [0, 1_500].into_iter().enumerate() {
        let first = record(&format!("r{round}-a"), acme.id, key, "m", 1_000, T0);
        writer.record(first.clone()).await.expect("committed");
        end_the_writers_connection(&db).await;
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        let next = record(&format!("r{round}-b"), acme.id, key, "m", 2_000, T0);
        writer
            .record(next.clone())
            .await
            .unwrap_or_else(|e| panic!("round {round}: not committed after the cut: {e}"));
        all.extend([first, next]);
    }
    drop(writer);
    task.await.expect("the writer ends");
    assert_counters_match(&db, &store, &[acme.id], &all).await;
}

/// A loopback proxy to the test's PostgreSQL: forwards while `forward` is set; otherwise
/// it takes new connections and never answers (as a database half-way through a restart
/// can), holding them open. Returns the database URL through the proxy.
async fn black_hole_proxy(db: &TestDb, forward: Arc<AtomicBool>) -> String {
    let url = db.url();
    let (head, rest) = url.split_once('@').expect("a URL with a user");
    let (server, path) = rest.split_once('/').expect("a URL with a database");
    let server = server.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            if !forward.load(Ordering::SeqCst) {
                held.push(client);
                continue;
            }
            let server = server.clone();
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&server).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    format!("{head}@127.0.0.1:{port}/{path}")
}

/// A connection attempt that hangs (the database took the connection and does not
/// answer, as during a restart) is given up after 2 s and made again, so the writer is
/// back within about that once the database answers, not after the call's whole deadline
/// (8 s, which would make the record below miss its 5 s wait).
pub async fn the_usage_writer_gives_up_a_connection_attempt_that_hangs(db: TestDb) {
    let forward = Arc::new(AtomicBool::new(true));
    let proxied = TestDb::at(black_hole_proxy(&db, forward.clone()).await);
    let store = proxied.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let wait = std::time::Duration::from_secs(5);
    let (writer, task) = tollgate::usage::UsageWriter::start(store.clone(), wait)
        .await
        .expect("writer");
    let first = record("before", acme.id, key, "m", 1_000, T0);
    writer.record(first.clone()).await.expect("committed");
    // New connections now hang; the writer's own is ended, so its next commit needs one.
    forward.store(false, Ordering::SeqCst);
    end_the_writers_connection(&db).await;
    let next = record("after", acme.id, key, "m", 2_000, T0);
    let sent = {
        let (writer, next) = (writer.clone(), next.clone());
        tokio::spawn(async move { writer.record(next).await })
    };
    // Let the writer fail once and start a connection into the black hole.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    forward.store(true, Ordering::SeqCst);
    sent.await
        .expect("task")
        .unwrap_or_else(|e| panic!("not committed within the wait: {e}"));
    drop(writer);
    task.await.expect("the writer ends");
    assert_counters_match(&db, &store, &[acme.id], &[first, next]).await;
}
