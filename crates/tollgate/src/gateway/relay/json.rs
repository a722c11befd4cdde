//! Relaying a whole (non-streamed) answer, charged before its last byte is sent, so a
//! delivered answer is always charged:
//! - up to [`READ_WHOLE`], read whole, measured, translated if needed, then sent;
//! - larger, when passed on as it came: relayed as it arrives while the gateway holds
//!   only the chunk in hand, its `usage` found by a scanner as it passes (providers put
//!   it at the end), the last chunk held back until the charge is safe; such an answer
//!   carries no `x-tollgate-cost` (its headers leave first);
//! - larger, when it must be read whole (translated, or measured from its whole text):
//!   read up to [`MAX_WHOLE`], refused above.
//!
//! An answer without readable usage (or not JSON at all) is charged for the text it
//! delivered, counted by the gateway and marked estimated.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;
use tollgate_formats::scan::Scanner;
use tollgate_formats::usage::answer_text_bytes;
use tollgate_formats::{model_name, RawObject};

use crate::billing::Usage;
use crate::error::ApiError;
use crate::gateway::measure::Billing;
use crate::gateway::settlement::Settlement;
use crate::gateway::transcript::{self, TranscriptFormat};
use crate::gateway::translate::Translation;
use crate::gateway::COST_HEADER;
use crate::providers::{self, UpstreamChunks, UpstreamError, UpstreamResponse};

/// Answers up to this size are read whole before they are sent.
pub(in crate::gateway) const READ_WHOLE: usize = 1 << 20;
/// Largest answer read whole when it must be.
pub(in crate::gateway) const MAX_WHOLE: usize = 64 << 20;
/// Most of a `usage` member kept by the scanner.
const MAX_USAGE_TEXT: usize = 64 << 10;

/// A translation of the answer back to the client's format.
pub(in crate::gateway) struct Convert<'a> {
    pub(in crate::gateway) translation: Translation,
    pub(in crate::gateway) original: &'a Value,
    pub(in crate::gateway) public_model: &'a str,
}

/// A native provider's answer, read as the hub format before anything else.
pub(in crate::gateway) struct NativeAnswer<'a> {
    pub(in crate::gateway) native: &'a dyn providers::Native,
    pub(in crate::gateway) endpoint: crate::config::Endpoint,
    pub(in crate::gateway) public_model: &'a str,
    pub(in crate::gateway) base64: bool,
}

/// How one answer is relayed.
pub(in crate::gateway) struct Whole<'a> {
    pub(in crate::gateway) provider: &'a str,
    pub(in crate::gateway) native: Option<NativeAnswer<'a>>,
    pub(in crate::gateway) idle_timeout: Duration,
    pub(in crate::gateway) deadline: Instant,
    pub(in crate::gateway) billing: Billing,
    pub(in crate::gateway) convert: Option<Convert<'a>>,
    pub(in crate::gateway) rename: Option<&'a str>,
    /// Input tokens assumed when the answer reports none.
    pub(in crate::gateway) input_estimate: u64,
    /// Bytes past which a relayed answer is cut (the output reserved for, generously).
    pub(in crate::gateway) max_bytes: u64,
    /// A transcript format the gateway writes from the JSON answer.
    pub(in crate::gateway) render: Option<TranscriptFormat>,
}

/// The next chunk of an answer, within the idle timeout and the deadline.
async fn next_chunk(
    chunks: &mut UpstreamChunks,
    idle: Duration,
    deadline: Instant,
) -> Result<Option<Bytes>, &'static str> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(idle.min(left), chunks.next()).await {
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(_))) => Err("the answer broke off"),
        Ok(None) => Ok(None),
        Err(_) if left <= idle => Err("the answer took longer than the time limit"),
        Err(_) => Err("the answer stalled"),
    }
}

