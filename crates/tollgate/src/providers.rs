//! Upstream providers: one HTTP client per provider, the provider's authentication
//! headers, timeouts and retries, and the mapping of upstream failures to API errors.

use std::time::Duration;

use axum::http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, Response, StatusCode, Uri};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyDataStream, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Config, Endpoint, Provider, ProviderKind};
use crate::error::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RequestBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, BoxError>>;

/// An upstream answer: its status and headers, and a body still to be read.
pub type UpstreamResponse = Response<Incoming>;

/// The data of an upstream answer's body, chunk by chunk.
pub type UpstreamChunks = BodyDataStream<Incoming>;

/// One provider's client: hyper's pooled HTTP/1.1 client (TLS for `https://`), with
/// the URL of every endpoint and the authentication headers made once.
struct ProviderClient {
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    uris: Vec<(&'static str, Uri)>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Clients for every configured provider, in the order of `Config::providers`.
pub struct Upstreams {
    clients: Vec<ProviderClient>,
}

/// The body of an upstream request.
pub enum UpstreamBody {
    /// A buffered body: may be sent again on retry.
    Bytes(Bytes),
    /// A streamed body (uploads): sent once.
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl UpstreamBody {
    /// A streamed body from its chunks.
    pub fn stream<S, E>(chunks: S) -> UpstreamBody
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        use futures_util::TryStreamExt;
        let frames = chunks.map_ok(Frame::data).map_err(Into::into);
        UpstreamBody::Stream(UnsyncBoxBody::new(StreamBody::new(frames)))
    }
}

/// The chunks of an upstream answer's body.
pub fn chunks(response: UpstreamResponse) -> UpstreamChunks {
    BodyDataStream::new(response.into_body())
}

/// A provider's authentication headers, marked sensitive so that no log shows them.
fn auth_headers(provider: &Provider) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    let secret = |text: String| {
        HeaderValue::from_str(&text).ok().map(|mut value| {
            value.set_sensitive(true);
            value
        })
    };
    let key = provider
        .api_key
        .as_ref()
        .map(|key| key.expose().to_string());
    match provider.kind {
        ProviderKind::Openai => {
            if let Some(value) = key.and_then(|key| secret(format!("Bearer {key}"))) {
                headers.push((AUTHORIZATION, value));
            }
        }
        ProviderKind::Anthropic => {
            if let Ok(version) = HeaderValue::from_str(&provider.anthropic_version) {
                headers.push((HeaderName::from_static("anthropic-version"), version));
            }
            if let Some(value) = key.and_then(secret) {
                headers.push((HeaderName::from_static("x-api-key"), value));
            }
        }
    }
    headers
}

impl Upstreams {
    pub fn new(config: &Config) -> Self {
        let clients = config
            .providers
            .iter()
            .map(|p| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(p.connect_timeout));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(1024)
                    .build(https);
                // `Config` checked that every base URL parses.
                let uris = Endpoint::ALL
                    .iter()
                    .filter_map(|e| {
                        let uri = format!("{}{}", p.base_url, e.path()).parse::<Uri>();
                        uri.ok().map(|uri| (e.path(), uri))
                    })
                    .collect();
                ProviderClient {
                    client,
                    uris,
                    headers: auth_headers(p),
                }
            })
            .collect();
        Upstreams { clients }
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
    ) -> Result<UpstreamResponse, ApiError> {
        let upstream = self
            .clients
            .get(index)
            .ok_or_else(|| ApiError::internal("no client for provider"))?;
        let uri = upstream
            .uris
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, uri)| uri)
            .ok_or_else(|| ApiError::internal("no upstream URL for the endpoint"))?;
        let content_type = HeaderValue::from_str(content_type).map_err(ApiError::internal)?;
        let attempts = match body {
            UpstreamBody::Bytes(_) => 2,
            UpstreamBody::Stream(_) => 1,
        };
        let mut body = Some(body);
        let mut last_error = None;
        for attempt in 0..attempts {
            let payload = match &body {
                Some(UpstreamBody::Bytes(bytes)) => Either::Left(Full::new(bytes.clone())),
                Some(UpstreamBody::Stream(_)) => match body.take() {
                    Some(UpstreamBody::Stream(stream)) => Either::Right(stream),
                    _ => return Err(ApiError::internal("upload body reused")),
                },
                None => return Err(ApiError::internal("upload body reused")),
            };
            let mut request = Request::post(uri.clone())
                .header(CONTENT_TYPE, content_type.clone())
                .body(payload)
                .map_err(ApiError::internal)?;
            let headers = request.headers_mut();
            for (name, value) in &upstream.headers {
                headers.insert(name.clone(), value.clone());
            }
            for (name, value) in extra_headers {
                let value = HeaderValue::from_str(value).map_err(ApiError::internal)?;
                headers.insert(*name, value);
            }
            match tokio::time::timeout(
                provider.first_byte_timeout,
                upstream.client.request(request),
            )
            .await
            {
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
                    tracing::warn!(provider = %provider.name, error = %error_chain(&e), attempt, "upstream request failed");
                    last_error = Some(if timed_out(&e) {
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

/// An error and its causes, for the log ("client error (Connect): tcp connect error: ...").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a failure was a timeout (the connect timeout ends as an I/O `TimedOut`).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as hyper's client wraps the connector's I/O error.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_connect_timeout_deep_in_the_chain_is_a_timeout() {
        let timeout = Wrapped(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ));
        assert!(timed_out(&timeout));
        assert_eq!(
            error_chain(&timeout),
            "client error (Connect): connect timed out"
        );
        let refused = Wrapped(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(!timed_out(&refused));
    }
}
