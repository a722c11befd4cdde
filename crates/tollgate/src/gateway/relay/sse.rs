//! Relaying an upstream event stream to the client, frame by frame, passed through or
//! translated, reading the usage as it passes; the charge is safe before the terminal
//! event is sent, and a client that goes away pays for what was generated.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tollgate_formats::conversion::native::NativeStream;
use tollgate_formats::eventstream::StreamDecoder;
use tollgate_formats::frames::{self, StreamFailure};
use tollgate_formats::model_name;
use tollgate_formats::sse::{self, SseEvent};
use tollgate_formats::usage as wire_usage;
use tollgate_formats::{Format, StreamConverter, UsageTracker};

use super::cutoff::Cutoff;
use crate::billing::Usage;
use crate::gateway::measure::{tokens_usage, Hosted};
use crate::gateway::settlement::Settlement;
use crate::providers::UpstreamChunks;
use crate::secrets::Scrubber;

/// Whether an event ends a stream of `format` (the charge is committed before it is sent).
fn is_terminal(format: Format, event: &SseEvent) -> bool {
    match format {
        Format::ChatCompletions => event.is_done(),
        Format::Responses => {
            matches!(
                event.event.as_deref(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            ) || event.data.starts_with("{\"type\":\"response.completed\"")
        }
        Format::AnthropicMessages => event.event.as_deref() == Some("message_stop"),
    }
}

/// Whether an upstream event reports an error (in any of the three formats).
fn is_error_event(event: &SseEvent) -> bool {
    matches!(event.event.as_deref(), Some("error" | "response.failed"))
        || event.data.starts_with("{\"error\"")
        || event.data.starts_with("{\"type\":\"error\"")
        || event.data.starts_with("{\"type\":\"response.failed\"")
}

/// What is done to each upstream event on its way to the client.
pub(super) enum Transform {
    /// Same format: passed on; `strip_usage` removes the usage the client did not ask
    /// for, `rename` puts the model's public id where the provider named its own.
    Passthrough {
        strip_usage: bool,
        rename: Option<String>,
    },
    /// Another format: translated event by event.
    Convert(Box<dyn StreamConverter + Send>),
}

impl Transform {
    fn apply(&mut self, event: &SseEvent, out: &mut VecDeque<Bytes>) -> Result<(), String> {
        match self {
            Transform::Passthrough {
                strip_usage,
                rename,
            } => {
                if *strip_usage && wire_usage::is_usage_only_chunk_data(&event.data) {
                    return Ok(());
                }
                let mut data = if *strip_usage {
                    wire_usage::strip_usage_field(&event.data)
                } else {
                    Cow::Borrowed(event.data.as_str())
                };
                if let Some(renamed) = rename.as_deref().and_then(|n| model_name::rename(&data, n))
                {
                    data = Cow::Owned(renamed);
                }
                out.push_back(sse::encode(event.event.as_deref(), &data));
                Ok(())
            }
            Transform::Convert(converter) => {
                let frames = converter.push(event).map_err(|e| e.to_string())?;
                out.extend(frames);
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Bytes>) {
        if let Transform::Convert(converter) = self {
            out.extend(converter.finish());
        }
    }
}

/// Relays an upstream event stream to the client, frame by frame, reading usage as it
/// passes. Dropped early (the client went away), it charges what was generated.
pub(super) struct Relay {
    pub(super) upstream: UpstreamChunks,
    /// A native provider's stream, read as Chat Completions events before anything else.
    pub(super) native: Option<Box<dyn NativeStream + Send>>,
    pub(super) decoder: StreamDecoder,
    pub(super) tracker: UsageTracker,
    pub(super) upstream_format: Format,
    pub(super) client_format: Format,
    pub(super) transform: Transform,
    pub(super) out: VecDeque<Bytes>,
    pub(super) settlement: Option<Settlement>,
    pub(super) idle_timeout: Duration,
    pub(super) input_estimate: u64,
    pub(super) scrubber: Scrubber,
    /// How hosted-tool calls are billed.
    pub(super) hosted: Hosted,
    /// The output the request reserved for, in tokens: past it the stream is ended.
    pub(super) output_cap: u64,
    /// When the stream must be over, whatever the provider does.
    pub(super) deadline: Instant,
    pub(super) cutoff: Cutoff,
    /// The provider sent an error event of its own (relayed): no second one is added.
    pub(super) errored: bool,
    pub(super) done: bool,
}

impl Relay {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(self.idle_timeout.min(left), self.upstream.next()).await {
                Ok(Some(Ok(chunk))) => match self.decoder.push(&chunk) {
                    Ok(events) => {
                        for event in events {
                            self.handle_native(event).await;
                        }
                    }
                    Err(e) => {
                        self.fail(&format!("the provider's stream was unreadable ({e})"))
                            .await
                    }
                },
                Ok(Some(Err(_))) => self.fail("the provider's stream broke off").await,
                Ok(None) => {
                    if let Some(event) = self.decoder.finish() {
                        self.handle_native(event).await;
                    }
                    let ending = self.native.as_mut().map(|n| n.finish());
                    for event in ending.into_iter().flatten() {
                        self.handle(event).await;
                    }
                    if self.settlement.is_some() {
                        if self.tracker.has_final_usage() {
                            self.settle_success().await;
                        } else {
                            self.fail("the provider's stream ended early").await;
                        }
                    }
                    if !self.done {
                        self.transform.finish(&mut self.out);
                    }
                    self.done = true;
                }
                Err(_) if left <= self.idle_timeout => {
                    self.fail_with(
                        StreamFailure::Gateway,
                        "the stream reached its time limit and was ended",
                    )
                    .await
                }
                Err(_) => self.fail("the provider's stream stalled").await,
            }
        }
    }

    /// An upstream event, read as Chat Completions first when the provider is native.
    async fn handle_native(&mut self, event: SseEvent) {
        let Some(native) = self.native.as_mut() else {
            return self.handle(event).await;
        };
        if self.done {
            return;
        }
        match native.push(&event) {
            Ok(events) => {
                for event in events {
                    self.handle(event).await;
                }
            }
            Err(e) => {
                let message = self.scrubber.scrub(&e.message).into_owned();
                self.fail(&message).await
            }
        }
    }

    async fn handle(&mut self, event: SseEvent) {
        if self.done {
            return;
        }
        if !event.is_done() && serde_json::from_str::<serde::de::IgnoredAny>(&event.data).is_err() {
            self.fail("the provider sent a malformed event").await;
            return;
        }
        self.tracker.observe(&event);
        self.cutoff.observe(self.upstream_format, &event);
        // An upstream error event may quote the request (with the provider's secret):
        // it is relayed, translated or not, only once scrubbed.
        let event = if is_error_event(&event) {
            self.errored = true;
            SseEvent {
                data: self.scrubber.scrub(&event.data).into_owned(),
                ..event
            }
        } else {
            event
        };
        if is_terminal(self.upstream_format, &event)
            && self.settlement.is_some()
            && !self.settle_success().await
        {
            return;
        }
        if let Err(message) = self.transform.apply(&event, &mut self.out) {
            self.fail(&format!(
                "the provider's stream could not be translated: {message}"
            ))
            .await;
            return;
        }
        if self.settlement.is_some() && self.tracker.output_tokens_at_least() > self.output_cap {
            self.cut().await;
        }
    }

    /// Ends the stream at its output limit: the provider went past the output reserved
    /// for (it ignored the limit). The client gets a normal finish at the limit, the
    /// request is charged what was relayed (at most the reservation), and the upstream
    /// request is closed with this relay.
    async fn cut(&mut self) {
        tracing::warn!(
            cap = self.output_cap,
            "the provider went past the output limit; stream ended at it"
        );
        let input = self.usage_so_far().input_tokens;
        let ending = self
            .cutoff
            .ending(self.upstream_format, input, self.output_cap);
        if !self.settle_success().await {
            return;
        }
        for event in ending {
            if self.transform.apply(&event, &mut self.out).is_err() {
                break;
            }
        }
        self.transform.finish(&mut self.out);
        self.done = true;
    }

    /// Settles before the terminal event. `false`: the charge could not be made safe in
    /// time, so the stream ends with an error event instead of its terminal event.
    async fn settle_success(&mut self) -> bool {
        let Some(settlement) = self.settlement.take() else {
            return true;
        };
        let usage = self.usage_so_far();
        let estimated = !self.tracker.has_final_usage();
        // Boxed here and in `fail`: settling (meter, and in a cluster Redis, then the
        // ledger) is a large future that runs once per stream; inlined, its space would
        // sit in the state of every open stream while it waits.
        match Box::pin(settlement.settle_delivered(usage, estimated)).await {
            Ok(_) => true,
            Err(e) => {
                self.out.push_back(frames::error_frame(
                    self.client_format,
                    StreamFailure::Ledger,
                    &crate::error::ApiError::from(e).message,
                ));
                self.done = true;
                false
            }
        }
    }

    /// The usage the stream reported; where it reported none (a server that ignores
    /// `include_usage`, or a stream cut short), an estimate: output what was relayed (see
    /// `UsageTracker::usage_or_estimate`), input the request's estimate unless the stream
    /// gave it.
    fn usage_so_far(&self) -> Usage {
        let mut usage = tokens_usage(self.tracker.usage_or_estimate());
        if !self.tracker.has_final_usage() && usage.input_tokens == 0 {
            usage.input_tokens = self.input_estimate;
        }
        usage.tool_calls = self.hosted.calls(self.tracker.hosted_calls());
        usage
    }

    async fn fail(&mut self, message: &str) {
        self.fail_with(StreamFailure::Upstream, message).await;
    }

    /// Ends the stream with an error event. What the client received is charged (no
    /// delivered output is free), counted by the gateway where the provider reported no
    /// final usage.
    async fn fail_with(&mut self, failure: StreamFailure, message: &str) {
        tracing::warn!(message, "stream failed");
        if let Some(settlement) = self.settlement.take() {
            let usage = self.usage_so_far();
            if self.tracker.has_final_usage() {
                Box::pin(settlement.settle(usage, 502)).await;
            } else if self.tracker.output_tokens_at_least() == 0 {
                // Nothing of the answer reached the client: it costs nothing.
                Box::pin(settlement.settle_undelivered(502)).await;
            } else {
                Box::pin(settlement.settle_estimated(usage, 502)).await;
            }
        }
        if !self.errored {
            self.out
                .push_back(frames::error_frame(self.client_format, failure, message));
        }
        self.done = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: the upstream connection closes with this
        // value, and the request pays for what was generated up to now.
        if let Some(settlement) = self.settlement.take() {
            let usage = self.usage_so_far();
            let estimated = !self.tracker.has_final_usage();
            settlement.settle_detached(usage, 499, estimated);
        }
    }
}

/// The streamed response relaying `relay`.
pub(super) fn sse_response(relay: Relay, request_id: &str) -> Response {
    let stream = futures_util::stream::unfold(relay, |mut relay| async move {
        relay
            .next_frame()
            .await
            .map(|frame| (Ok::<_, std::io::Error>(frame), relay))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}
