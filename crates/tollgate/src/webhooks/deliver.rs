//! Sending deliveries: signed, with a timeout, a bounded number at once, retried with
//! exponential backoff until `max_attempts`; the outcome of each attempt is the log.
//!
//! Signature (docs/webhooks.md): `tollgate-signature: t=<unix seconds>,v1=<hex>` where
//! `<hex>` is HMAC-SHA256, keyed with the webhook's secret, of `<t>.<body>`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::Sha256;

use super::target::{self, GuardedResolver};
use super::{now_ms, Due, Webhooks};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
/// The longest a retry waits.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

type HttpClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// One client for account holders' webhooks (private addresses refused on every
/// connection unless the policy allows them), one for the operator's (trusted).
pub(super) struct Clients {
    accounts: HttpClient,
    operator: HttpClient,
}

fn client(allow_private: bool) -> HttpClient {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

impl Clients {
    pub(super) fn new(allow_private: bool) -> Self {
        Clients {
            accounts: client(allow_private),
            operator: client(true),
        }
    }
}

/// The signature header's value for `body` sent at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    /// Sends due deliveries until the process ends: woken by a new event, or each second.
    pub async fn run_deliveries(self: Arc<Self>) {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
            let free = self.slots.available_permits();
            if free == 0 {
                continue;
            }
            let now = now_ms();
            // Claimed for longer than an attempt may take, so no other replica sends it.
            let until = now + self.policy.timeout.as_millis() as i64 + 10_000;
            let due = match self.db.claim(now, until, free as i64).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "reading due webhook deliveries failed");
                    continue;
                }
            };
            for delivery in due {
                let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.deliver(delivery).await;
                    drop(permit);
                });
            }
        }
    }

    /// One attempt of one delivery, and its outcome written to the log.
    async fn deliver(&self, delivery: Due) {
        let attempts = delivery.attempts + 1;
        let outcome = self.attempt(&delivery).await;
        let now = now_ms();
        let (status, next, code, error, delivered_at) = match outcome {
            Ok(code) => ("delivered", now, Some(code), None, Some(now)),
            Err((code, error, final_failure)) => {
                let last = final_failure || attempts >= i64::from(self.policy.max_attempts);
                let backoff = self
                    .policy
                    .retry_base
                    .saturating_mul(1u32 << (attempts - 1).clamp(0, 20) as u32)
                    .min(MAX_BACKOFF);
                let status = if last { "failed" } else { "pending" };
                (
                    status,
                    now + backoff.as_millis() as i64,
                    code,
                    Some(error),
                    None,
                )
            }
        };
        let written = self
            .db
            .finish(
                delivery.id,
                status,
                attempts,
                next,
                code,
                error.as_deref(),
                delivered_at,
            )
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, delivery = delivery.id, "recording a webhook delivery failed; its claim runs out and it is retried");
        }
    }

    /// `Ok(status)` for a 2xx; `Err((status, why, no retry))` otherwise.
    async fn attempt(&self, delivery: &Due) -> Result<i64, (Option<i64>, String, bool)> {
        let (url, secret, client) = match (delivery.webhook_id, delivery.operator_hook) {
            (Some(id), _) => match self.db.hook_by_id(id).await {
                Ok(Some(hook)) if !hook.deleted => (hook.url, hook.secret, &self.clients.accounts),
                Ok(_) => return Err((None, "the webhook was deleted".into(), true)),
                Err(e) => return Err((None, format!("database: {e}"), false)),
            },
            (None, Some(index)) => match self.policy.operator.get(index as usize) {
                Some(hook) => (
                    hook.url.clone(),
                    hook.secret.expose().to_string(),
                    &self.clients.operator,
                ),
                None => return Err((None, "no such operator webhook".into(), true)),
            },
            (None, None) => return Err((None, "a delivery without a receiver".into(), true)),
        };
        if delivery.webhook_id.is_some() {
            // Literal addresses never reach the resolver: check them here too.
            if let Err(e) = target::check(&url, self.policy.allow_private_targets).await {
                return Err((None, e.to_string(), false));
            }
        }
        let t = crate::now();
        let signature = sign(&secret, t, &delivery.payload);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", "tollgate-webhooks/1")
            .body(Full::new(Bytes::from(delivery.payload.clone())))
            .map_err(|e| (None, format!("bad URL: {e}"), true))?;
        if let Ok(value) = HeaderValue::from_str(&signature) {
            request.headers_mut().insert(SIGNATURE_HEADER, value);
        }
        let sent = tokio::time::timeout(self.policy.timeout, async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Read (a little of) the body, so the connection can be reused.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                http_body_util::Limited::new(response.into_body(), 64 * 1024).collect(),
            )
            .await;
            Ok::<_, String>(status)
        })
        .await;
        match sent {
            Ok(Ok(status)) if status.is_success() => Ok(i64::from(status.as_u16())),
            Ok(Ok(status)) => Err((
                Some(i64::from(status.as_u16())),
                format!("the receiver answered {status}"),
                false,
            )),
            Ok(Err(e)) => Err((None, e, false)),
            Err(_) => Err((
                None,
                format!("no answer within {} ms", self.policy.timeout.as_millis()),
                false,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-SHA256 written from its definition (RFC 2104) over plain SHA-256.
    fn hmac_by_hand(key: &[u8], message: &[u8]) -> String {
        use sha2::Digest;
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(key);
        let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_time_and_the_body() {
        // RFC 4231, test case 2, checks the hand-written HMAC.
        assert_eq!(
            hmac_by_hand(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = r#"{"id":"evt_1","type":"account.low_balance"}"#;
        let expected = hmac_by_hand(b"whsec-test", format!("1733030000.{body}").as_bytes());
        assert_eq!(
            sign("whsec-test", 1_733_030_000, body),
            format!("t=1733030000,v1={expected}")
        );
        assert_ne!(
            sign("whsec-test", 1_733_030_001, body),
            sign("whsec-test", 1_733_030_000, body)
        );
    }
}
