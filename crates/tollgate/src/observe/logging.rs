//! The log subscriber: one line per event, as text or JSON (`[observability]
//! log_format`), filtered by `RUST_LOG` (default `info`); and, when traces are on, the
//! layer that turns the request and attempt spans into OpenTelemetry spans. Every line
//! logged while a request is served is inside its `request` span, so it carries the
//! request's id (`request{request_id=...}` in text, `"span":{"request_id":...}` in JSON).

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Layered;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::trace;
use crate::config::{LogFormat, Observability};

/// The trace export, kept until exit: dropping it sends the spans still queued.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Where traces go, when they do.
    pub endpoint: Option<String>,
}

impl Telemetry {
    /// Sends the spans queued so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// What the lines and the spans are layered on: `RUST_LOG`'s filter, global to the stack.
/// (As a per-layer filter on the `Vec` of layers, tracing-subscriber 0.3 dropped lines it
/// should keep once `RUST_LOG` had two directives, such as `info,tollgate::cluster=debug`,
/// in a replica on PostgreSQL: tokio-rs/tracing#2929; test `cluster::logs`.)
type Filtered = Layered<EnvFilter, Registry>;

/// Installs the process's subscriber, writing lines to `writer`; `ansi` colours text.
/// Fails if traces are asked for and the exporter cannot be built.
pub fn init<W>(
    config: &Observability,
    env: &dyn Fn(&str) -> Option<String>,
    writer: W,
    ansi: bool,
) -> Result<Telemetry, String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // A `RUST_LOG` that cannot be read falls back to `info`, and says so once logging runs.
    let (filter, refused) = match env("RUST_LOG").filter(|text| !text.trim().is_empty()) {
        None => (EnvFilter::new("info"), None),
        Some(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some((text, e.to_string()))),
        },
    };
    let lines: Box<dyn Layer<Filtered> + Send + Sync> = match config.log_format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(writer),
        ),
    };
    let mut telemetry = Telemetry::default();
    let spans: Option<Box<dyn Layer<Filtered> + Send + Sync>> =
        match trace::export_endpoint(config, env) {
            Some(endpoint) => {
                let provider = trace::provider(config, &endpoint)?;
                let tracer = trace::tracer(&provider);
                telemetry.provider = Some(provider);
                telemetry.endpoint = Some(endpoint);
                Some(Box::new(tracing_opentelemetry::layer().with_tracer(tracer)))
            }
            None => None,
        };
    let layers: Vec<Box<dyn Layer<Filtered> + Send + Sync>> =
        std::iter::once(lines).chain(spans).collect();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
    if let Some((text, error)) = refused {
        tracing::warn!(rust_log = %text, %error, "RUST_LOG cannot be read; logging at info");
    }
    Ok(telemetry)
}