/// Relays an answer and charges it.
pub(in crate::gateway) async fn finish(
    upstream: UpstreamResponse,
    settlement: Settlement,
    w: Whole<'_>,
) -> Result<Response, ApiError> {
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let must_be_whole = w.convert.is_some()
        || w.render.is_some()
        || w.native.is_some()
        || w.billing.reads_whole_answer();
    let limit = if must_be_whole {
        MAX_WHOLE.min(usize::try_from(w.max_bytes).unwrap_or(MAX_WHOLE))
    } else {
        READ_WHOLE
    };
    let mut chunks = providers::chunks(upstream);
    let mut head = BytesMut::new();
    loop {
        match next_chunk(&mut chunks, w.idle_timeout, w.deadline).await {
            Ok(Some(chunk)) if head.len() + chunk.len() > limit => {
                if must_be_whole {
                    settlement.settle_undelivered(502).await;
                    return Err(UpstreamError::malformed(w.provider, "an answer too large").into());
                }
                head.extend_from_slice(&chunk);
                return Ok(relayed(head.freeze(), chunks, settlement, content_type, w));
            }
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(what) => {
                settlement.settle_undelivered(502).await;
                return Err(UpstreamError::malformed(w.provider, what).into());
            }
        }
    }
    let bytes = head.freeze();
    let (bytes, content_type) = match &w.native {
        Some(native) => match read_native(native, &bytes) {
            Ok(hub) => (hub, HeaderValue::from_static("application/json")),
            Err((status, error)) => {
                settlement.settle_undelivered(status).await;
                return Err(error);
            }
        },
        None => (bytes, content_type),
    };
    whole(bytes, settlement, content_type, w).await
}

/// A native provider's whole answer in the hub format; a blocked prompt or answer is the
/// client's 400 (`content_policy_violation`, nothing delivered, nothing charged), an
/// unreadable one the provider's fault.
fn read_native(native: &NativeAnswer<'_>, bytes: &[u8]) -> Result<Bytes, (u16, ApiError)> {
    use tollgate_formats::conversion::gemini::AnswerError;
    let malformed = |what: String| {
        (
            502,
            ApiError::from(UpstreamError::malformed("the provider", what)),
        )
    };
    let answer: Value =
        serde_json::from_slice(bytes).map_err(|_| malformed("invalid JSON".into()))?;
    match native
        .native
        .answer(native.endpoint, &answer, native.public_model, native.base64)
    {
        Ok(hub) => serde_json::to_vec(&hub)
            .map(Bytes::from)
            .map_err(|e| malformed(e.to_string())),
        Err(AnswerError::Blocked(blocked)) => Err((
            400,
            ApiError::bad_request(
                "content_policy_violation",
                format!("The request was refused: {blocked}."),
            ),
        )),
        Err(AnswerError::Malformed(what)) => Err(malformed(what)),
    }
}

