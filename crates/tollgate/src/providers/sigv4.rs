//! AWS Signature Version 4 for the requests sent to Bedrock: the canonical request
//! (method, path URI-encoded once more as every AWS service but S3 wants, sorted query,
//! the signed headers lowercased, trimmed and sorted, the SHA-256 of the body), the string
//! to sign with its date / region / service scope, and the HMAC-SHA256 key chain from the
//! secret key. Checked against AWS's published test-suite signatures.

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// What SigV4 leaves unencoded: the unreserved characters of RFC 3986.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Who signs, where.
pub struct Scope<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// One request to sign. `headers` are the headers to sign (`host` and `x-amz-date` among
/// them), any case; `amz_date` is `x-amz-date`'s value (`20150830T123600Z`).
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (already percent-encoded).
    pub path: &'a str,
    /// The query string as sent, without `?` (empty for none).
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub amz_date: &'a str,
}

/// The `Authorization` header's value.
pub fn authorization(scope: &Scope<'_>, request: &Request<'_>) -> String {
    let (signed, signature) = signature(scope, request);
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={signature}",
        scope.access_key_id,
        credential_scope(scope, request.amz_date)
    )
}

fn credential_scope(scope: &Scope<'_>, amz_date: &str) -> String {
    format!(
        "{}/{}/{}/aws4_request",
        amz_date.get(..8).unwrap_or(""),
        scope.region,
        scope.service
    )
}

/// The signed header names (`host;x-amz-date`) and the hex signature.
pub fn signature(scope: &Scope<'_>, request: &Request<'_>) -> (String, String) {
    let (canonical, signed) = canonical_request(request);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        request.amz_date,
        credential_scope(scope, request.amz_date),
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let date = request.amz_date.get(..8).unwrap_or("");
    let mut key = hmac(
        format!("AWS4{}", scope.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [scope.region, scope.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    (signed, hex::encode(hmac(&key, string_to_sign.as_bytes())))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The canonical request and the signed header names.
fn canonical_request(request: &Request<'_>) -> (String, String) {
    let path = if request.path.is_empty() {
        "/".to_string()
    } else {
        request
            .path
            .split('/')
            .map(encode)
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut query: Vec<(String, String)> = request
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (encode(&decode(k)), encode(&decode(v)))
        })
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}",
        request.method,
        hex::encode(Sha256::digest(request.body))
    );
    (canonical, signed)
}

/// `x-amz-date` for a moment: `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials and scope of AWS's SigV4 test suite.
    const SUITE: Scope<'static> = Scope {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "service",
    };

    fn sign(method: &str, path: &str, query: &str) -> String {
        authorization(
            &SUITE,
            &Request {
                method,
                path,
                query,
                headers: &[
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                body: b"",
                amz_date: "20150830T123600Z",
            },
        )
    }

    #[test]
    fn aws_test_suite_signatures() {
        let prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=";
        // get-vanilla
        assert_eq!(
            sign("GET", "/", ""),
            format!("{prefix}5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        // get-vanilla-query-order-key-case: the query is sorted before signing.
        assert_eq!(
            sign("GET", "/", "Param2=value2&Param1=value1"),
            format!("{prefix}b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
        // post-vanilla
        assert_eq!(
            sign("POST", "/", ""),
            format!("{prefix}5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        );
    }

    #[test]
    fn a_model_id_with_a_colon_is_encoded_twice_in_the_canonical_path() {
        let request = Request {
            method: "POST",
            path: "/model/amazon.nova-pro-v1%3A0/converse",
            query: "",
            headers: &[("host", "h"), ("x-amz-date", "20250101T000000Z")],
            body: b"{}",
            amz_date: "20250101T000000Z",
        };
        let (canonical, signed) = canonical_request(&request);
        assert_eq!(signed, "host;x-amz-date");
        assert!(
            canonical.starts_with("POST\n/model/amazon.nova-pro-v1%253A0/converse\n\nhost:h\n"),
            "{canonical}"
        );
    }

    #[test]
    fn amz_date_is_the_basic_iso_form_in_utc() {
        let at = time::macros::datetime!(2015-08-30 12:36:00 UTC);
        assert_eq!(amz_date(at), "20150830T123600Z");
    }
}
