//! Relaying a whole (non-streamed) answer: read, measured, translated if needed, charged,
//! and only then sent, so a delivered answer is always charged.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tollgate_formats::{model_name, RawObject};

use crate::billing::Usage;
use crate::gateway::measure::Billing;
use crate::gateway::settlement::Settlement;
use crate::gateway::translate::Translation;
use crate::gateway::COST_HEADER;
use crate::providers::{self, UpstreamError, UpstreamResponse};

/// Largest upstream answer read whole (JSON answers; streams are not bounded).
const MAX_UPSTREAM_BODY: usize = 256 << 20;

/// A translation of the answer back to the client's format.
pub(in crate::gateway) struct Convert<'a> {
    pub(in crate::gateway) translation: Translation,
    pub(in crate::gateway) original: &'a Value,
    pub(in crate::gateway) public_model: &'a str,
}

/// Reads a whole answer, charges it, and answers it (translated if needed).
pub(in crate::gateway) async fn finish(
    upstream: UpstreamResponse,
    provider: &str,
    idle_timeout: Duration,
    settlement: Settlement,
    billing: Billing,
    convert: Option<Convert<'_>>,
    rename: Option<&str>,
) -> Result<Response, UpstreamError> {
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let bytes = match read_limited(upstream, MAX_UPSTREAM_BODY, idle_timeout).await {
        Ok(bytes) => bytes,
        Err(what) => {
            settlement.settle(Usage::default(), 502).await;
            return Err(UpstreamError::malformed(provider, what));
        }
    };
    let is_json = content_type
        .to_str()
        .is_ok_and(|v| v.starts_with("application/json"));
    let answer: Value = if is_json {
        // Billing reads `usage` alone (images also count `data`), so an answer that is
        // passed on as it is gets checked but not built into a tree: an embeddings
        // answer is mostly numbers that would each be parsed and allocated.
        let view = match &convert {
            Some(_) => None,
            None if billing.reads_whole_answer() => None,
            None => serde_json::from_slice::<RawObject>(&bytes).ok().map(|o| {
                o.get("usage")
                    .and_then(|u| serde_json::from_str::<Value>(u.get()).ok())
                    .map(|u| Value::Object(serde_json::Map::from_iter([("usage".into(), u)])))
                    .unwrap_or(Value::Null)
            }),
        };
        match view
            .map(Ok)
            .unwrap_or_else(|| serde_json::from_slice(&bytes))
        {
            Ok(answer) => answer,
            Err(_) => {
                settlement.settle(Usage::default(), 502).await;
                return Err(UpstreamError::malformed(provider, "invalid JSON"));
            }
        }
    } else {
        Value::Null
    };
    let bytes = match convert {
        None if is_json => match rename.and_then(|name| {
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| model_name::rename(text, name))
        }) {
            Some(renamed) => Bytes::from(renamed),
            None => bytes,
        },
        None => bytes,
        Some(c) => match c.translation.answer(&answer, c.original, c.public_model) {
            Ok(bytes) => bytes,
            Err(e) => {
                settlement.settle(Usage::default(), 502).await;
                return Err(UpstreamError::malformed(
                    provider,
                    format!("untranslatable ({e})"),
                ));
            }
        },
    };
    let usage = billing.usage_of(&answer);
    let cost = settlement.settle(usage, 200).await;
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Ok(value) = HeaderValue::from_str(&cost.to_string()) {
        headers.insert(COST_HEADER, value);
    }
    Ok(response)
}

/// Reads a whole upstream body, at most `limit` bytes.
pub(in crate::gateway) async fn read_limited(
    upstream: UpstreamResponse,
    limit: usize,
    idle_timeout: Duration,
) -> Result<Bytes, &'static str> {
    let mut stream = providers::chunks(upstream);
    let mut buffer = bytes::BytesMut::new();
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
