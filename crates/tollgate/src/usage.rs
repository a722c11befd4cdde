//! The usage writer: appends usage records to the ledger in batches (group commit).
//! A caller waits until its record is committed, so a response is only finished once
//! its charge is durable, while many requests share one transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, UsageRecord};

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
    /// Starts the writer task. It ends once every handle is dropped and the queue is drained.
    pub fn start(store: Arc<dyn Store>) -> (UsageWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(store, rx));
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

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut records: Vec<UsageRecord> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        records.clear();
        records.extend(batch.iter().map(|p| p.record.clone()));
        let mut backoff = Duration::from_millis(10);
        // Records are idempotent by request id, so retrying a batch whose commit may or
        // may not have happened charges nothing twice.
        while let Err(e) = store.record_usage(&records).await {
            tracing::error!(error = %e, batch = records.len(), "writing usage failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        for pending in batch.drain(..) {
            let _ = pending.done.send(());
        }
    }
}
