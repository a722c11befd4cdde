//! Connections a handler can reset: the `reset` directive and fault need the client to
//! see a connection error and no HTTP status at all, and stopping the listener kills
//! the open connections as a crashed host would.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
pub(crate) struct ConnState {
    killed: AtomicBool,
    /// The connection's task, woken by `kill` so an idle connection dies at once.
    waker: AtomicWaker,
}

/// A handle on one connection, given to handlers through `ConnectInfo`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnHandle(Arc<ConnState>);

impl ConnHandle {
    /// Every later read or write on the connection fails, so the server drops it; the
    /// socket closes with zero linger, which sends a TCP RST.
    pub(crate) fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    fn killed(&self) -> bool {
        self.0.killed.load(Ordering::Acquire)
    }
}

/// The open connections of one fake, so that stopping it can kill them.
#[derive(Default)]
pub(crate) struct Conns(Mutex<ConnList>);

#[derive(Default)]
struct ConnList {
    live: Vec<Weak<ConnState>>,
    /// Length after the last pruning; the list is pruned when it doubles.
    pruned: usize,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnList> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, handle: &ConnHandle) {
        let mut list = self.lock();
        if list.live.len() >= 2 * list.pruned.max(32) {
            list.live.retain(|w| w.strong_count() > 0);
            list.pruned = list.live.len();
        }
        list.live.push(Arc::downgrade(&handle.0));
    }

    /// Kills every open connection.
    pub(crate) fn kill_all(&self) {
        let live = std::mem::take(&mut self.lock().live);
        for state in live.iter().filter_map(Weak::upgrade) {
            ConnHandle(state).kill();
        }
    }
}

/// A TCP listener whose connections carry a [`ConnHandle`].
pub(crate) struct KillableListener {
    inner: TcpListener,
    conns: Arc<Conns>,
}

impl KillableListener {
    pub(crate) fn new(inner: TcpListener, conns: Arc<Conns>) -> Self {
        Self { inner, conns }
    }
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let handle = ConnHandle::default();
                    self.conns.add(&handle);
                    let io = KillableIo { stream, handle };
                    return (io, addr);
                }
                Err(e) => {
                    // Per-connection errors (the peer gave up) are harmless; others, such
                    // as running out of file descriptors, deserve a pause.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().handle.clone()
    }
}

/// A TCP stream that fails every operation once its handle is killed.
pub(crate) struct KillableIo {
    stream: TcpStream,
    handle: ConnHandle,
}

impl KillableIo {
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.handle.0.waker.register(cx.waker());
        if self.handle.killed() {
            let _ = self.stream.set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by the fake upstream",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
