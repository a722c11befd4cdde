//! Relaying the provider's answer to the client, by kind: an event stream, a binary body
//! (speech audio) or a whole JSON answer.

pub(super) mod binary;
mod cutoff;
pub(super) mod json;
pub(super) mod sse;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use axum::http::header;
use axum::response::Response;
use tollgate_formats::UsageTracker;

use super::measure::{Billing, Hosted};
use super::plan::Prepared;
use super::settlement::Settlement;
use crate::error::ApiError;
use crate::providers::{self, UpstreamError, UpstreamResponse, Upstreams};
use cutoff::Cutoff;
use json::{Convert, Whole};
use sse::{Relay, Transform};

/// What the relay needs besides the answer.
pub(super) struct Answering<'a> {
    pub(super) upstreams: &'a Upstreams,
    pub(super) prepared: &'a Prepared,
    pub(super) billing: Billing,
    pub(super) request_id: &'a str,
    pub(super) max_frame_bytes: usize,
    /// Input tokens assumed for an answer that reports none.
    pub(super) input_estimate: u64,
    /// The output the request reserved for, in tokens.
    pub(super) output_cap: u64,
    /// How long the answer may take from here.
    pub(super) timeout: Duration,
}

/// Relays a 2xx answer to the client, charging it once.
pub(super) async fn respond(
    upstream: UpstreamResponse,
    settlement: Settlement,
    a: Answering<'_>,
) -> Result<Response, ApiError> {
    let prepared = a.prepared;
    let provider = a.upstreams.provider(prepared.deployment());
    let idle_timeout = provider.config.idle_timeout;
    let deadline = Instant::now() + a.timeout;
    let is_sse = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| provider.adapter.is_stream(v));
    if is_sse {
        let (Some(upstream_format), Some(client_format)) =
            (prepared.wire.format, prepared.client_format)
        else {
            settlement.settle_undelivered(502).await;
            return Err(UpstreamError::malformed(
                &provider.config.name,
                "an event stream where none was expected",
            )
            .into());
        };
        let transform = match (prepared.translation, &prepared.original) {
            (Some(translation), Some(original)) => {
                Transform::Convert(translation.stream(original, &prepared.model().id))
            }
            _ => Transform::Passthrough {
                strip_usage: prepared.strip_usage,
                rename: prepared.rename.clone(),
            },
        };
        let native = prepared.native.and_then(|_| {
            provider
                .adapter
                .native(&prepared.deployment().upstream_model)
                .map(|n| n.stream(&prepared.deployment().upstream_model))
        });
        let relay = Relay {
            upstream: providers::chunks(upstream),
            native,
            decoder: provider.adapter.stream_decoder(a.max_frame_bytes),
            tracker: UsageTracker::new(upstream_format),
            upstream_format,
            client_format,
            transform,
            out: VecDeque::new(),
            settlement: Some(settlement),
            idle_timeout,
            input_estimate: a.input_estimate,
            scrubber: a.upstreams.scrubber.clone(),
            output_cap: a.output_cap,
            deadline,
            cutoff: Cutoff::default(),
            errored: false,
            hosted: match a.billing {
                Billing::Tokens { hosted, .. } => hosted,
                _ => Hosted::None,
            },
            done: false,
        };
        return Ok(sse::sse_response(relay, a.request_id));
    }
    if let Billing::Speech { .. } = a.billing {
        let usage = a
            .billing
            .measured(&serde_json::Value::Null)
            .unwrap_or_default();
        return Ok(binary::binary_response(
            upstream,
            settlement,
            usage,
            idle_timeout,
        ));
    }
    let convert = match (prepared.translation, &prepared.original) {
        (Some(translation), Some(original)) => Some(Convert {
            translation,
            original,
            public_model: &prepared.model().id,
        }),
        _ => None,
    };
    let native = match (
        prepared.native,
        provider
            .adapter
            .native(&prepared.deployment().upstream_model),
    ) {
        (Some(call), Some(native)) => Some(json::NativeAnswer {
            native,
            endpoint: prepared.wire.endpoint,
            public_model: &prepared.model().id,
            base64: call.base64,
        }),
        _ => None,
    };
    let whole = Whole {
        provider: &provider.config.name,
        native,
        idle_timeout,
        deadline,
        billing: a.billing,
        convert,
        rename: prepared.rename.as_deref(),
        render: None,
        input_estimate: a.input_estimate,
        // Generated text takes a few bytes a token, escaped in JSON at most six a
        // character: 32 bytes a token is generous. Images are base64, not tokens.
        max_bytes: match a.billing {
            Billing::Images { .. } => json::MAX_WHOLE as u64,
            _ => a.output_cap.saturating_mul(32) + json::READ_WHOLE as u64,
        },
    };
    json::finish(upstream, settlement, whole).await
}
