//! The client request headers a provider receives: an allow-list per provider kind (betas,
//! API versions, trace context), and a deny-list that never passes, whatever the lists say
//! (the client's credentials, cookies, hop-by-hop headers, the operator's provider account).
//!
//! | header | Anthropic provider | OpenAI-compatible provider | Bedrock, Vertex |
//! |---|---|---|---|
//! | `anthropic-beta` | forwarded | — | forwarded (Bedrock: also as the body's `anthropic_beta`) |
//! | `anthropic-version` | forwarded when the client spoke Messages (replaces the provider's) | — | — (the body's `anthropic_version`) |
//! | `openai-beta` | — | forwarded | — |
//! | `traceparent`, `tracestate` | forwarded | forwarded | forwarded |
//!
//! A header reaches a provider when it is on that provider kind's list, whatever API the
//! client spoke: a Chat Completions client may enable an Anthropic beta (a 1M context
//! window, say) for a Claude model. The one exception is `anthropic-version`: a translated
//! request is written for the version the provider is configured with, so only a Messages
//! client, whose body goes through as it came, chooses it.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ProviderKind;

/// Headers that never reach a provider: the client's own credentials (the provider gets
/// the operator's), cookies, the operator's provider account, and hop-by-hop or framing
/// headers that belong to one connection.
pub const DENIED: [&str; 16] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "openai-organization",
    "openai-project",
    "anthropic-admin-key",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Headers forwarded to every provider: W3C trace context.
const TRACE: [&str; 2] = ["traceparent", "tracestate"];
/// Headers forwarded to Anthropic providers.
const ANTHROPIC: [&str; 2] = ["anthropic-beta", "anthropic-version"];
/// Headers forwarded to OpenAI-compatible providers.
const OPENAI: [&str; 1] = ["openai-beta"];

/// The most bytes of forwarded header values kept from one request (all of them): Claude
/// Code's betas are about 200 bytes; anything near this is not a client.
const MAX_FORWARDED_BYTES: usize = 8 << 10;

/// The client request headers that some provider kind may receive, taken from a request
/// once (small: a handful of headers).
#[derive(Debug, Clone, Default)]
pub struct ClientHeaders(Vec<(HeaderName, HeaderValue)>);

impl ClientHeaders {
    /// The allow-listed headers of a client request (every kind's), in their order;
    /// repeated headers are kept repeated.
    pub fn from_request(headers: &HeaderMap) -> ClientHeaders {
        let mut kept = Vec::new();
        let mut bytes = 0usize;
        for name in TRACE.iter().chain(&ANTHROPIC).chain(&OPENAI) {
            for value in headers.get_all(*name) {
                bytes += value.len();
                if bytes > MAX_FORWARDED_BYTES {
                    return ClientHeaders(kept);
                }
                kept.push((HeaderName::from_static(name), value.clone()));
            }
        }
        ClientHeaders(kept)
    }

    /// The headers a provider of `kind` receives; `translated` when the client's request
    /// was translated into the provider's format.
    pub fn for_provider(
        &self,
        kind: ProviderKind,
        translated: bool,
    ) -> Vec<(HeaderName, HeaderValue)> {
        self.0
            .iter()
            .filter(|(name, _)| allowed(kind, translated, name.as_str()))
            .cloned()
            .collect()
    }
}

/// Whether a client header may reach a provider of `kind`.
pub fn allowed(kind: ProviderKind, translated: bool, name: &str) -> bool {
    if DENIED.iter().any(|d| d.eq_ignore_ascii_case(name)) {
        return false;
    }
    let name = name.to_ascii_lowercase();
    if TRACE.contains(&name.as_str()) {
        return true;
    }
    match kind {
        ProviderKind::Anthropic if name == "anthropic-version" => !translated,
        ProviderKind::Anthropic => ANTHROPIC.contains(&name.as_str()),
        ProviderKind::Openai | ProviderKind::Azure => OPENAI.contains(&name.as_str()),
        ProviderKind::Bedrock | ProviderKind::Vertex => name == "anthropic-beta",
        ProviderKind::Gemini => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn names(forwarded: &[(HeaderName, HeaderValue)]) -> Vec<String> {
        forwarded
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
            .collect()
    }

    const EVERYTHING: [(&str, &str); 14] = [
        ("authorization", "Bearer tg-inf-client"),
        ("x-api-key", "tg-inf-client"),
        ("cookie", "session=1"),
        ("openai-organization", "org-client"),
        ("openai-project", "proj-client"),
        ("connection", "keep-alive, x-secret"),
        ("transfer-encoding", "chunked"),
        ("anthropic-beta", "context-management-2025-06-27"),
        ("anthropic-beta", "effort-2025-11-24"),
        ("anthropic-version", "2023-06-01"),
        ("openai-beta", "responses=v1"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "vendor=1"),
        ("x-stainless-lang", "python"),
    ];

    #[test]
    fn each_kind_gets_its_own_list_and_no_credentials() {
        let client = ClientHeaders::from_request(&request(&EVERYTHING));
        assert_eq!(
            names(&client.for_provider(ProviderKind::Anthropic, false)),
            [
                "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate: vendor=1",
                "anthropic-beta: context-management-2025-06-27",
                "anthropic-beta: effort-2025-11-24",
                "anthropic-version: 2023-06-01",
            ]
        );
        assert_eq!(
            names(&client.for_provider(ProviderKind::Openai, false)),
            [
                "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate: vendor=1",
                "openai-beta: responses=v1",
            ]
        );
    }

    #[test]
    fn a_translated_request_keeps_the_providers_api_version() {
        let client = ClientHeaders::from_request(&request(&EVERYTHING));
        let forwarded = names(&client.for_provider(ProviderKind::Anthropic, true));
        assert!(forwarded.iter().any(|h| h.starts_with("anthropic-beta")));
        assert!(!forwarded.iter().any(|h| h.starts_with("anthropic-version")));
    }

    #[test]
    fn the_deny_list_wins_over_every_allow_list() {
        for name in DENIED {
            for kind in [ProviderKind::Anthropic, ProviderKind::Openai] {
                assert!(!allowed(kind, false, name), "{name}");
                assert!(!allowed(kind, false, &name.to_ascii_uppercase()), "{name}");
            }
        }
        for name in TRACE.iter().chain(&ANTHROPIC).chain(&OPENAI) {
            assert!(!DENIED.contains(name), "{name} is both allowed and denied");
        }
    }

    #[test]
    fn a_flood_of_allowed_headers_is_bounded() {
        let big = "x".repeat(1000);
        let pairs: Vec<(&str, &str)> = (0..100).map(|_| ("anthropic-beta", big.as_str())).collect();
        let client = ClientHeaders::from_request(&request(&pairs));
        let kept: usize = client.0.iter().map(|(_, v)| v.len()).sum();
        assert!(kept <= MAX_FORWARDED_BYTES, "{kept}");
        assert!(kept > 0);
    }
}
