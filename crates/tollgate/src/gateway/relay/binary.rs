//! Relaying a binary answer (speech audio), holding back only its last chunk until the
//! charge is safe.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::billing::Usage;
use crate::gateway::settlement::Settlement;
use crate::providers::{self, UpstreamChunks, UpstreamResponse};

/// Relays a binary answer (speech audio), holding back only its last chunk until the
/// charge is committed.
pub(super) fn binary_response(
    upstream: UpstreamResponse,
    settlement: Settlement,
    usage: Usage,
    idle_timeout: Duration,
) -> Response {
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    struct State {
        upstream: UpstreamChunks,
        held: Option<Bytes>,
        settlement: Option<Settlement>,
        usage: Usage,
        idle_timeout: Duration,
        /// Some audio reached the client.
        delivered: bool,
    }
    impl Drop for State {
        fn drop(&mut self) {
            if let Some(settlement) = self.settlement.take() {
                settlement.settle_detached(self.usage, 499, false);
            }
        }
    }
    let state = State {
        upstream: providers::chunks(upstream),
        held: None,
        settlement: Some(settlement),
        usage,
        idle_timeout,
        delivered: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            match tokio::time::timeout(s.idle_timeout, s.upstream.next()).await {
                Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Ok(Some(Ok(chunk))) => {
                    if let Some(previous) = s.held.replace(chunk) {
                        s.delivered = true;
                        return Some((Ok(previous), s));
                    }
                }
                Ok(None) => {
                    let last = s.held.take()?;
                    if let Some(settlement) = s.settlement.take() {
                        if let Err(e) = settlement.settle_delivered(s.usage, false).await {
                            // Not delivered as a success: the body breaks off instead.
                            return Some((Err(std::io::Error::other(e)), s));
                        }
                    }
                    return Some((Ok(last), s));
                }
                Ok(Some(Err(_))) | Err(_) => {
                    // Audio already relayed is output delivered: it is charged (speech is
                    // priced by the characters asked for, known from the start).
                    if let Some(settlement) = s.settlement.take() {
                        if s.delivered {
                            settlement.settle(s.usage, 502).await;
                        } else {
                            settlement.settle_undelivered(502).await;
                        }
                    }
                    return Some((
                        Err(std::io::Error::other(
                            "the provider's audio stream broke off",
                        )),
                        s,
                    ));
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}
