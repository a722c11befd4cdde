//! Google OAuth access tokens for Vertex AI: from a service account, an RS256-signed JWT
//! assertion (`iss` the account, `scope` cloud-platform, `aud` the token URI, one hour)
//! exchanged at the account's `token_uri`; the token is cached and fetched again shortly
//! before it expires (a tenth of its lifetime, at most a minute, ahead), one fetch at a
//! time. Or a fixed token from the environment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, Request, StatusCode, Uri};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::client::RequestBody;
use super::UpstreamError;
use crate::config::{GoogleAuth, Provider, Secret, ServiceAccount};
use crate::secrets::Scrubber;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Largest token answer read.
const MAX_ANSWER: usize = 64 << 10;

/// Where a Vertex provider's bearer tokens come from.
pub enum Tokens {
    Fixed(Secret),
    Account(Box<AccountTokens>),
    /// No credentials (operator commands): requests go unauthenticated.
    None,
}

/// A service account's cached token.
pub struct AccountTokens {
    account: ServiceAccount,
    key: Option<RsaKeyPair>,
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    timeout: Duration,
    cached: Mutex<Option<(Secret, Instant)>>,
    /// Learns each token fetched, so that an upstream echoing it is scrubbed.
    scrubber: Scrubber,
}

impl Tokens {
    /// `scrubber` learns every token fetched at run time.
    pub fn new(provider: &Provider, scrubber: &Scrubber) -> Tokens {
        match &provider.cloud.google {
            Some(GoogleAuth::Token(token)) => Tokens::Fixed(token.clone()),
            Some(GoogleAuth::ServiceAccount(account)) => {
                let key = private_key(account.private_key.expose());
                if key.is_none() {
                    tracing::error!(provider = %provider.name, "the service account's private_key is not an RSA PKCS #8 key");
                }
                Tokens::Account(Box::new(AccountTokens {
                    account: account.clone(),
                    key,
                    client: super::client::pooled_client(provider),
                    timeout: provider.first_byte_timeout,
                    cached: Mutex::new(None),
                    scrubber: scrubber.clone(),
                }))
            }
            None => Tokens::None,
        }
    }

    /// A valid access token.
    pub async fn token(&self, provider: &Arc<str>) -> Result<Option<Secret>, UpstreamError> {
        match self {
            Tokens::Fixed(token) => Ok(Some(token.clone())),
            Tokens::Account(account) => account.token(provider).await.map(Some),
            Tokens::None => Ok(None),
        }
    }
}

/// The RSA key of a PEM PKCS #8 private key.
fn private_key(pem: &str) -> Option<RsaKeyPair> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    RsaKeyPair::from_pkcs8(&der).ok()
}

fn credentials_error(provider: &Arc<str>, message: String) -> UpstreamError {
    tracing::error!(provider = %provider, %message, "no OAuth token for the provider");
    UpstreamError::Status {
        provider: provider.clone(),
        status: StatusCode::UNAUTHORIZED,
        class: super::StatusClass::Credentials,
        retry_after: None,
        message: Some(message),
    }
}

impl AccountTokens {
    async fn token(&self, provider: &Arc<str>) -> Result<Secret, UpstreamError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self.fetch(provider).await?;
        self.scrubber.learn(token.expose());
        let ahead = (lifetime / 10).min(Duration::from_secs(60));
        *cached = Some((token.clone(), Instant::now() + lifetime - ahead));
        Ok(token)
    }

    /// The signed JWT assertion.
    fn assertion(&self, now: u64) -> Option<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
        let claims = b64.encode(
            json!({"iss": self.account.client_email, "scope": SCOPE, "aud": self.account.token_uri,
                "iat": now, "exp": now + 3600})
            .to_string(),
        );
        let signed = format!("{header}.{claims}");
        let key = self.key.as_ref()?;
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .ok()?;
        Some(format!("{signed}.{}", b64.encode(signature)))
    }

    async fn fetch(&self, provider: &Arc<str>) -> Result<(Secret, Duration), UpstreamError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(assertion) = self.assertion(now) else {
            return Err(credentials_error(
                provider,
                "the service account's private key cannot sign".into(),
            ));
        };
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let uri: Uri = self
            .account
            .token_uri
            .parse()
            .map_err(|_| credentials_error(provider, "the token_uri is not a URL".into()))?;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Either::Left(Full::new(Bytes::from(body))))
            .map_err(|_| credentials_error(provider, "the token request".into()))?;
        let connect = || UpstreamError::Connect {
            provider: provider.clone(),
            timed_out: false,
        };
        let answer = tokio::time::timeout(self.timeout, async {
            let response = self.client.request(request).await.map_err(|_| connect())?;
            let status = response.status();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| connect())?
                .to_bytes();
            Ok::<_, UpstreamError>((status, bytes))
        })
        .await
        .map_err(|_| UpstreamError::FirstByteTimeout {
            provider: provider.clone(),
        })??;
        let (status, bytes) = answer;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let why = value
                .get("error_description")
                .or_else(|| value.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("refused");
            return Err(credentials_error(
                provider,
                format!(
                    "the OAuth token endpoint refused the service account (HTTP {status}): {why}"
                ),
            ));
        }
        let token = value.get("access_token").and_then(Value::as_str);
        let lifetime = value
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        match token {
            Some(token) if !token.is_empty() => Ok((
                Secret::new(token.to_string()),
                Duration::from_secs(lifetime.max(1)),
            )),
            _ => Err(credentials_error(
                provider,
                "the OAuth token endpoint answered without an access_token".into(),
            )),
        }
    }
}
