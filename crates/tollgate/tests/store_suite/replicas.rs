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

/// Two replicas commit usage for the same account, key, day and model at the same time,
/// and neither waits for the other (migration 0015, counters per writer): the first
/// replica's commit is held open (a test trigger sleeps in its last statement, the
/// roll-up's, after it has added to the account's and the key's counters), and the
/// second's commit returns while the first is still open. With the counters in shared
/// rows the second waited on the first's row locks until it ended. Both are counted once.
pub async fn commits_of_two_writers_for_one_account_do_not_wait_for_each_other(db: TestDb) {
    let replica_a = db.open().await;
    let replica_b = db.open().await;
    let acme = account(&replica_a, "acme").await;
    let key = inference_key(&replica_a, acme.id, "k").await;
    let mut admin = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION held_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(4); RETURN NEW; END $$; \
         CREATE TRIGGER held_commit BEFORE INSERT ON usage_daily FOR EACH ROW \
         WHEN (NEW.cost = 777) EXECUTE FUNCTION held_commit();",
    )
    .execute(&mut admin)
    .await
    .expect("trigger");
    let held = record("held", acme.id, key, "m", 777, T0);
    let quick = record("quick", acme.id, key, "m", 1_000, T0 + 1);
    let first = {
        let (store, held) = (replica_a.clone(), held.clone());
        tokio::spawn(async move { store.record_usage(&[held]).await })
    };
    // Until the first commit is in its sleep, with the counters' rows in hand.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
             AND datname = current_database()",
        )
        .fetch_one(&mut admin)
        .await
        .expect("activity");
        if sleeping == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held commit never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let second = tokio::time::timeout(
        std::time::Duration::from_millis(2_500),
        replica_b.record_usage(std::slice::from_ref(&quick)),
    )
    .await
    .expect("the second writer waited for the first one's commit")
    .expect("record");
    assert_eq!(second, vec![true]);
    assert!(
        !first.is_finished(),
        "the first commit ended before the check"
    );
    assert_eq!(first.await.expect("task").expect("record"), vec![true]);
    assert_counters_match(&db, &replica_a, &[acme.id], &[held, quick]).await;
}

/// The usage function of the release before budget slices (migration 0013's arguments),
/// kept for its replicas, adds to the writers' slots (migration 0015) like the current
/// one: what it commits is in the account's charge, the key's usage and last use, and
/// the roll-up, as this release reads them.
pub async fn the_previous_usage_function_counts_in_the_slots(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let now_record = record("now", acme.id, key, "m", 1_000, T0);
    assert_eq!(
        store
            .record_usage(std::slice::from_ref(&now_record))
            .await
            .expect("record"),
        vec![true]
    );
    let mut conn = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    let written: Vec<String> = sqlx::query_scalar(
        "SELECT tollgate_record_usage(ARRAY['old'], ARRAY[$1::BIGINT], ARRAY[$2::BIGINT], \
         ARRAY['m'], ARRAY['/v1/chat/completions'], ARRAY[5::BIGINT], ARRAY[0::BIGINT], \
         ARRAY[7::BIGINT], ARRAY[2500::BIGINT], ARRAY[200::BIGINT], ARRAY[3::BIGINT], \
         ARRAY[$3::BIGINT], ARRAY[NULL::TEXT], ARRAY[NULL::TEXT], ARRAY[1::BIGINT], \
         ARRAY[FALSE], ARRAY[0::BIGINT], ARRAY[$4::TEXT])",
    )
    .bind(acme.id.0)
    .bind(key.0)
    .bind(T0 + 60)
    .bind(day(T0))
    .fetch_all(&mut conn)
    .await
    .expect("the previous function");
    assert_eq!(written, vec!["old".to_string()]);
    let account = store
        .account(acme.id)
        .await
        .expect("account")
        .expect("exists");
    assert_eq!(account.charged, nanos(3_500));
    let keys = store
        .list_keys(acme.id, tollgate::store::KeyKind::Inference)
        .await
        .expect("keys");
    assert_eq!(keys[0].usage, nanos(3_500));
    assert_eq!(keys[0].last_used_at, Some(T0 + 60));
    let rows = stored_daily_rows(&db, acme.id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].1 .0, rows[0].1 .1), (2, 3_500));
}

/// A record whose key is another account's is refused with its batch (PostgreSQL's usage
/// function checks each key's account, migration 0013; with the counters per writer of
/// migration 0015 that check is its own read), and nothing of the batch is counted.
pub async fn a_record_whose_key_is_another_accounts_is_refused(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let key = inference_key(&store, acme.id, "k").await;
    let others_key = inference_key(&store, other.id, "theirs").await;
    let good = record("req-good", acme.id, key, "m", 100, T0);
    let crossed = record("req-crossed", acme.id, others_key, "m", 5, T0);
    let refused = store.record_usage(&[good.clone(), crossed]).await;
    let error = refused.expect_err("a key of another account was written");
    assert!(!error.is_transient());
    assert!(
        error.to_string().contains("which does not exist"),
        "{error}"
    );
    assert_eq!(store.usage_record("req-good").await.expect("lookup"), None);
    assert_counters_match(&db, &store, &[acme.id, other.id], &[]).await;
}
