//! Scrubbing secrets out of text relayed from upstream: every configured provider key,
//! in each form an upstream may echo it in, becomes `[REDACTED]` before the text reaches
//! a client or a log.
//!
//! A provider that echoes the request's headers in an error ("invalid header
//! Authorization: Bearer sk-...") would otherwise hand the operator's key to whoever
//! sent the request. The forms matched, for each secret:
//! - the secret itself, which also covers `Bearer <secret>` and `x-api-key: <secret>`;
//! - JSON-escaped (a secret holding `"`, `\` or `/`, echoed inside a JSON string, as
//!   `\"`, `\\`, `\/`);
//! - URL-encoded, as RFC 3986 encoders write it (everything but `A-Z a-z 0-9 - . _ ~`
//!   as `%XX`), as stricter ones write it (everything but letters and digits), and as
//!   forms write it (a space as `+`); hex digits in either case.
//!
//! Letters match in either case, so a secret echoed upper-cased is caught too (a text
//! that merely equals a secret but for case is redacted as well: harmless).
//! The matcher (Aho-Corasick over all those forms) is built once at start; a text with no
//! secret in it is returned as it is, without a copy.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::Provider;

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Replaces known secrets in text; cheap to clone and to call.
#[derive(Clone, Debug, Default)]
pub struct Scrubber(Matcher);

#[derive(Clone, Debug, Default)]
enum Matcher {
    /// No secret to look for.
    #[default]
    Nothing,
    Secrets(AhoCorasick),
    /// No matcher could be built: every text is withheld.
    Withhold,
}

impl Scrubber {
    /// A scrubber for the API keys of the configured providers.
    pub fn for_providers(providers: &[Provider]) -> Scrubber {
        Scrubber::new(providers.iter().flat_map(|p| {
            p.api_key
                .as_ref()
                .map(|key| key.expose())
                .into_iter()
                .chain(p.cloud.secrets())
        }))
    }

    /// A scrubber for these secrets (empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            patterns.extend(forms(secret));
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Scrubber(Matcher::Nothing);
        }
        // Leftmost-longest: where one form is a prefix of another (the secret and its
        // encoding share a start), the longer match is replaced whole.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .ascii_case_insensitive(true)
            .build(&patterns);
        match matcher {
            Ok(matcher) => Scrubber(Matcher::Secrets(matcher)),
            Err(e) => {
                // Only a pattern set past the library's size limits fails (thousands of
                // very long secrets); then no upstream text is relayed at all.
                tracing::error!(error = %e, "cannot build the secret scrubber; upstream error text is withheld");
                Scrubber(Matcher::Withhold)
            }
        }
    }

    /// The text with every secret replaced by [`REDACTED`]; borrowed when there was none.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.0 {
            Matcher::Secrets(matcher) if matcher.is_match(text) => {
                Cow::Owned(matcher.replace_all(text, &vec![REDACTED; matcher.patterns_len()]))
            }
            Matcher::Withhold => Cow::Borrowed(REDACTED),
            _ => Cow::Borrowed(text),
        }
    }
}

/// The forms in which `secret` may come back in an upstream's text.
fn forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(secret)
        .to_string();
    let rfc3986 = utf8_percent_encode(secret, RFC3986).to_string();
    vec![
        secret.to_string(),
        json.replace('/', "\\/"),
        json,
        rfc3986.replace("%20", "+"),
        rfc3986,
        utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-proj-Abc123_xyz.789~end";

    #[test]
    fn every_form_of_a_secret_is_redacted() {
        let scrubber = Scrubber::new([SECRET, "other-key"]);
        for text in [
            format!("Authorization: Bearer {SECRET}"),
            format!("{{\"authorization\":\"Bearer {SECRET}\"}}"),
            format!("x-api-key={SECRET}&a=1"),
            format!("key {}", SECRET.to_uppercase()),
            format!("strict %{}", utf8_percent_encode(SECRET, NON_ALPHANUMERIC)),
            format!(
                "lower hex {}",
                utf8_percent_encode(SECRET, NON_ALPHANUMERIC)
                    .to_string()
                    .to_lowercase()
            ),
            format!("twice: {SECRET} and other-key and {SECRET}"),
        ] {
            let scrubbed = scrubber.scrub(&text);
            assert!(!scrubbed.contains("Abc123"), "{scrubbed}");
            assert!(!scrubbed.to_lowercase().contains("abc123"), "{scrubbed}");
            assert!(!scrubbed.contains("other-key"), "{scrubbed}");
            assert!(scrubbed.contains(REDACTED), "{scrubbed}");
        }
        assert_eq!(
            scrubber.scrub(&format!("Bearer {SECRET}, ok")),
            "Bearer [REDACTED], ok"
        );
    }

    #[test]
    fn escaped_and_encoded_special_characters_are_redacted() {
        let secret = "a/b+c=d\"e\\f g";
        let scrubber = Scrubber::new([secret]);
        for echoed in [
            secret.to_string(),
            r#"a\/b+c=d\"e\\f g"#.to_string(),
            r#"a/b+c=d\"e\\f g"#.to_string(),
            "a%2Fb%2Bc%3Dd%22e%5Cf%20g".to_string(),
            "a%2fb%2bc%3dd%22e%5cf+g".to_string(),
        ] {
            let text = format!("header was: {echoed}!");
            assert_eq!(scrubber.scrub(&text), "header was: [REDACTED]!", "{echoed}");
        }
    }

    #[test]
    fn text_without_secrets_is_not_copied() {
        let scrubber = Scrubber::new([SECRET]);
        let text = "The model 'x' does not exist (sk-proj-Abc123_xyz.78 is not it).";
        assert!(matches!(scrubber.scrub(text), Cow::Borrowed(t) if t == text));
        let none = Scrubber::new([""]);
        assert!(matches!(none.scrub("anything"), Cow::Borrowed("anything")));
    }
}
