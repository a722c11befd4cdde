//! The OAuth token endpoint of the Vertex flow: a service account's signed JWT assertion
//! for an access token (see the module docs of [`super`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::test_key::{TEST_VERTEX_CLIENT_EMAIL, TEST_VERTEX_PUBLIC_KEY_DER_BASE64};
use crate::Shared;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The access tokens issued, with their expiry.
#[derive(Default)]
pub(crate) struct Tokens {
    issued: Mutex<HashMap<String, Instant>>,
}

impl Tokens {
    /// Whether a token was issued here and has not expired.
    pub(crate) fn valid(&self, token: &str) -> bool {
        self.issued
            .lock()
            .map(|m| m.get(token).is_some_and(|expiry| Instant::now() < *expiry))
            .unwrap_or(false)
    }

    fn add(&self, token: String, lifetime: Duration) {
        if let Ok(mut m) = self.issued.lock() {
            m.insert(token, Instant::now() + lifetime);
        }
    }
}

fn refuse(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "invalid_grant", "error_description": description})),
    )
        .into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks an RS256 JWT assertion; the error is Google's `error_description`.
fn check(assertion: &str) -> Result<(), &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
    };
    let header: Value = b64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("Invalid JWT header.")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: the algorithm must be RS256.");
    }
    let signature = b64
        .decode(signature)
        .map_err(|_| "Invalid JWT Signature.")?;
    let public = base64::engine::general_purpose::STANDARD
        .decode(TEST_VERTEX_PUBLIC_KEY_DER_BASE64)
        .map_err(|_| "Invalid JWT Signature.")?;
    let signed = &assertion[..assertion.len() - parts[2].len() - 1];
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: Value = b64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("Invalid JWT claims.")?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    if text("iss") != TEST_VERTEX_CLIENT_EMAIL {
        return Err("Invalid grant: account not found");
    }
    if !text("aud").ends_with("/token") {
        return Err("Invalid JWT: the audience must be the token endpoint.");
    }
    if !text("scope").split(' ').any(|s| s == SCOPE) {
        return Err("Invalid OAuth scope or ID token audience provided.");
    }
    let (iat, exp) = (
        claims.get("iat").and_then(Value::as_u64).unwrap_or(0),
        claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
    );
    let now = now();
    if exp <= now || iat > now + 60 || exp > iat + 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
    }
    Ok(())
}

/// `POST /token`.
pub(crate) async fn issue(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let fields = form(&body);
    if fields.get("grant_type").map(String::as_str) != Some(GRANT) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "})),
        )
            .into_response();
    }
    let Some(assertion) = fields.get("assertion") else {
        return refuse("Invalid JWT.");
    };
    if let Err(description) = check(assertion) {
        return refuse(description);
    }
    let lifetime = s
        .opts
        .vertex_token_lifetime
        .unwrap_or(Duration::from_secs(3599));
    let token = format!("ya29.{}", s.id("fake", 40));
    s.tokens.add(token.clone(), lifetime);
    axum::Json(
        json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vertex::test_key::TEST_VERTEX_PRIVATE_KEY_PEM;

    /// An assertion signed with the test key, with `claims`.
    fn assertion(claims: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body: String = TEST_VERTEX_PRIVATE_KEY_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("pem");
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("key");
        let signed = format!(
            "{}.{}",
            b64.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string()),
            b64.encode(claims.to_string())
        );
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .expect("sign");
        format!("{signed}.{}", b64.encode(signature))
    }

    #[test]
    fn only_a_correctly_signed_current_assertion_gets_a_token() {
        let now = now();
        let claims = json!({"iss": TEST_VERTEX_CLIENT_EMAIL, "scope": SCOPE,
            "aud": "http://127.0.0.1:1/token", "iat": now, "exp": now + 3600});
        let good = assertion(&claims);
        assert_eq!(check(&good), Ok(()));
        // One character inside the signature changed (not the last, whose low bits are
        // padding: the RSA check must be what refuses it).
        let mut forged = good.clone().into_bytes();
        let at = forged.len() - 10;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        assert_eq!(check(&forged), Err("Invalid JWT Signature."));
        // The claims changed under the same signature.
        let parts: Vec<&str> = good.split('.').collect();
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            json!({"iss": "someone@else", "scope": SCOPE, "aud": "x/token", "iat": now, "exp": now + 3600})
                .to_string(),
        );
        assert_eq!(
            check(&format!("{}.{other}.{}", parts[0], parts[2])),
            Err("Invalid JWT Signature.")
        );
        let expired = json!({"iss": TEST_VERTEX_CLIENT_EMAIL, "scope": SCOPE,
            "aud": "http://127.0.0.1:1/token", "iat": now - 7200, "exp": now - 3600});
        assert!(check(&assertion(&expired)).is_err());
    }
}
