//! Scrubbing secrets out of text relayed from upstream: every configured provider key,
//! and every token obtained at run time (a Vertex service account's OAuth access tokens),
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
//! The matcher (Aho-Corasick over all those forms) is built at start and again when a
//! token is learned (about once an hour); a text with no secret in it is returned as it
//! is, without a copy.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::Provider;

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets learned at run time (OAuth access tokens) kept per scrubber: the newest few, so
/// that an answer still in flight with the previous token is scrubbed of it too.
const LEARNED_KEPT: usize = 8;

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Replaces known secrets in text; cheap to clone and to call. Clones share what is
/// learned later ([`Scrubber::learn`]).
#[derive(Clone, Debug, Default)]
pub struct Scrubber(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// The configured secrets.
    fixed: Vec<String>,
    /// Secrets obtained at run time, oldest first.
    learned: Mutex<Vec<String>>,
    matcher: RwLock<Arc<Matcher>>,
}

#[derive(Debug, Default)]
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
        let fixed: Vec<String> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let matcher = RwLock::new(Arc::new(matcher(&fixed)));
        Scrubber(Arc::new(Shared {
            fixed,
            learned: Mutex::new(Vec::new()),
            matcher,
        }))
    }

    /// Adds a secret obtained at run time (a provider's OAuth access token), for this
    /// scrubber and every clone of it, keeping the newest [`LEARNED_KEPT`].
    pub fn learn(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let shared = &*self.0;
        let mut learned = shared.learned.lock().unwrap_or_else(|p| p.into_inner());
        if learned.iter().any(|s| s == secret) {
            return;
        }
        learned.push(secret.to_string());
        if learned.len() > LEARNED_KEPT {
            learned.remove(0);
        }
        let all: Vec<String> = shared.fixed.iter().chain(learned.iter()).cloned().collect();
        // Built under the `learned` lock, so two tokens learned at once both end up in.
        let rebuilt = Arc::new(matcher(&all));
        *shared.matcher.write().unwrap_or_else(|p| p.into_inner()) = rebuilt;
    }

    /// The text with every secret replaced by [`REDACTED`]; borrowed when there was none.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        // Held while matching: a write (a token learned) happens about once an hour.
        let matcher = self.0.matcher.read().unwrap_or_else(|p| p.into_inner());
        match &**matcher {
            Matcher::Secrets(matcher) if matcher.is_match(text) => {
                Cow::Owned(matcher.replace_all(text, &vec![REDACTED; matcher.patterns_len()]))
            }
            Matcher::Withhold => Cow::Borrowed(REDACTED),
            _ => Cow::Borrowed(text),
        }
    }
}

/// The matcher of every form of these secrets.
fn matcher(secrets: &[String]) -> Matcher {
    let mut patterns: Vec<String> = secrets.iter().flat_map(|s| forms(s)).collect();
    patterns.sort();
    patterns.dedup();
    if patterns.is_empty() {
        return Matcher::Nothing;
    }
    // Leftmost-longest: where one form is a prefix of another (the secret and its
    // encoding share a start), the longer match is replaced whole.
    let built = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .ascii_case_insensitive(true)
        .build(&patterns);
    match built {
        Ok(matcher) => Matcher::Secrets(matcher),
        Err(e) => {
            // Only a pattern set past the library's size limits fails (thousands of
            // very long secrets); then no upstream text is relayed at all.
            tracing::error!(error = %e, "cannot build the secret scrubber; upstream error text is withheld");
            Matcher::Withhold
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

    /// A token obtained after start (Vertex's OAuth access tokens) is scrubbed by every
    /// clone of the scrubber, made before or after; the configured secrets stay; only the
    /// newest few learned tokens are kept.
    #[test]
    fn secrets_learned_at_run_time_are_redacted_by_every_clone() {
        let scrubber = Scrubber::new([SECRET]);
        let relay = scrubber.clone();
        let token = "ya29.c.runtime-token-1";
        assert_eq!(relay.scrub(token), token);
        scrubber.learn(token);
        scrubber.learn(token);
        assert_eq!(relay.scrub(&format!("Bearer {token}")), "Bearer [REDACTED]");
        assert_eq!(relay.scrub(SECRET), REDACTED);
        let later = scrubber.clone();
        for i in 2..=LEARNED_KEPT + 1 {
            later.learn(&format!("ya29.c.runtime-token-{i}"));
        }
        assert_eq!(relay.scrub("ya29.c.runtime-token-2!"), "[REDACTED]!");
        assert_eq!(
            relay.scrub(&format!("ya29.c.runtime-token-{}", LEARNED_KEPT + 1)),
            REDACTED
        );
        // The oldest learned token made room for the newest.
        assert_eq!(relay.scrub(token), token);
        assert_eq!(relay.scrub(SECRET), REDACTED);
    }
}
