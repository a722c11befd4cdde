//! Upstream providers: one HTTP client per provider, the provider's authentication
//! headers, timeouts and retries, and the mapping of upstream failures to API errors.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;

use crate::config::{Config, Endpoint, Provider, ProviderKind};
use crate::http::error::ApiError;

/// Clients for every configured provider, in the order of `Config::providers`.
pub struct Upstreams {
    clients: Vec<reqwest::Client>,
    /// Per provider, the URL of every endpoint path, parsed once: parsing a URL (with
    /// its IDNA host check) on every request showed in profiles.
    urls: Vec<Vec<(&'static str, reqwest::Url)>>,
}

/// The body of an upstream request.
pub enum UpstreamBody {
    /// A buffered body: may be sent again on retry.
    Bytes(Bytes),
    /// A streamed body (uploads): sent once.
    Stream(reqwest::Body),
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let clients = config
            .providers
            .iter()
            .map(|p| {
                reqwest::Client::builder()
                    .connect_timeout(p.connect_timeout)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(1024)
                    .tcp_nodelay(true)
                    // A provider's API does not redirect, and following one would turn a
                    // POST into a GET; without the redirect layer, reqwest also stops
                    // re-parsing every request's URL (seen in profiles).
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
            })
            .collect::<Result<_, _>>()?;
        let urls = config
            .providers
            .iter()
            .map(|p| {
                Endpoint::ALL
                    .iter()
                    .filter_map(|e| {
                        let url = reqwest::Url::parse(&format!("{}{}", p.base_url, e.path()));
                        url.ok().map(|url| (e.path(), url))
                    })
                    .collect()
            })
            .collect();
        Ok(Upstreams { clients, urls })
    }

    /// Sends a request to a provider and waits for the response headers (within the
    /// provider's first-byte timeout), retrying buffered requests once on a connection
    /// failure or a 502/503/504 answer.
    pub async fn send(
        &self,
        index: usize,
        provider: &Provider,
        path: &str,
        content_type: &str,
        body: UpstreamBody,
        extra_headers: &[(&'static str, String)],
    ) -> Result<reqwest::Response, ApiError> {
        let client = self
            .clients
            .get(index)
            .ok_or_else(|| ApiError::internal("no client for provider"))?;
        let parsed = self
            .urls
            .get(index)
            .and_then(|urls| urls.iter().find(|(p, _)| *p == path))
            .map(|(_, url)| url);
        let url = format!("{}{}", provider.base_url, path);
        let attempts = match body {
            UpstreamBody::Bytes(_) => 2,
            UpstreamBody::Stream(_) => 1,
        };
        let mut body = Some(body);
        let mut last_error = None;
        for attempt in 0..attempts {
            let payload = match &body {
                Some(UpstreamBody::Bytes(bytes)) => reqwest::Body::from(bytes.clone()),
                Some(UpstreamBody::Stream(_)) => match body.take() {
                    Some(UpstreamBody::Stream(stream)) => stream,
                    _ => return Err(ApiError::internal("upload body reused")),
                },
                None => return Err(ApiError::internal("upload body reused")),
            };
            let mut request = match parsed {
                Some(url) => client.post(url.clone()),
                None => client.post(&url),
            }
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(payload);
            request = match provider.kind {
                ProviderKind::Openai => match &provider.api_key {
                    Some(key) => request.bearer_auth(key.expose()),
                    None => request,
                },
                ProviderKind::Anthropic => {
                    let request = request.header("anthropic-version", &provider.anthropic_version);
                    match &provider.api_key {
                        Some(key) => request.header("x-api-key", key.expose()),
                        None => request,
                    }
                }
            };
            for (name, value) in extra_headers {
                request = request.header(*name, value);
            }
            match tokio::time::timeout(provider.first_byte_timeout, request.send()).await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    if attempt + 1 < attempts && matches!(status, 502..=504) {
                        tracing::warn!(provider = %provider.name, status, "upstream failed; retrying");
                        last_error = Some(upstream_status_error(provider, status));
                        continue;
                    }
                    return Ok(response);
                }
                Ok(Err(e)) => {
                    tracing::warn!(provider = %provider.name, error = %without_url(&e), attempt, "upstream request failed");
                    last_error = Some(if e.is_timeout() {
                        timeout_error(provider)
                    } else if e.is_connect() {
                        ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_unreachable",
                            format!("The provider '{}' could not be reached.", provider.name),
                        )
                    } else {
                        ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            format!(
                                "The connection to provider '{}' failed before it answered.",
                                provider.name
                            ),
                        )
                    });
                }
                Err(_) => {
                    tracing::warn!(provider = %provider.name, attempt, "upstream first byte timed out");
                    last_error = Some(timeout_error(provider));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError::internal("no upstream attempt")))
    }
}

/// A reqwest error's text without its URL (which never holds secrets here, but keep logs lean).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<upstream>");
    }
    text
}

fn timeout_error(provider: &Provider) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        format!("The provider '{}' did not answer in time.", provider.name),
    )
}

/// An upstream 5xx as the client sees it.
pub fn upstream_status_error(provider: &Provider, status: u16) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("The provider '{}' failed (HTTP {status}).", provider.name),
    )
}

/// A 200 answer that could not be read.
pub fn malformed_upstream(provider: &Provider, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_malformed",
        format!(
            "The provider '{}' sent a malformed answer: {what}.",
            provider.name
        ),
    )
}
