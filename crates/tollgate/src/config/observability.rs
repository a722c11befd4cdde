//! `[observability]`: the metrics endpoint, the log format, the OTLP trace export.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, Secret};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileObservability {
    metrics: Option<bool>,
    metrics_listen: Option<String>,
    metrics_token_env: Option<String>,
    key_labels: Option<usize>,
    log_format: Option<String>,
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The most keys that may get a metrics label of their own.
pub const MAX_KEY_LABELS: usize = 1_000;

/// Observability settings.
#[derive(Debug, Clone)]
pub struct Observability {
    /// Whether `GET /metrics` is served (default on).
    pub metrics: bool,
    /// Serve `/metrics` on this address instead of the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// A bearer token `/metrics` asks for (read from the variable `metrics_token_env`).
    pub metrics_token: Option<Secret>,
    /// Keys that get a label of their own in `tollgate_key_*` (0: none; capped).
    pub key_labels: usize,
    pub log_format: LogFormat,
    /// Where traces go (OTLP over HTTP/protobuf); `None`: the `OTEL_EXPORTER_OTLP_*`
    /// variables decide.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

impl Default for Observability {
    fn default() -> Self {
        Observability {
            metrics: true,
            metrics_listen: None,
            metrics_token: None,
            key_labels: 0,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            service_name: "tollgate".into(),
        }
    }
}

pub(super) fn parse(
    file: FileObservability,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Observability, ConfigError> {
    let key = |k: &str| format!("observability.{k}");
    let metrics_listen = match file.metrics_listen {
        Some(text) => Some(text.parse().map_err(|_| {
            ConfigError::at(
                origin,
                &key("metrics_listen"),
                format!("'{text}' is not an address such as 127.0.0.1:9090"),
            )
        })?),
        None => None,
    };
    let metrics_token = match file.metrics_token_env {
        Some(var) => match env(&var).filter(|t| !t.trim().is_empty()) {
            Some(token) => Some(Secret::new(token.trim().to_string())),
            None => {
                return Err(ConfigError::at(
                    origin,
                    &key("metrics_token_env"),
                    format!("the environment variable {var} is not set"),
                ))
            }
        },
        None => None,
    };
    let key_labels = file.key_labels.unwrap_or(0);
    if key_labels > MAX_KEY_LABELS {
        return Err(ConfigError::at(
            origin,
            &key("key_labels"),
            format!("at most {MAX_KEY_LABELS} keys may have a label of their own"),
        ));
    }
    let log_format = match file.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(ConfigError::at(
                origin,
                &key("log_format"),
                format!("'{other}' is neither \"text\" nor \"json\""),
            ))
        }
    };
    Ok(Observability {
        metrics: file.metrics.unwrap_or(true),
        metrics_listen,
        metrics_token,
        key_labels,
        log_format,
        otlp_endpoint: file.otlp_endpoint.filter(|e| !e.trim().is_empty()),
        service_name: file.service_name.unwrap_or_else(|| "tollgate".into()),
    })
}
