//! Per request: an id (answered in `x-request-id`), a span that every line logged
//! while serving it is inside, and, once the answer's body has ended (a stream at its
//! last event, or when the client hung up), the request metrics and one access line:
//! method, path, status, model, provider, tokens, cost, latency and time to first byte,
//! never headers (they carry keys) nor bodies.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::trace::TraceContextExt;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::labels::EndpointLabel;
use super::labels::{
    status_class, GenAiLabels, Refusal, RefusalLabels, RequestLabels, Route, Static,
};
use super::{trace, Metrics, Observed, RequestObs};
use crate::error::ErrorCode;
use crate::http::RequestId;

/// The middleware: see the module's documentation.
pub async fn layer(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id: Arc<str> = format!("req_{}", uuid::Uuid::now_v7().simple()).into();
    let route = Route::of_path(request.uri().path());
    let span = trace::request_span(&id, request.headers());
    let obs = Arc::new(RequestObs::new(metrics.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    request.extensions_mut().insert(Observed(obs.clone()));
    if metrics.enabled {
        metrics.in_flight.inc();
    }
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    let stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if stream && metrics.enabled {
        metrics.open_streams.inc();
    }
    let end = End {
        obs,
        span,
        route,
        method,
        path,
        status: response.status().as_u16(),
        code,
        stream,
        started,
        first_byte: None,
    };
    response.map(|inner| {
        Body::new(Observed_ {
            inner,
            end: Some(end),
        })
    })
}

/// What is needed when the answer ends.
struct End {
    obs: Arc<RequestObs>,
    span: Span,
    route: Route,
    method: Method,
    path: String,
    status: u16,
    code: &'static str,
    stream: bool,
    started: Instant,
    first_byte: Option<Duration>,
}

/// How an answer's body ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Complete,
    Failed,
    Disconnected,
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Failed => "failed",
            Ending::Disconnected => "client_disconnected",
        }
    }
}

impl End {
    fn finish(self, ending: Ending) {
        let elapsed = self.started.elapsed();
        let facts = self.obs.snapshot();
        let metrics = &self.obs.metrics;
        if metrics.enabled {
            self.record(metrics, &facts, elapsed, ending);
        }
        let operation = self.route.operation();
        let _entered = self.span.enter();
        if trace::enabled() {
            self.attributes(&facts, operation);
        }
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status,
            error_code = self.code,
            model = %facts.model.0,
            provider = %facts.provider.0,
            input_tokens = facts.input_tokens,
            output_tokens = facts.output_tokens,
            cost = %facts.cost,
            attempts = facts.attempts,
            latency_us = elapsed.as_micros() as u64,
            ttfb_us = self.first_byte.map_or(0, |d| d.as_micros() as u64),
            outcome = ending.name(),
            "request"
        );
    }

    /// The request metrics.
    fn record(&self, metrics: &Metrics, facts: &super::Facts, elapsed: Duration, ending: Ending) {
        metrics.in_flight.dec();
        if self.stream {
            metrics.open_streams.dec();
        }
        metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: self.route,
                model: facts.model.clone(),
                provider: facts.provider.clone(),
                status_class: status_class(self.status),
                error_code: Static(self.code),
            })
            .inc();
        if let Some(reason) = Refusal::of_code(self.status, self.code) {
            metrics
                .refusals
                .get_or_create(&RefusalLabels { reason })
                .inc();
        }
        if ending == Ending::Disconnected {
            metrics
                .disconnects
                .get_or_create(&EndpointLabel {
                    endpoint: self.route,
                })
                .inc();
        }
        let operation = self.route.operation();
        if !operation.is_empty() {
            let labels = GenAiLabels {
                gen_ai_operation_name: Static(operation),
                gen_ai_request_model: facts.model.clone(),
                gen_ai_provider_name: facts.provider.clone(),
                error_type: Static(self.code),
            };
            metrics
                .request_duration
                .get_or_create(&labels)
                .observe(elapsed.as_secs_f64());
            if let (true, Some(first)) = (self.stream, self.first_byte) {
                metrics
                    .time_to_first_token
                    .get_or_create(&labels)
                    .observe(first.as_secs_f64());
            }
        }
    }

    /// The request span's OpenTelemetry attributes (GenAI conventions and Tollgate's).
    fn attributes(&self, facts: &super::Facts, operation: &'static str) {
        let span = &self.span;
        if !operation.is_empty() {
            let name = if facts.model.0.is_empty() {
                operation.to_string()
            } else {
                format!("{operation} {}", facts.model.0)
            };
            // The span has begun: its name is changed on the OpenTelemetry span.
            span.context().span().update_name(name);
            span.set_attribute("gen_ai.operation.name", operation);
        }
        for (key, value) in [
            ("gen_ai.request.model", &facts.model),
            ("gen_ai.response.model", &facts.served),
            ("gen_ai.provider.name", &facts.provider),
        ] {
            if !value.0.is_empty() {
                span.set_attribute(key, value.0.to_string());
            }
        }
        if facts.key.is_some() {
            span.set_attribute("gen_ai.usage.input_tokens", facts.input_tokens as i64);
            span.set_attribute("gen_ai.usage.output_tokens", facts.output_tokens as i64);
            span.set_attribute("tollgate.cost", facts.cost.to_string());
        }
        if let Some(key) = facts.key {
            span.set_attribute("tollgate.key_id", key.0);
        }
        if let Some(max) = facts.max_tokens {
            span.set_attribute("gen_ai.request.max_tokens", max as i64);
        }
        span.set_attribute("http.request.method", self.method.to_string());
        span.set_attribute("http.route", self.route.name());
        span.set_attribute("http.response.status_code", i64::from(self.status));
        if !self.code.is_empty() {
            span.set_attribute("error.type", self.code);
        }
    }
}

/// An answer's body, watched: its first byte and its end.
#[allow(non_camel_case_types)]
struct Observed_ {
    inner: Body,
    end: Option<End>,
}

impl HttpBody for Observed_ {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = match &this.end {
            Some(end) => {
                let _entered = end.span.enter();
                Pin::new(&mut this.inner).poll_frame(cx)
            }
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(end) = &mut this.end {
                    if end.first_byte.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                        end.first_byte = Some(end.started.elapsed());
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = this.end.take() {
                    end.finish(Ending::Failed);
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = this.end.take() {
                    end.finish(Ending::Complete);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed_ {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            // A body that was empty is never polled: it ended, nobody hung up.
            let ending = if self.inner.is_end_stream() {
                Ending::Complete
            } else {
                Ending::Disconnected
            };
            // The answer goes first: a stream dropped unfinished settles its charge
            // as it is dropped, and the access line reports it.
            drop(std::mem::replace(&mut self.inner, Body::empty()));
            end.finish(ending);
        }
    }
}
