//! The listening half of one fake: bound on one address, it can be stopped (the port
//! closed and open connections reset, as when a host dies) and started again on the
//! same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::conn::{ConnHandle, KillableListener};
use crate::{http, Shared};

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Bumped by every stop and restart, so a timed re-bind that was overtaken (by a
    /// `clear`, a `restart`, a later `stop`) does nothing.
    epoch: AtomicU64,
    /// Stopped by a `Fault::Refuse` (that `clear` ends), not by `stop()`.
    pub(crate) refusing: AtomicBool,
    /// The `FakeUpstream` was dropped: never listen again.
    closed: AtomicBool,
}

impl Server {
    /// Binds `listen` and starts serving.
    pub(crate) async fn bind(listen: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = Arc::new(Self {
            addr,
            shared,
            task: Mutex::new(None),
            epoch: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        server.serve(listener);
        Ok(server)
    }

    fn lock(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        // A panic while holding this lock cannot leave the option inconsistent.
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, listener: TcpListener) {
        let app =
            http::router(self.shared.clone()).into_make_service_with_connect_info::<ConnHandle>();
        let listener = KillableListener::new(listener, self.shared.conns.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake upstream server stopped");
            }
        });
        if let Some(old) = self.lock().replace(task) {
            old.abort();
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn running(&self) -> bool {
        self.lock().is_some()
    }

    /// Closes the port and resets the open connections; returns the new epoch.
    pub(crate) async fn stop(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let task = self.lock().take();
        if let Some(task) = task {
            task.abort();
            // The listener is closed once the aborted task is gone.
            let _ = task.await;
        }
        self.shared.conns.kill_all();
        epoch
    }

    /// Listens again on the same port (nothing to do when listening).
    pub(crate) async fn restart(&self) -> anyhow::Result<()> {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.refusing.store(false, Ordering::Release);
        self.start_if(epoch).await
    }

    /// Binds the port again and serves, unless the epoch moved on, the fake is
    /// listening already, or it was dropped.
    pub(crate) async fn start_if(&self, epoch: u64) -> anyhow::Result<()> {
        if self.closed.load(Ordering::Acquire) || self.running() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        if self.closed.load(Ordering::Acquire) || self.epoch() != epoch {
            return Ok(());
        }
        self.serve(listener);
        self.refusing.store(false, Ordering::Release);
        tracing::info!(addr = %self.addr, "fake upstream listening again");
        Ok(())
    }

    /// Stops for good (the `FakeUpstream` is dropped); pending re-binds do nothing.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(task) = self.lock().take() {
            task.abort();
        }
    }
}
