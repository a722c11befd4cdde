//! Checking a request's AWS Signature Version 4 as AWS does: the signature is computed
//! again from the request as received (method, raw path encoded once more, sorted query,
//! the headers the `SignedHeaders` list names, the body's SHA-256) with the secret of the
//! access key named in the credential scope, and compared. Written apart from the
//! gateway's signer, so that the two check each other.

use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why AWS refuses a request's authentication: the `x-amzn-ErrorType` and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

fn refuse(kind: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

/// The keys the fake knows.
pub(crate) struct Keys<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    pub(crate) session_token: Option<&'a str>,
    pub(crate) service: &'a str,
}

/// Checks the request's signature; `now` is the fake's clock (`YYYYMMDDTHHMMSSZ`
/// compared within five minutes).
pub(crate) fn verify(
    keys: &Keys<'_>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return Err(refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let Some(fields) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(refuse(
            "IncompleteSignatureException",
            format!("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization={auth}"),
        ));
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for field in fields.split(',') {
        match field.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(refuse(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        ));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = parts[..] else {
        return Err(refuse(
            "IncompleteSignatureException",
            format!("Credential should be scoped to a valid region. Credential={credential}"),
        ));
    };
    if key_id != keys.access_key_id {
        return Err(refuse(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if service != keys.service {
        return Err(refuse(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: '{}'.",
                keys.service
            ),
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(refuse(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let Some(amz_date) = header("x-amz-date").filter(|_| names.contains(&"x-amz-date")) else {
        return Err(refuse(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    if !amz_date.starts_with(date) {
        return Err(refuse(
            "InvalidSignatureException",
            format!("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}'", amz_date.get(..8).unwrap_or("")),
        ));
    }
    if let Some(at) = seconds(amz_date) {
        if (now - at).abs() > 300 {
            return Err(refuse(
                "InvalidSignatureException",
                format!("Signature expired: {amz_date} is now earlier than the allowed window (five minutes)."),
            ));
        }
    }
    match (keys.session_token, header("x-amz-security-token")) {
        (Some(want), Some(got)) if want == got && names.contains(&"x-amz-security-token") => {}
        (Some(_), _) | (None, Some(_)) => {
            return Err(refuse(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ))
        }
        (None, None) => {}
    }
    // The canonical request, from what was received.
    let path: String = uri
        .path()
        .split('/')
        .map(|segment| utf8_percent_encode(segment, UNRESERVED).to_string())
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                utf8_percent_encode(&percent_decode_str(s).decode_utf8_lossy(), UNRESERVED)
                    .to_string()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect();
    query.sort();
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        query.join("&"),
        hex::encode(Sha256::digest(body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = mac(format!("AWS4{}", keys.secret_access_key).as_bytes(), date);
    key = mac(&key, region);
    key = mac(&key, service);
    key = mac(&key, "aws4_request");
    let expected = hex::encode(mac(&key, &string_to_sign));
    if expected != signature {
        return Err(refuse(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}

fn mac(key: &[u8], data: &str) -> Vec<u8> {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Seconds since the epoch of `YYYYMMDDTHHMMSSZ`.
pub(crate) fn seconds(amz_date: &str) -> Option<i64> {
    let n = |range: std::ops::Range<usize>| amz_date.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SUITE: Keys<'static> = Keys {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
        service: "service",
    };

    fn request(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let auth = format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}");
        headers.insert(
            "authorization",
            HeaderValue::from_str(&auth).expect("value"),
        );
        headers
    }

    #[test]
    fn aws_get_vanilla_verifies_and_a_changed_signature_does_not() {
        let now = seconds("20150830T123600Z").expect("date");
        let uri: Uri = "/".parse().expect("uri");
        let good = request("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
        assert_eq!(verify(&SUITE, &Method::GET, &uri, &good, b"", now), Ok(()));
        let bad = request("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf32");
        let refusal = verify(&SUITE, &Method::GET, &uri, &bad, b"", now).expect_err("refused");
        assert_eq!(refusal.kind, "InvalidSignatureException");
        // The same signature over another body, or much later, is refused too.
        assert!(verify(&SUITE, &Method::GET, &uri, &good, b"x", now).is_err());
        assert_eq!(
            verify(&SUITE, &Method::GET, &uri, &good, b"", now + 301)
                .expect_err("expired")
                .kind,
            "InvalidSignatureException"
        );
    }

    #[test]
    fn seconds_of_an_amz_date() {
        assert_eq!(seconds("19700101T000000Z"), Some(0));
        assert_eq!(seconds("20150830T123600Z"), Some(1_440_938_160));
    }
}
