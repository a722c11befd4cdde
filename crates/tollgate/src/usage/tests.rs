use super::writer::{InOrder, Rate, GATHER_RATE, RATE_WINDOW};
use super::*;
use crate::store::test_record as record;
use crate::store::{AccountId, KeyId};

/// The bound of these tests: far above any commit of a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

async fn store_with_key(dir: &std::path::Path) -> (Arc<dyn Store>, AccountId, KeyId) {
    let (store, account, key) = crate::store::test_store_with_key(dir).await;
    (Arc::new(store), account, key)
}

/// Sends `count` records at an even `interval` from a thread of their own (open loop:
/// a record does not wait for the one before), then waits for all of them.
async fn trickle(
    writer: &UsageWriter,
    account: AccountId,
    key: KeyId,
    count: usize,
    interval: Duration,
) {
    let rt = Handle::current();
    let sender = {
        let writer = writer.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut waits = Vec::new();
            // Each record is announced one interval before it is sent, as a request is
            // admitted before its record is written.
            let mut announced: Option<(Coming, UsageRecord)> = None;
            for i in 0..=count {
                let due = start + interval * i as u32;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                let next = (i < count).then(|| {
                    let record = record(&format!("{interval:?}-{i}"), account, key, 1);
                    (writer.coming(), record)
                });
                if let Some((coming, record)) = std::mem::replace(&mut announced, next) {
                    waits.push(rt.spawn(coming.record(record)));
                }
            }
            waits
        })
    };
    let waits = tokio::task::spawn_blocking(move || sender.join().expect("sender"))
        .await
        .expect("join");
    for wait in waits {
        assert_eq!(wait.await.expect("task"), Ok(()));
    }
}

