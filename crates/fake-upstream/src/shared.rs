//! State shared by the handlers of one fake upstream: options, counters, recorded
//! requests, ids, the fault in force and the open connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::conn::Conns;
use crate::faults::FaultState;
use crate::{content, fast, Options, Received, Stats};

/// The model paths counted one by one; any other path counts as `other`.
const ENDPOINTS: [&str; 10] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/moderations",
    "/v1/models",
];

pub(crate) struct Shared {
    pub(crate) opts: Options,
    pub(crate) counters: Counters,
    received: Mutex<Vec<Received>>,
    next_id: AtomicU64,
    pub(crate) canned: Option<fast::Canned>,
    pub(crate) faults: FaultState,
    pub(crate) conns: Arc<Conns>,
    /// The Vertex access tokens issued.
    pub(crate) tokens: crate::vertex::Tokens,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) streams_started: AtomicU64,
    pub(crate) streams_completed: AtomicU64,
    pub(crate) streams_cancelled: AtomicU64,
    pub(crate) streams_aborted: AtomicU64,
    /// Requests per path of [`ENDPOINTS`], then `other`.
    endpoints: [AtomicU64; ENDPOINTS.len() + 1],
}

impl Counters {
    /// Counts one model request to `path`.
    pub(crate) fn request(&self, path: &str) {
        Shared::bump(&self.requests);
        let i = ENDPOINTS
            .iter()
            .position(|e| *e == path)
            .unwrap_or(ENDPOINTS.len());
        Shared::bump(&self.endpoints[i]);
    }

    /// Requests per path, the paths that got some.
    pub(crate) fn by_endpoint(&self) -> BTreeMap<String, u64> {
        ENDPOINTS
            .iter()
            .chain(["other"].iter())
            .zip(&self.endpoints)
            .map(|(p, n)| (p.to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl Shared {
    pub(crate) fn new(opts: Options) -> Self {
        let canned = opts.fast.then(fast::Canned::build);
        Self {
            opts,
            counters: Counters::default(),
            received: Mutex::new(Vec::new()),
            // Ids differ between runs, so nothing downstream sees one twice.
            next_id: AtomicU64::new(id_seed()),
            canned,
            faults: FaultState::default(),
            conns: Arc::default(),
            tokens: crate::vertex::Tokens::default(),
        }
    }

    /// A fresh id: `prefix` then `len` base-62 characters, unique per server.
    pub(crate) fn id(&self, prefix: &str, len: usize) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        content::alnum_id(prefix, n, len)
    }

    pub(crate) fn received_lock(&self) -> MutexGuard<'_, Vec<Received>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn record(&self, r: Received) {
        self.received_lock().push(r);
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            requests: get(&c.requests),
            faulted: get(&self.faults.faulted),
            streams_started: get(&c.streams_started),
            streams_completed: get(&c.streams_completed),
            streams_cancelled: get(&c.streams_cancelled),
            streams_aborted: get(&c.streams_aborted),
        }
    }
}

fn id_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    content::mix(nanos ^ u64::from(std::process::id()).rotate_left(32))
}
