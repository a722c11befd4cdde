//! Traces: OTLP export over HTTP/protobuf, off unless `[observability] otlp_endpoint`
//! or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! variables name a collector (and `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none`
//! do not turn it off). One span per request (a child of the client's `traceparent`
//! when it sends one), one child span per upstream attempt, whose context is the
//! `traceparent` the provider receives.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::Observability;

/// Whether spans are exported (set once, when the trace layer is installed).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: attributes are only computed when they are.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The collector traces go to, if any: the config's, else the standard variables'.
pub fn export_endpoint(
    config: &Observability,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return None;
    }
    if let Some(base) = &config.otlp_endpoint {
        return Some(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    if let Some(url) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Some(url);
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT")
        .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
}

/// Builds the exporting tracer provider for `endpoint` (a full `/v1/traces` URL).
pub fn provider(config: &Observability, endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// A tracer of `provider`, and spans turned on.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    provider.tracer("tollgate")
}

/// The span of one request, a child of the client's trace context when it sent one.
pub fn request_span(request_id: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!("request", request_id = %request_id);
    if enabled() {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// The span of one upstream attempt (a child of the current request span).
pub fn attempt_span(provider: &str, model: &str, attempt: u32) -> Span {
    let span = tracing::info_span!("upstream attempt", otel.name = tracing::field::Empty);
    if enabled() {
        span.record("otel.name", format!("upstream {provider}").as_str());
        span.set_attribute("gen_ai.provider.name", provider.to_string());
        span.set_attribute("gen_ai.request.model", model.to_string());
        span.set_attribute("tollgate.attempt", i64::from(attempt));
    }
    span
}

/// The headers forwarded to a provider, with the trace context of `span` in place of
/// the client's (which is its ancestor).
pub fn with_context(
    span: &Span,
    forwarded: &[(HeaderName, HeaderValue)],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers: Vec<(HeaderName, HeaderValue)> = forwarded
        .iter()
        .filter(|(name, _)| name != "traceparent" && name != "tracestate")
        .cloned()
        .collect();
    TraceContextPropagator::new().inject_context(&span.context(), &mut Inject(&mut headers));
    headers
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Inject<'a>(&'a mut Vec<(HeaderName, HeaderValue)>);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.push((name, value));
        }
    }
}
