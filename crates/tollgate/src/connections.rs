//! Serving client connections (HTTP/1.1): every connection has a bounded time to send a
//! whole request head (which also closes idle keep-alive connections) and a bounded pause
//! between the chunks of a request body; a request refused before its body was read keeps
//! its connection (the body is read and dropped after the answer); the errors hyper
//! answers by itself (a malformed request line or header, a URI or head too long) carry a
//! JSON body in the API's shape instead of an empty one; shutdown stops accepting and
//! lets open requests finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::ServerLimits;
use crate::error::{ApiError, Shape};
use crate::http::front::plain_code;

/// Accepts and serves connections until `shutdown` resolves, then waits for the open
/// ones to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm holds
        // each one until the client's delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let within = limits.body_timeout;
        let service = tower::ServiceBuilder::new()
            .map_request(move |request: Request<Incoming>| {
                request.map(|body| Unread {
                    body: Some(body),
                    within,
                    ended: false,
                })
            })
            .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
            .service(app.clone());
        let connection = builder.serve_connection(
            TokioIo::new(JsonErrors::new(stream)),
            TowerToHyperService::new(service),
        );
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// How much of a request body that was not read is read (and dropped) after its answer.
const DISCARD_LIMIT: u64 = 1 << 20;

/// A request body that, dropped before its end, is read to its end and dropped by a task
/// of its own (up to [`DISCARD_LIMIT`] bytes, for at most the body timeout). A request
/// refused before its body is read (an unknown key, a rate limit, a database that cannot
/// be reached) drops it unread, and hyper then closes the connection after the answer
/// without saying so in it, so the client's next request on it failed with a broken pipe.
/// Read after the answer, the body does not hold the answer back, and the connection
/// carries the next request. A longer body is left unread: that connection closes.
struct Unread {
    body: Option<Incoming>,
    within: Duration,
    /// The body was read to its end (a chunked one does not say so by itself).
    ended: bool,
}

impl HttpBody for Unread {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
        this.ended |= !matches!(frame, Some(Ok(_)));
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        if self.ended || body.is_end_stream() || body.size_hint().lower() > DISCARD_LIMIT {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let within = self.within;
        runtime.spawn(async move {
            let discard = async {
                let mut read = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DISCARD_LIMIT {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(within, discard).await;
        });
    }
}

/// How much of the start of a request is kept to tell which API an error belongs to.
const REQUEST_START: usize = 64;

/// A client connection whose hyper-written error answers (status only, empty body) are
/// replaced, as they are written, by the same status with a JSON error body. Everything
/// else passes untouched; writes are not vectored, so a whole answer head arrives in one
/// write.
pub struct JsonErrors<T> {
    inner: T,
    /// The first bytes read since the last answer was written (the request line).
    start: [u8; REQUEST_START],
    start_len: usize,
    /// A replacement being written, and how much of it is out, for the caller's write of
    /// `len` bytes.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<T> JsonErrors<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner,
            start: [0; REQUEST_START],
            start_len: 0,
            replacing: None,
        }
    }

    fn shape(&self) -> Shape {
        let start = &self.start[..self.start_len];
        let path = start
            .split(|b| *b == b' ')
            .nth(1)
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or("");
        Shape::of_path(path.split('?').next().unwrap_or(""))
    }
}

/// The status of an answer hyper wrote by itself: a whole head with status 400, 414 or
/// 431 and an empty body (the gateway's own errors always have a JSON body).
fn automatic_error(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = std::str::from_utf8(rest.get(..3)?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    if !matches!(status, 400 | 414 | 431) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    head.contains("\r\ncontent-length: 0\r\n")
        .then(|| StatusCode::from_u16(status).ok())
        .flatten()
}

/// The answer that replaces hyper's empty one.
fn json_answer(status: StatusCode, shape: Shape) -> Vec<u8> {
    let message = match status.as_u16() {
        414 => "The request URI is too long.",
        431 => "The request's headers are too large.",
        _ => "The request could not be parsed as HTTP/1.1.",
    };
    let error = ApiError::new(status, plain_code(status), message);
    let body = match shape {
        Shape::OpenAi => error.openai_body(),
        Shape::Anthropic => error.anthropic_body(),
    }
    .to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.start_len < REQUEST_START {
            let new = &buf.filled()[before..];
            let take = new.len().min(REQUEST_START - this.start_len);
            this.start[this.start_len..this.start_len + take].copy_from_slice(&new[..take]);
            this.start_len += take;
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_none() {
            match automatic_error(buf) {
                Some(status) => {
                    this.replacing = Some((json_answer(status, this.shape()), 0, buf.len()));
                }
                None => {
                    // An answer is going out: the next request starts afresh.
                    this.start_len = 0;
                    return Pin::new(&mut this.inner).poll_write(cx, buf);
                }
            }
        }
        let Some((answer, written, len)) = &mut this.replacing else {
            return Poll::Ready(Ok(0));
        };
        while *written < answer.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let len = *len;
        this.replacing = None;
        this.start_len = 0;
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_heads_are_replaced() {
        let automatic = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(
            automatic_error(automatic),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 90\r\n\r\n";
        assert_eq!(automatic_error(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_error(ok), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert_eq!(automatic_error(with_body), None);
    }

    #[test]
    fn the_replacement_is_json_in_the_shape_of_the_path() {
        let mut conn = JsonErrors::new(());
        conn.start[..28].copy_from_slice(b"POST /v1/messages?beta=true ");
        conn.start_len = 28;
        assert_eq!(conn.shape(), Shape::Anthropic);
        let answer = json_answer(StatusCode::URI_TOO_LONG, Shape::Anthropic);
        let text = String::from_utf8(answer).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
