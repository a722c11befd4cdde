//! Faults on command, for routing tests with several fakes: the next N model requests,
//! or every one for a while, get a status, a reset, a slow first byte, or a refused
//! connection (the listener really closes, and re-binds the same port afterwards).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::conn::ConnHandle;
use crate::error::{self, Flavor};
use crate::server::Server;
use crate::Shared;

/// How long a timed `Refuse` keeps retrying to re-bind its port (another socket may
/// hold it for a moment).
const REBIND_FOR: Duration = Duration::from_secs(10);
const REBIND_PAUSE: Duration = Duration::from_millis(50);

/// A fault the fake applies to the model requests it receives (every path under
/// `/v1`; the `/__fake` control paths are never faulted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// That status (400..=599) with an error body in the provider's shape (Anthropic's
    /// for `/v1/messages` or a request with `anthropic-version`, OpenAI's otherwise),
    /// and a `retry-after: N` header when set.
    Status {
        /// The HTTP status.
        status: u16,
        /// Seconds for the `retry-after` header.
        retry_after: Option<u64>,
    },
    /// The TCP connection is reset before any response byte.
    Reset,
    /// The answer waits this long before its first byte (on top of any other latency).
    FirstByte(Duration),
    /// Connections are refused: the listener is closed (open connections are reset)
    /// and re-bound on the same port when the fault ends. Only with
    /// [`Faults::for_duration`], as refused connections never reach the fake to be
    /// counted; see also [`crate::FakeUpstream::stop`].
    Refuse,
}

/// The fault in force: for how many more requests, or until when.
#[derive(Debug, Clone)]
struct Active {
    fault: Fault,
    left: Option<u64>,
    until: Option<Instant>,
}

/// The fault state of one fake; `armed` keeps the unfaulted path to one atomic load.
#[derive(Default)]
pub(crate) struct FaultState {
    armed: AtomicBool,
    active: Mutex<Option<Active>>,
    /// Requests a fault answered.
    pub(crate) faulted: AtomicU64,
}

impl FaultState {
    fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        // A panic while holding this lock cannot leave the option inconsistent.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, active: Option<Active>) {
        let mut slot = self.lock();
        self.armed.store(active.is_some(), Ordering::Release);
        *slot = active;
    }

    /// The fault for the next `n` requests.
    pub(crate) fn next(&self, n: u64, fault: Fault) {
        self.set((n > 0).then_some(Active {
            fault,
            left: Some(n),
            until: None,
        }));
    }

    /// The fault for every request during `d`.
    pub(crate) fn for_duration(&self, d: Duration, fault: Fault) {
        self.set(Some(Active {
            fault,
            left: None,
            until: Some(Instant::now() + d),
        }));
    }

    pub(crate) fn clear(&self) {
        self.set(None);
    }

    /// The fault this request gets, if any (consuming one of a counted fault).
    fn take(&self) -> Option<Fault> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.lock();
        let active = slot.as_mut()?;
        if active.until.is_some_and(|t| Instant::now() >= t) {
            *slot = None;
            self.armed.store(false, Ordering::Release);
            return None;
        }
        let fault = active.fault.clone();
        if let Some(left) = &mut active.left {
            *left = left.saturating_sub(1);
            if *left == 0 {
                *slot = None;
                self.armed.store(false, Ordering::Release);
            }
        }
        Some(fault)
    }
}

/// Middleware: answers a model request with the fault in force, if any. It runs
/// after the request is counted and recorded, so faulted attempts are counted too.
pub(crate) async fn apply(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(fault) = s.faults.take() else {
        return next.run(req).await;
    };
    Shared::bump(&s.faults.faulted);
    match fault {
        Fault::Status {
            status,
            retry_after,
        } => {
            let anthropic = req.uri().path() == "/v1/messages"
                || req.headers().contains_key("anthropic-version");
            let flavor = if anthropic {
                Flavor::Anthropic
            } else {
                Flavor::OpenAi
            };
            error::injected(flavor, status, retry_after, None)
        }
        Fault::Reset => {
            if let Some(ConnectInfo(conn)) = req.extensions().get::<ConnectInfo<ConnHandle>>() {
                conn.kill();
            }
            StatusCode::OK.into_response()
        }
        Fault::FirstByte(d) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
        // Refusing closes the listener; a request already accepted is served.
        Fault::Refuse => next.run(req).await,
    }
}

/// Sets faults on one fake upstream: one fault at a time, a new one replaces the
/// current one (and a refusing listener comes back).
#[derive(Clone)]
pub struct Faults {
    server: Arc<Server>,
}

impl Faults {
    pub(crate) fn new(server: Arc<Server>) -> Self {
        Self { server }
    }

    /// The next `n` model requests get `fault`. `Fault::Refuse` is an error here:
    /// refused connections never reach the fake, so they cannot be counted.
    pub async fn next(&self, n: u64, fault: Fault) -> anyhow::Result<()> {
        if fault == Fault::Refuse {
            anyhow::bail!(
                "Fault::Refuse cannot be counted; use for_duration, or stop() and restart()"
            );
        }
        self.end_refusal().await?;
        self.server.shared.faults.next(n, fault);
        Ok(())
    }

    /// Every model request during `d` gets `fault`; with `Fault::Refuse` the listener
    /// is closed now and re-bound on the same port after `d`.
    pub async fn for_duration(&self, d: Duration, fault: Fault) -> anyhow::Result<()> {
        if fault != Fault::Refuse {
            self.end_refusal().await?;
            self.server.shared.faults.for_duration(d, fault);
            return Ok(());
        }
        self.server.shared.faults.clear();
        let epoch = self.server.stop().await;
        self.server.refusing.store(true, Ordering::Release);
        let server = self.server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let give_up = Instant::now() + REBIND_FOR;
            while server.epoch() == epoch {
                match server.start_if(epoch).await {
                    Ok(()) => return,
                    Err(e) if Instant::now() >= give_up => {
                        tracing::error!(error = %e, "fake upstream could not re-bind its port");
                        return;
                    }
                    Err(_) => tokio::time::sleep(REBIND_PAUSE).await,
                }
            }
        });
        Ok(())
    }

    /// Ends every fault; a refusing listener is re-bound now.
    pub async fn clear(&self) -> anyhow::Result<()> {
        self.server.shared.faults.clear();
        self.end_refusal().await
    }

    async fn end_refusal(&self) -> anyhow::Result<()> {
        if self.server.refusing.load(Ordering::Acquire) {
            self.server.restart().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_and_timed_faults_run_out() {
        let state = FaultState::default();
        assert_eq!(state.take(), None);
        state.next(2, Fault::Reset);
        assert_eq!(state.take(), Some(Fault::Reset));
        assert_eq!(state.take(), Some(Fault::Reset));
        assert_eq!(state.take(), None);
        state.next(0, Fault::Reset);
        assert_eq!(state.take(), None);
        state.for_duration(Duration::ZERO, Fault::Reset);
        assert_eq!(state.take(), None);
        state.for_duration(Duration::from_secs(3600), Fault::Reset);
        assert_eq!(state.take(), Some(Fault::Reset));
        assert_eq!(state.take(), Some(Fault::Reset));
        state.clear();
        assert_eq!(state.take(), None);
    }
}
