//! Answers that misbehave on command: a JSON body padded to gigabytes or never
//! finished (written in chunks, never held), a body written a few bytes at a time,
//! a body served under the wrong content type.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{stream, StreamExt};

use crate::content::{Plan, Reply};
use crate::directives::Directives;
use crate::error::{self, Flavor};
use crate::http;

/// Put at the end of the reply's text before rendering, then replaced by the padding.
const MARKER: &str = "FAKEPADMARKERq7Zx3";
/// The padding: this unit repeated (one output token per 4 bytes).
const PAD_UNIT: &[u8; 4] = b" pad";
/// Bytes of padding per write of a `pad_bytes` body.
const PAD_CHUNK: usize = 64 * 1024;
/// Bytes of padding per write of an endless JSON body.
const ENDLESS_CHUNK: usize = 1024;
/// Shortest pause between the writes of an endless JSON body.
const MIN_ENDLESS_DELAY: Duration = Duration::from_millis(1);
/// Bytes per write with `trickle_ms`.
const TRICKLE_BYTES: usize = 16;

/// 64 KiB of padding, built once and shared by every padded body.
fn pad_block() -> &'static Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut v = Vec::with_capacity(PAD_CHUNK);
        while v.len() < PAD_CHUNK {
            v.extend_from_slice(PAD_UNIT);
        }
        Bytes::from(v)
    })
}

/// True when a non-streamed answer's text is padded (`pad_bytes`) or never ends
/// (`endless`).
fn pads(dirs: &Directives) -> bool {
    dirs.endless || dirs.pad_bytes.is_some()
}

/// `pad_bytes` only shapes non-streamed answers; a streamed request with it is a 400.
pub(crate) fn check_streamed(
    dirs: &Directives,
    streamed: bool,
    flavor: Flavor,
) -> Result<(), Response> {
    if streamed && dirs.pad_bytes.is_some() {
        return Err(error::bad_request(
            flavor,
            "fake directive `pad_bytes` is for non-streamed answers",
            None,
        ));
    }
    Ok(())
}

/// Marks where the padding goes: after the reply's text (text replies only).
pub(crate) fn mark(dirs: &Directives, plan: &mut Plan) {
    if let (true, Reply::Text(chunks)) = (pads(dirs), &mut plan.reply) {
        chunks.push(MARKER.to_string());
    }
}

/// A 200 JSON answer: `rendered` as it is, or, when [`mark`] marked it, the part
/// before the mark, the padding (`pad_bytes` bytes, or endless), and the rest.
pub(crate) fn json(dirs: &Directives, configured_delay: Duration, rendered: Bytes) -> Response {
    if !pads(dirs) {
        return http::json_bytes(rendered);
    }
    let Some(at) = find(&rendered, MARKER.as_bytes()) else {
        return http::json_bytes(rendered);
    };
    let head = rendered.slice(..at);
    let tail = rendered.slice(at + MARKER.len()..);
    let body = if dirs.endless {
        let delay = dirs.chunk_delay(configured_delay).max(MIN_ENDLESS_DELAY);
        let pad = pad_block().slice(..ENDLESS_CHUNK);
        let forever = stream::unfold((), move |()| {
            let pad = pad.clone();
            async move {
                tokio::time::sleep(delay).await;
                Some((pad, ()))
            }
        });
        Body::from_stream(
            stream::once(async move { head })
                .chain(forever)
                .map(Ok::<_, std::io::Error>),
        )
    } else {
        let total = dirs.pad_bytes.unwrap_or(0);
        let chunks = stream::unfold(0u64, move |sent| async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(PAD_CHUNK as u64);
            Some((pad_block().slice(..n as usize), sent + n))
        });
        Body::from_stream(
            stream::once(async move { head })
                .chain(chunks)
                .chain(stream::once(async move { tail }))
                .map(Ok::<_, std::io::Error>),
        )
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Applies `wrong_type` (a success served as `text/plain`) and `trickle_ms` (the body
/// written 16 bytes at a time, N ms apart) to a finished answer.
pub(crate) fn finish(dirs: &Directives, mut resp: Response) -> Response {
    if dirs.wrong_type && resp.status().is_success() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    let Some(delay) = dirs.trickle else {
        return resp;
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, trickle(body, delay))
}

/// Re-chunks `body` into writes of at most [`TRICKLE_BYTES`], `delay` apart; it holds
/// one chunk of the inner body at a time.
fn trickle(body: Body, delay: Duration) -> Body {
    let state = (body.into_data_stream(), Bytes::new(), true);
    let s = stream::unfold(state, move |(mut inner, mut buf, first)| async move {
        while buf.is_empty() {
            match inner.next().await? {
                Ok(b) => buf = b,
                Err(e) => return Some((Err(e), (inner, buf, false))),
            }
        }
        if !first && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let piece = buf.split_to(buf.len().min(TRICKLE_BYTES));
        Some((Ok(piece), (inner, buf, false)))
    });
    Body::from_stream(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_block_repeats_the_unit() {
        let b = pad_block();
        assert_eq!(b.len(), PAD_CHUNK);
        assert!(b.chunks(4).all(|c| c == PAD_UNIT));
        assert_eq!(find(b"abcMARK", b"MARK"), Some(3));
    }
}
