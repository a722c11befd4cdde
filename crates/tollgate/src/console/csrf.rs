//! Forms and their protection against cross-site requests: every POST of the console
//! carries the session's CSRF token (compared in constant time), and a request whose
//! `Origin` or `Sec-Fetch-Site` says it came from another site is refused, which also
//! covers the sign-in form (no session yet). The session cookie is SameSite=Strict too.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use super::session::Session;
use crate::error::ApiError;
use crate::http::extract::read_body;

/// Most bytes of a console form.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The name of the hidden field holding the token.
pub const FIELD: &str = "csrf";

/// A submitted form (`application/x-www-form-urlencoded`).
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub async fn read(body: Body) -> Result<Form, ApiError> {
        let bytes = read_body(body, MAX_FORM_BYTES).await?;
        Ok(Form(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    /// A field's value (the first one of that name), trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }

    /// A field's value, `""` when absent.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// Whether a checkbox was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Whether the request came from a page of this site (or says nothing about it).
pub fn same_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => {
            let bare = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            bare == Some(host)
        }
        _ => false,
    }
}

/// Whether the form carries the session's token.
pub fn token_matches(session: &Session, form: &Form) -> bool {
    let sent = form.text(FIELD).as_bytes();
    !sent.is_empty() && bool::from(sent.ct_eq(session.csrf.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn other_sites_are_refused() {
        assert!(same_site(&headers(&[("host", "a.test")])));
        assert!(same_site(&headers(&[
            ("host", "a.test"),
            ("origin", "https://a.test")
        ])));
        assert!(!same_site(&headers(&[
            ("host", "a.test"),
            ("origin", "https://evil.test")
        ])));
        assert!(!same_site(&headers(&[
            ("origin", "null"),
            ("host", "a.test")
        ])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])));
    }
}
