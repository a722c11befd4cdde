//! The HTTP client of the upstream providers: hyper's pooled HTTP/1.1 client per provider
//! (TLS for `https://`), the URL of every deployment's endpoints and the headers made once,
//! and one attempt sent with the provider's connect and first-byte timeouts.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::http::{Request, Response, Uri};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyDataStream, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{adapter, Adapter, UpstreamError};
use crate::config::{Config, Deployment, Endpoint, Provider};
use crate::secrets::Scrubber;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type RequestBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, BoxError>>;

/// An upstream answer: its status and headers, and a body still to be read.
pub type UpstreamResponse = Response<Incoming>;

/// The data of an upstream answer's body, chunk by chunk.
pub type UpstreamChunks = BodyDataStream<Incoming>;

/// One provider: its configuration, its adapter and its pooled client.
pub struct ProviderClient {
    pub config: Provider,
    pub adapter: Box<dyn Adapter>,
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    headers: Vec<(HeaderName, HeaderValue)>,
    pub name: Arc<str>,
}

/// Clients for every configured provider (in the order of `Config::providers`) and the
/// upstream URL of every endpoint of every deployment (by `Deployment::id`).
pub struct Upstreams {
    providers: Vec<ProviderClient>,
    /// Per deployment and endpoint: the URL, and the URL of streamed requests when the
    /// provider has one.
    uris: Vec<Vec<(Endpoint, Uri, Option<Uri>)>>,
    /// Takes the providers' secrets out of any upstream text relayed to a client or a log.
    pub scrubber: Scrubber,
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

pub(super) fn pooled_client(
    provider: &Provider,
) -> Client<HttpsConnector<HttpConnector>, RequestBody> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(provider.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

impl Upstreams {
    pub fn new(config: &Config) -> Self {
        let scrubber = Scrubber::for_providers(&config.providers);
        let providers: Vec<ProviderClient> = config
            .providers
            .iter()
            .map(|p| {
                let adapter = adapter(p, &scrubber);
                ProviderClient {
                    client: pooled_client(p),
                    headers: adapter.headers(),
                    adapter,
                    name: p.name.as_str().into(),
                    config: p.clone(),
                }
            })
            .collect();
        let mut uris = Vec::new();
        for deployment in config.models.iter().flat_map(|m| m.deployments.iter()) {
            let adapter = &providers[deployment.provider].adapter;
            // `Config` checked that every base URL parses.
            let endpoints = Endpoint::ALL
                .iter()
                .filter_map(|&e| {
                    let uri = adapter.url(e, &deployment.upstream_model).parse::<Uri>();
                    let streamed = adapter
                        .stream_url(e, &deployment.upstream_model)
                        .and_then(|u| u.parse::<Uri>().ok());
                    uri.ok().map(|uri| (e, uri, streamed))
                })
                .collect();
            if uris.len() <= deployment.id {
                uris.resize_with(deployment.id + 1, Vec::new);
            }
            uris[deployment.id] = endpoints;
        }
        Upstreams {
            providers,
            uris,
            scrubber,
        }
    }

    /// The provider of a deployment.
    pub fn provider(&self, deployment: &Deployment) -> &ProviderClient {
        &self.providers[deployment.provider]
    }

    /// Sends one attempt to a deployment's provider and waits for the response headers,
    /// within the provider's connect and first-byte timeouts. `forwarded` are the client's
    /// headers this provider may receive (`ClientHeaders::for_provider`). A non-2xx answer
    /// is returned as it is: the caller reads its body and classifies it. `stream`: the
    /// request asks for an event stream (some providers stream at another URL).
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        deployment: &Deployment,
        endpoint: Endpoint,
        stream: bool,
        content_type: &str,
        body: UpstreamBody,
        forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<UpstreamResponse, UpstreamError> {
        let provider = self.provider(deployment);
        let uri = self
            .uris
            .get(deployment.id)
            .and_then(|uris| uris.iter().find(|(e, _, _)| *e == endpoint))
            .map(|(_, uri, streamed)| match streamed {
                Some(streamed) if stream => streamed.clone(),
                _ => uri.clone(),
            })
            .ok_or_else(|| {
                tracing::error!(provider = %provider.name, endpoint = endpoint.name(), "no upstream URL");
                UpstreamError::Broken {
                    provider: provider.name.clone(),
                }
            })?;
        self.send_to(provider, uri, content_type, body, forwarded)
            .await
    }

    /// Sends one attempt to a path under a deployment's base URL (`/messages/count_tokens`),
    /// as [`send`](Self::send) does.
    pub async fn send_path(
        &self,
        deployment: &Deployment,
        path: &str,
        body: Bytes,
        forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<UpstreamResponse, UpstreamError> {
        let provider = self.provider(deployment);
        let uri = format!("{}{path}", provider.config.base_url)
            .parse::<Uri>()
            .map_err(|_| UpstreamError::Broken {
                provider: provider.name.clone(),
            })?;
        self.send_to(
            provider,
            uri,
            "application/json",
            UpstreamBody::Bytes(body),
            forwarded,
        )
        .await
    }

    async fn send_to(
        &self,
        provider: &ProviderClient,
        uri: Uri,
        content_type: &str,
        body: UpstreamBody,
        forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<UpstreamResponse, UpstreamError> {
        let broken = || UpstreamError::Broken {
            provider: provider.name.clone(),
        };
        let signed = match (provider.adapter.signer(), &body) {
            (None, _) => Vec::new(),
            (Some(signer), UpstreamBody::Bytes(bytes)) => {
                signer
                    .sign(&provider.name, &uri, content_type, bytes)
                    .await?
            }
            // A signature covers the whole body: a streamed upload cannot be signed.
            (Some(_), UpstreamBody::Stream(_)) => return Err(broken()),
        };
        let content_type = HeaderValue::from_str(content_type).map_err(|_| broken())?;
        let payload = match body {
            UpstreamBody::Bytes(bytes) => Either::Left(Full::new(bytes)),
            UpstreamBody::Stream(stream) => Either::Right(stream),
        };
        let mut request = Request::post(uri)
            .header(CONTENT_TYPE, content_type)
            .body(payload)
            .map_err(|_| broken())?;
        let headers = request.headers_mut();
        for (name, value) in provider.headers.iter().chain(&signed) {
            headers.insert(name.clone(), value.clone());
        }
        // The client's version replaces the provider's; its betas are added. Credentials
        // are never among them (`headers::DENIED`).
        for (name, _) in forwarded {
            headers.remove(name);
        }
        for (name, value) in forwarded {
            headers.append(name.clone(), value.clone());
        }
        let sent = tokio::time::timeout(
            provider.config.first_byte_timeout,
            provider.client.request(request),
        )
        .await;
        match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                tracing::warn!(provider = %provider.name, error = %error_chain(&e), "upstream request failed");
                Err(if timed_out(&e) || e.is_connect() {
                    UpstreamError::Connect {
                        provider: provider.name.clone(),
                        timed_out: timed_out(&e),
                    }
                } else {
                    broken()
                })
            }
            Err(_) => {
                tracing::warn!(provider = %provider.name, "upstream first byte timed out");
                Err(UpstreamError::FirstByteTimeout {
                    provider: provider.name.clone(),
                })
            }
        }
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