/// A whole answer in hand: measured (estimated when it reports no usage), translated if
/// needed, charged, then sent.
async fn whole(
    bytes: Bytes,
    settlement: Settlement,
    content_type: HeaderValue,
    w: Whole<'_>,
) -> Result<Response, ApiError> {
    let declared_json = content_type
        .to_str()
        .is_ok_and(|v| v.starts_with("application/json"));
    // Billing reads `usage` alone (some answers more), so an answer passed on as it is
    // gets checked but not built into a tree: an embeddings answer is mostly numbers
    // that would each be parsed and allocated.
    let view: Option<Value> =
        if w.convert.is_none() && w.render.is_none() && !w.billing.reads_whole_answer() {
            serde_json::from_slice::<RawObject>(&bytes).ok().map(|o| {
                let usage = o
                    .get("usage")
                    .and_then(|u| serde_json::from_str::<Value>(u.get()).ok());
                let mut view = serde_json::Map::new();
                if let Some(usage) = usage {
                    view.insert("usage".into(), usage);
                }
                Value::Object(view)
            })
        } else {
            serde_json::from_slice(&bytes).ok()
        };
    // JSON served under another content type is still JSON to measure.
    let Some(answer) = view.or_else(|| serde_json::from_slice::<Value>(&bytes).ok()) else {
        if declared_json || w.convert.is_some() {
            settlement.settle_undelivered(502).await;
            return Err(UpstreamError::malformed(w.provider, "invalid JSON").into());
        }
        // Not JSON at all: its bytes are the output delivered.
        let usage = w
            .billing
            .estimate(w.input_estimate, bytes.len() as u64, &Value::Null);
        let cost = settlement.settle_delivered(usage, true).await?;
        return Ok(respond(bytes, content_type, Some(cost)));
    };
    let (usage, estimated_usage) = match w.billing.measured(&answer) {
        Some(usage) => (usage, false),
        None => {
            let text = if answer.get("usage").is_some() || w.billing.reads_whole_answer() {
                answer_text_bytes(&answer)
            } else {
                // The view holds only `usage`: the text is in the whole answer.
                serde_json::from_slice::<Value>(&bytes)
                    .map(|a| answer_text_bytes(&a))
                    .unwrap_or(bytes.len() as u64)
            };
            (w.billing.estimate(w.input_estimate, text, &answer), true)
        }
    };
    let bytes = match &w.convert {
        None => match w.rename.and_then(|name| {
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| model_name::rename(text, name))
        }) {
            Some(renamed) => Bytes::from(renamed),
            None => bytes,
        },
        Some(c) => match c.translation.answer(&answer, c.original, c.public_model) {
            Ok(bytes) => bytes,
            Err(e) => {
                settlement.settle_undelivered(502).await;
                return Err(
                    UpstreamError::malformed(w.provider, format!("untranslatable ({e})")).into(),
                );
            }
        },
    };
    let (bytes, content_type) = match w.render {
        None => (bytes, content_type),
        Some(format) => match transcript::render(format, &answer) {
            Some(text) => (
                Bytes::from(text),
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            None => {
                settlement.settle_undelivered(502).await;
                return Err(UpstreamError::malformed(
                    w.provider,
                    "a transcript without the text or segments asked for",
                )
                .into());
            }
        },
    };
    let cost = settlement.settle_delivered(usage, estimated_usage).await?;
    let content_type = if w.convert.is_some() && w.render.is_none() {
        HeaderValue::from_static("application/json")
    } else {
        content_type
    };
    Ok(respond(bytes, content_type, Some(cost)))
}

fn respond(
    bytes: Bytes,
    content_type: HeaderValue,
    cost: Option<crate::billing::Credits>,
) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(value) = cost.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
        headers.insert(COST_HEADER, value);
    }
    response
}

