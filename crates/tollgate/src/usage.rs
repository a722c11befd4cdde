//! The usage writer: appends usage records to the ledger in batches (group commit).
//! A caller waits until its record is committed, so a response is only finished once
//! its charge is durable, while many requests share one transaction.
//!
//! The writer runs on a thread of its own (the runtime's blocking pool), so a store with
//! a synchronous ledger connection commits a batch on it directly: a record crosses
//! threads once to get there and once when its caller is woken.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError, UsageRecord};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 1024;

struct Pending {
    record: UsageRecord,
    done: oneshot::Sender<()>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::UnboundedSender<Pending>,
}

impl UsageWriter {
    /// Starts the writer. It ends once every handle is dropped and the queue is drained.
    pub fn start(store: Arc<dyn Store>) -> (UsageWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = Handle::current();
        let task = tokio::task::spawn_blocking(move || write_loop(store.as_ref(), &rt, rx));
        (UsageWriter { tx }, task)
    }

    /// Queues a record and waits until it is committed. Returns `false` only if the
    /// writer is gone (shutting down), in which case the record was not written.
    pub async fn record(&self, record: UsageRecord) -> bool {
        let (done, committed) = oneshot::channel();
        if self.tx.send(Pending { record, done }).is_err() {
            tracing::error!("usage writer is gone; a usage record was not written");
            return false;
        }
        committed.await.is_ok()
    }
}

/// Writes records, retrying transient failures with backoff until they pass; returns
/// the first permanent failure.
fn write_with_retries(
    store: &dyn Store,
    rt: &Handle,
    records: &[UsageRecord],
) -> Result<(), StoreError> {
    let mut backoff = Duration::from_millis(10);
    loop {
        match store.record_usage_blocking(rt, records) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, batch = records.len(), "writing usage failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn write_loop(store: &dyn Store, rt: &Handle, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut records: Vec<UsageRecord> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        records.clear();
        records.extend(batch.iter().map(|p| p.record.clone()));
        // Records are idempotent by request id, so retrying a batch whose commit may or
        // may not have happened charges nothing twice.
        if let Err(e) = write_with_retries(store, rt, &records) {
            // The database refuses something in the batch: write the records one by one
            // so one bad record cannot hold back every other charge.
            tracing::error!(error = %e, batch = records.len(), "a usage batch was refused; writing its records one by one");
            for record in &records {
                if let Err(e) = write_with_retries(store, rt, std::slice::from_ref(record)) {
                    tracing::error!(
                        error = %e,
                        request_id = %record.request_id,
                        account = record.account_id.0,
                        key = record.key_id.0,
                        cost_nanos = record.cost.nanos(),
                        "a usage record was refused by the database and NOT written"
                    );
                }
            }
        }
        for pending in batch.drain(..) {
            let _ = pending.done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::Credits;
    use crate::store::{AccountId, KeyId, KeyKind, NewKey, SqliteStore};

    fn record(id: &str, account: AccountId, key: KeyId, cost: i64) -> UsageRecord {
        UsageRecord {
            request_id: id.to_string(),
            account_id: account,
            key_id: key,
            model: "m".into(),
            endpoint: "chat.completions".into(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost: Credits::from_nanos(cost),
            status: 200,
            latency_ms: 1,
            created_at: 1_700_000_000,
        }
    }

    #[tokio::test]
    async fn concurrent_records_share_commits_and_a_bad_record_blocks_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        store.migrate().await.expect("migrate");
        let account = store.create_account("a", 0).await.expect("account");
        let key = store
            .create_key(NewKey {
                account_id: account.id,
                kind: KeyKind::Inference,
                name: "k".into(),
                key_hash: "h".into(),
                hint: "h".into(),
                created_at: 0,
                expires_at: None,
                credit_limit: None,
                rate_limit_rpm: None,
            })
            .await
            .expect("key");
        let store: Arc<dyn Store> = Arc::new(store);
        let (writer, task) = UsageWriter::start(store.clone());
        let mut waits = Vec::new();
        for i in 0..200 {
            let writer = writer.clone();
            // Record 100 names a key that does not exist: the database refuses it.
            let key_id = if i == 100 { KeyId(999) } else { key.id };
            waits.push(tokio::spawn(async move {
                writer
                    .record(record(&format!("r{i}"), account.id, key_id, 5))
                    .await
            }));
        }
        for wait in waits {
            assert!(wait.await.expect("task"));
        }
        let account = store
            .account(account.id)
            .await
            .expect("read")
            .expect("account");
        assert_eq!(account.charged.nanos(), 199 * 5);
        assert!(store.usage_record("r100").await.expect("read").is_none());
        assert!(store.usage_record("r199").await.expect("read").is_some());
        drop(writer);
        task.await.expect("writer ends when every handle is gone");
    }
}
