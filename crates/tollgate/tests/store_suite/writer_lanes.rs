//! The usage writer's two lanes on PostgreSQL: while a large batch commits, the next
//! batch commits beside it on a second connection, and what the writer reports as
//! committed (`flushed()`, the backlog) follows the order the batches were taken in.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tollgate::store::UsageRecord;
use tollgate::usage::UsageWriter;

use crate::harness::*;

/// Backends of the test's database waiting for an advisory lock (the held commits).
async fn waiting_for_the_hold(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )
    .fetch_one(admin)
    .await
    .expect("activity")
}

/// Polls every 10 ms, for up to 10 s, until `n` commits wait for the test's hold.
async fn until_held(admin: &mut sqlx::PgConnection, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting_for_the_hold(admin).await != n {
        assert!(Instant::now() < deadline, "never {n} commits held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls every 10 ms, for up to 10 s, until the writer's backlog is `n`.
async fn until_backlog(writer: &UsageWriter, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.status().backlog != n {
        assert!(Instant::now() < deadline, "never a backlog of {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn send_all(
    writer: &UsageWriter,
    records: &[UsageRecord],
) -> Vec<tokio::task::JoinHandle<Result<(), tollgate::usage::LedgerError>>> {
    records
        .iter()
        .map(|record| {
            let (writer, record) = (writer.clone(), record.clone());
            tokio::spawn(async move { writer.record(record).await })
        })
        .collect()
}

/// A commit of 150 records is held in the database (a test trigger on the roll-up waits
/// for an advisory lock the test holds). The 200 records sent after it are committed
/// meanwhile, on the writer's second connection; with one commit at a time they waited
/// for the held one. `flushed()`, called once the 150 were sent, does not return when
/// the 200 are in, although more records than it waits for are then committed (a count
/// published as commits end, out of order, would let it), and the backlog stays 150;
/// both follow once the held commit ends. Every record is charged once.
pub async fn a_large_commit_in_flight_does_not_hold_back_the_next(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = inference_key(&store, acme.id, "k").await;
    let mut admin = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION held_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_lock(CASE NEW.model WHEN 'held-1' THEN 71 ELSE 72 END); \
         PERFORM pg_advisory_unlock(CASE NEW.model WHEN 'held-1' THEN 71 ELSE 72 END); \
         RETURN NEW; END $$; \
         CREATE TRIGGER held_commit BEFORE INSERT ON usage_daily FOR EACH ROW \
         WHEN (NEW.model IN ('held-1', 'held-2')) EXECUTE FUNCTION held_commit();",
    )
    .execute(&mut admin)
    .await
    .expect("trigger");
    let mut holder = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    sqlx::raw_sql("SELECT pg_advisory_lock(71), pg_advisory_lock(72)")
        .execute(&mut holder)
        .await
        .expect("hold");

    let (writer, task) = UsageWriter::start(store.clone(), Duration::from_secs(60))
        .await
        .expect("writer");
    // A first record's commit is held, so the next 150 queue up and form one batch.
    let first = record("first", acme.id, key, "held-1", 1_000, T0);
    let first_sent = send_all(&writer, std::slice::from_ref(&first));
    until_held(&mut admin, 1).await;
    let large: Vec<_> = (0..150)
        .map(|i| record(&format!("a-{i}"), acme.id, key, "held-2", 2_000 + i, T0))
        .collect();
    let large_sent = send_all(&writer, &large);
    until_backlog(&writer, 151).await;
    sqlx::raw_sql("SELECT pg_advisory_unlock(71)")
        .execute(&mut holder)
        .await
        .expect("release the first");
    // The first is committed, and the 150 are held.
    until_backlog(&writer, 150).await;
    until_held(&mut admin, 1).await;
    for sent in first_sent {
        sent.await.expect("task").expect("the first record");
    }

    let flushed = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.flushed().await })
    };
    let next: Vec<_> = (0..200)
        .map(|i| record(&format!("b-{i}"), acme.id, key, "m", 5_000 + i, T0 + 1))
        .collect();
    for sent in send_all(&writer, &next) {
        tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("a record sent after the large batch waited for its commit")
            .expect("task")
            .expect("record");
    }
    assert!(large_sent.iter().all(|sent| !sent.is_finished()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !flushed.is_finished(),
        "flushed() returned while a batch sent before it was not committed"
    );
    assert_eq!(writer.status().backlog, 150);
    assert_eq!(waiting_for_the_hold(&mut admin).await, 1);

    sqlx::raw_sql("SELECT pg_advisory_unlock(72)")
        .execute(&mut holder)
        .await
        .expect("release the large batch");
    for sent in large_sent {
        sent.await
            .expect("task")
            .expect("a record of the large batch");
    }
    tokio::time::timeout(Duration::from_secs(10), flushed)
        .await
        .expect("flushed() once every batch is committed")
        .expect("task");
    assert_eq!(writer.status().backlog, 0);
    drop(writer);
    task.await.expect("the writer ends");
    let all: Vec<_> = [vec![first], large, next].concat();
    assert_counters_match(&db, &store, &[acme.id], &all).await;
}