#[test]
fn the_rate_is_busy_only_above_busy_rate_and_quiet_after_a_pause() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut rate = Rate::new(start);
    // 1,000 records/s: one record a millisecond.
    for ms in 1..=100 {
        rate.add(1, at(ms));
        assert!(!rate.busy(at(ms)), "busy at 1,000/s ({ms} ms)");
        assert!(
            !rate.at_least(GATHER_RATE, at(ms)),
            "gathering at 1,000/s ({ms} ms)"
        );
    }
    // 2,000 records/s: gathering, not busy.
    for ms in 101..=140 {
        rate.add(2, at(ms));
    }
    assert!(rate.at_least(GATHER_RATE, at(140)) && !rate.busy(at(140)));
    // 10,000 records/s: busy once a whole window has been counted.
    for ms in 141..=200 {
        rate.add(10, at(ms));
    }
    assert!(rate.busy(at(200)));
    // No batch for two windows: quiet again, whatever the last window saw.
    assert!(!rate.busy(at(200) + RATE_WINDOW * 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_batch_waits_for_its_neighbours() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    // Without a journal (as on PostgreSQL), where each response waits for its commit.
    let (writer, _task) = UsageWriter::spawn(store.clone(), None, WAIT);
    // 20,000 records/s: each commit carries several records (7 to 8 here). Without
    // the wait, commits took 1.6 records on average. (A busy machine only makes
    // batches larger.)
    trickle(&writer, account, key, 4_000, Duration::from_micros(50)).await;
    let commits = writer.commits();
    assert!(
        commits * 4 <= 4_000,
        "4,000 records at 20,000/s took {commits} commits"
    );
    let account = store
        .account(account)
        .await
        .expect("read")
        .expect("account");
    assert_eq!(account.charged.nanos(), 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_moderate_rate_a_batch_gathers_the_records_on_their_way() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    // Without a journal (as on PostgreSQL), where each response waits for its commit.
    let (writer, _task) = UsageWriter::spawn(store.clone(), None, WAIT);
    // 2,500 records/s, between `GATHER_RATE` and `BUSY_RATE`, each announced before it
    // comes: a batch stays open for them. Without it each record had a commit of its
    // own (a commit here takes far less than the 400 µs between two records).
    trickle(&writer, account, key, 2_000, Duration::from_micros(400)).await;
    let commits = writer.commits();
    assert!(
        commits * 2 <= 2_000,
        "2,000 records at 2,500/s took {commits} commits"
    );
    assert_eq!(charged(&store, account).await, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_records_share_commits_instead_of_the_journal() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let (writer, _task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    let frame = Frame::of(&record("50µs-1000", account, key, 1)).0.len() as u64;
    // 20,000 records/s: once the writer has counted a window of them (20 ms, about
    // 400 records), the rest wait for shared commits and skip the journal.
    trickle(&writer, account, key, 4_000, Duration::from_micros(50)).await;
    writer.flushed().await;
    let journaled = writer.journal().expect("journal").sizes()[0] / frame;
    assert!(
        journaled <= 1_500,
        "{journaled} of 4,000 records went to the journal"
    );
    assert!(
        writer.commits() * 4 <= 4_000,
        "{} commits",
        writer.commits()
    );
    assert_eq!(charged(&store, account).await, 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_records_share_commits_at_a_moderate_rate() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let (writer, _task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    // 1,000 records/s, far below `BUSY_RATE`: without `JOURNALED_LINGER` each record
    // took a commit of its own.
    trickle(&writer, account, key, 600, Duration::from_millis(1)).await;
    writer.flushed().await;
    let commits = writer.commits();
    assert!(
        commits * 3 <= 600 * 2,
        "600 records at 1,000/s took {commits} commits"
    );
    assert_eq!(charged(&store, account).await, 600);
}

#[tokio::test]
async fn concurrent_records_share_commits_and_a_bad_record_blocks_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let (writer, task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    let mut waits = Vec::new();
    for i in 0..200 {
        let writer = writer.clone();
        // Record 100 names a key that does not exist: the database refuses it.
        let key_id = if i == 100 { KeyId(999) } else { key };
        waits.push(tokio::spawn(async move {
            writer
                .record(record(&format!("r{i}"), account, key_id, 5))
                .await
        }));
    }
    for wait in waits {
        assert_eq!(wait.await.expect("task"), Ok(()));
    }
    writer.flushed().await;
    let account = store
        .account(account)
        .await
        .expect("read")
        .expect("account");
    assert_eq!(account.charged.nanos(), 199 * 5);
    assert!(store.usage_record("r100").await.expect("read").is_none());
    assert!(store.usage_record("r199").await.expect("read").is_some());
    drop(writer);
    task.await.expect("writer ends when every handle is gone");
}

/// Holds the database's write lock from another connection, as a long commit or a
/// stalled disk would: the ledger cannot commit until it is dropped.
fn hold_write_lock(dir: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("t.db")).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
    conn
}

async fn charged(store: &Arc<dyn Store>, account: AccountId) -> i64 {
    let account = store.account(account).await.expect("read");
    account.expect("account").charged.nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_record_waits_for_the_journal_not_for_the_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let (writer, task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    assert!(writer.journal().is_some());
    let lock = hold_write_lock(dir.path());
    // Answered while the ledger cannot commit: the record is in the journal.
    for i in 0..3 {
        let recorded = writer.record(record(&format!("j{i}"), account, key, 10));
        let recorded = tokio::time::timeout(Duration::from_secs(5), recorded).await;
        assert_eq!(recorded.ok(), Some(Ok(())));
    }
    let journal = writer.journal().expect("journal");
    assert!(journal.sizes()[0] > 0);
    let flushed = tokio::time::timeout(Duration::from_millis(300), writer.flushed()).await;
    assert!(flushed.is_err(), "nothing can be committed yet");
    assert_eq!(charged(&store, account).await, 0);
    drop(lock);
    writer.flushed().await;
    assert_eq!(charged(&store, account).await, 30);
    // Committed: the journal's file is emptied when the writer stops.
    drop(writer);
    task.await.expect("writer ends");
    let [first, second] = Journal::paths(&dir.path().join("t.db"));
    assert_eq!(std::fs::metadata(first).expect("file").len(), 0);
    assert_eq!(std::fs::metadata(second).expect("file").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_journal_a_record_waits_for_its_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    // As on PostgreSQL: no journal.
    let (writer, _task) = UsageWriter::spawn(store.clone(), None, WAIT);
    let lock = hold_write_lock(dir.path());
    let waiting = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.record(record("w", account, key, 10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered before its commit");
    drop(lock);
    assert_eq!(waiting.await.expect("task"), Ok(()));
    assert_eq!(charged(&store, account).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_left_in_the_journal_are_written_at_start_and_charged_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let (first, second) = (
        record("c1", account, key, 100),
        record("c2", account, key, 20),
    );
    // c1 was committed before the crash; c2 and c3 were only in the journal, c3 in
    // the second file.
    store
        .record_usage(std::slice::from_ref(&first))
        .await
        .expect("commit");
    {
        let (journal, left) = Journal::open(&dir.path().join("t.db")).expect("journal");
        assert!(left.is_empty());
        for r in [&first, &second] {
            journal.append(&Frame::of(r), |_| ()).expect("append");
        }
        std::fs::write(
            &journal.file_paths()[1],
            Frame::of(&record("c3", account, key, 3)).0,
        )
        .expect("write");
    }
    let (writer, task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    assert_eq!(charged(&store, account).await, 123);
    for id in ["c1", "c2", "c3"] {
        assert!(
            store.usage_record(id).await.expect("read").is_some(),
            "{id}"
        );
    }
    assert_eq!(writer.journal().expect("journal").sizes(), [0, 0]);
    // A second start finds nothing left to write.
    drop(writer);
    task.await.expect("writer ends");
    let (_writer, _task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    assert_eq!(charged(&store, account).await, 123);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_ledger_falls_far_behind_records_wait_for_their_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let (writer, _task) = UsageWriter::start(store.clone(), WAIT)
        .await
        .expect("start");
    let lock = hold_write_lock(dir.path());
    for i in 0..MAX_BACKLOG {
        assert_eq!(
            writer
                .record(record(&format!("b{i}"), account, key, 1))
                .await,
            Ok(())
        );
    }
    let waiting = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.record(record("last", account, key, 1)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the backlog grew past its bound");
    drop(lock);
    assert_eq!(waiting.await.expect("task"), Ok(()));
    writer.flushed().await;
    assert_eq!(charged(&store, account).await, MAX_BACKLOG as i64 + 1);
}

/// Polls `condition` until it holds (a generous limit: the machine may be loaded).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_ledger_fails_waits_in_time_refuses_admission_and_recovers() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let wait = Duration::from_millis(300);
    // Without a journal (PostgreSQL's path): each response waits for its commit.
    let (writer, _task) = UsageWriter::spawn(store.clone(), None, wait);
    assert_eq!(writer.admit(), Ok(()));
    let lock = hold_write_lock(dir.path());
    let outcome = writer.record(record("late", account, key, 10)).await;
    assert_eq!(outcome, Err(LedgerError::TimedOut(wait)));
    // The batch grows older than the bound: new requests are refused, and so are
    // reads of the ledger, at once.
    eventually("admission stops", || writer.admit().is_err()).await;
    assert_eq!(writer.admit(), Err(LedgerError::Stuck));
    assert_eq!(writer.caught_up().await, Err(LedgerError::Stuck));
    let status = writer.status();
    assert!(status.stuck && status.backlog == 1, "{status:?}");
    assert!(status.oldest_pending_ms >= 300, "{status:?}");
    assert_eq!(charged(&store, account).await, 0);
    // The lock goes: the record that timed out is committed (once), and admission
    // resumes by itself.
    drop(lock);
    writer.flushed().await;
    eventually("admission resumes", || writer.admit().is_ok()).await;
    assert_eq!(writer.caught_up().await, Ok(()));
    assert_eq!(charged(&store, account).await, 10);
    assert_eq!(
        writer.status(),
        WriterStatus {
            stuck: false,
            backlog: 0,
            oldest_pending_ms: 0,
            failed_commits: 0,
            last_error: None,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_journal_records_are_safe_while_stuck_but_admission_stops() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, account, key) = store_with_key(dir.path()).await;
    let wait = Duration::from_millis(300);
    let (writer, _task) = UsageWriter::start(store.clone(), wait)
        .await
        .expect("start");
    let lock = hold_write_lock(dir.path());
    assert_eq!(writer.record(record("j", account, key, 7)).await, Ok(()));
    eventually("admission stops", || writer.admit().is_err()).await;
    // A request admitted just before still gets its record into the journal.
    assert_eq!(writer.record(record("k", account, key, 5)).await, Ok(()));
    drop(lock);
    writer.flushed().await;
    eventually("admission resumes", || writer.admit().is_ok()).await;
    assert_eq!(charged(&store, account).await, 12);
}

#[test]
fn batches_are_published_in_the_order_they_were_taken() {
    let mut order = InOrder::default();
    // Batch 1 ends before batch 0: nothing is published until 0 ends, then both.
    assert_eq!(order.ended(1, 300), 0);
    assert_eq!(order.ended(0, 5), 305);
    assert_eq!(order.ended(2, 7), 7);
    // Two later batches ending first are published together with the one before them.
    assert_eq!(order.ended(4, 11), 0);
    assert_eq!(order.ended(5, 13), 0);
    assert_eq!(order.ended(3, 1), 25);
    assert_eq!(order.ended(6, 2), 2);
}