/// A large answer relayed as it arrives (see the module docs).
fn relayed(
    mut head: Bytes,
    chunks: UpstreamChunks,
    settlement: Settlement,
    content_type: HeaderValue,
    w: Whole<'_>,
) -> Response {
    let mut scanner = Scanner::new(&["usage", "model"], MAX_USAGE_TEXT);
    scanner.push(&head);
    if let (Some(name), Some(model)) = (w.rename, scanner.member("model")) {
        if model.end <= head.len() {
            let mut renamed = BytesMut::with_capacity(head.len() + name.len());
            renamed.extend_from_slice(&head[..model.start]);
            renamed.extend_from_slice(Value::String(name.to_string()).to_string().as_bytes());
            renamed.extend_from_slice(&head[model.end..]);
            head = renamed.freeze();
        }
    }
    let relay = Relayed {
        chunks,
        scanner,
        held: Some(head),
        settlement: Some(settlement),
        billing: w.billing,
        idle_timeout: w.idle_timeout,
        deadline: w.deadline,
        input_estimate: w.input_estimate,
        max_bytes: w.max_bytes,
        failed: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        r.next().await.map(|item| (item, r))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

struct Relayed {
    chunks: UpstreamChunks,
    scanner: Scanner,
    /// The chunk held back until the next one arrives (the last until the charge is safe).
    held: Option<Bytes>,
    settlement: Option<Settlement>,
    billing: Billing,
    idle_timeout: Duration,
    deadline: Instant,
    input_estimate: u64,
    max_bytes: u64,
    /// The body ends with this error once the chunk in hand is sent.
    failed: Option<&'static str>,
    done: bool,
}

impl Relayed {
    /// What has been delivered so far, measured: the scanned `usage` if the provider gave
    /// one, else the bytes relayed as text.
    fn usage(&self) -> (Usage, bool) {
        let reported = self
            .scanner
            .member("usage")
            .and_then(|m| m.text.as_deref())
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .map(|usage| serde_json::json!({ "usage": usage }))
            .and_then(|answer| self.billing.measured(&answer));
        match reported {
            Some(usage) => (usage, false),
            None => (
                self.billing.estimate(
                    self.input_estimate,
                    self.scanner.offset() as u64,
                    &Value::Null,
                ),
                true,
            ),
        }
    }

    async fn settle(&mut self, status: u16) {
        if let Some(settlement) = self.settlement.take() {
            let (usage, estimated) = self.usage();
            if estimated {
                settlement.settle_estimated(usage, status).await;
            } else {
                settlement.settle(usage, status).await;
            }
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if let Some(what) = self.failed.take() {
            self.done = true;
            return Some(Err(std::io::Error::other(what)));
        }
        if self.done {
            return None;
        }
        loop {
            match next_chunk(&mut self.chunks, self.idle_timeout, self.deadline).await {
                Ok(Some(chunk)) if chunk.is_empty() => continue,
                Ok(Some(chunk)) => {
                    self.scanner.push(&chunk);
                    if self.scanner.offset() as u64 > self.max_bytes {
                        tracing::warn!(
                            bytes = self.scanner.offset(),
                            "the provider's answer went past the output reserved for; cut"
                        );
                        return self
                            .end_with_error(502, "the answer went past the output limit")
                            .await;
                    }
                    if let Some(previous) = self.held.replace(chunk) {
                        return Some(Ok(previous));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    let Some(settlement) = self.settlement.take() else {
                        return self.held.take().map(Ok);
                    };
                    let (usage, estimated) = self.usage();
                    return match settlement.settle_delivered(usage, estimated).await {
                        Ok(_) => self.held.take().map(Ok),
                        // Not delivered as a success: the body breaks off before its end.
                        Err(e) => Some(Err(std::io::Error::other(e))),
                    };
                }
                Err(what) => return self.end_with_error(502, what).await,
            }
        }
    }

    /// The answer broke off: what was read is charged and delivered (the chunk held
    /// back), then the body ends with an error (the client sees a truncated answer).
    async fn end_with_error(
        &mut self,
        status: u16,
        what: &'static str,
    ) -> Option<Result<Bytes, std::io::Error>> {
        tracing::warn!(what, "relayed answer ended early");
        self.settle(status).await;
        match self.held.take() {
            Some(held) => {
                self.failed = Some(what);
                Some(Ok(held))
            }
            None => {
                self.done = true;
                Some(Err(std::io::Error::other(what)))
            }
        }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // The client went away: it pays for what was generated so far.
        if let Some(settlement) = self.settlement.take() {
            let (usage, estimated) = self.usage();
            settlement.settle_detached(usage, 499, estimated);
        }
    }
}

/// Reads a whole upstream body, at most `limit` bytes.
pub(in crate::gateway) async fn read_limited(
    upstream: UpstreamResponse,
    limit: usize,
    idle_timeout: Duration,
) -> Result<Bytes, &'static str> {
    let mut stream = providers::chunks(upstream);
    let mut buffer = BytesMut::new();
    loop {
        match tokio::time::timeout(idle_timeout, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                if buffer.len() + chunk.len() > limit {
                    return Err("an answer too large");
                }
                buffer.extend_from_slice(&chunk);
            }
            Ok(Some(Err(_))) => return Err("the answer broke off"),
            Ok(None) => return Ok(buffer.freeze()),
            Err(_) => return Err("the answer stalled"),
        }
    }
}
