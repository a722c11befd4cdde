//! The `[[rate_limits]]` sections: request-rate limits an account shares over every
//! model matching a pattern, as the hosted service limits its free models:
//! `models = "*:free", scope = "account", rpm = 10, rpd = 100`.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRateLimit {
    models: String,
    scope: String,
    rpm: Option<i64>,
    rpd: Option<i64>,
}

/// One account-level limit: the models it covers and its two windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRateLimit {
    /// Its place among the limits (names its counters).
    pub index: usize,
    /// A model id pattern; `*` stands for any run of characters.
    pub models: String,
    /// Requests per sliding minute, per account, over every matching model.
    pub rpm: Option<i64>,
    /// Requests per sliding 24 hours, per account, over every matching model.
    pub rpd: Option<i64>,
}

impl AccountRateLimit {
    /// Whether the pattern matches the model id `id`.
    pub fn covers(&self, id: &str) -> bool {
        glob(self.models.as_bytes(), id.as_bytes())
    }
}

/// `*` matches any run of bytes; every other byte itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

pub(super) fn parse(
    file: Vec<FileRateLimit>,
    origin: &str,
) -> Result<Vec<AccountRateLimit>, ConfigError> {
    let mut limits = Vec::with_capacity(file.len());
    for (index, f) in file.into_iter().enumerate() {
        let at = |field: &str| format!("rate_limits[{index}].{field}");
        if f.scope != "account" {
            return Err(ConfigError::at(
                origin,
                &at("scope"),
                format!("'{}' is not a scope: only \"account\" is (per-key limits are the key's rate_limit_rpm)", f.scope),
            ));
        }
        if f.models.is_empty() {
            return Err(ConfigError::at(
                origin,
                &at("models"),
                "must be a model id pattern such as \"*:free\"".into(),
            ));
        }
        for (name, value) in [("rpm", f.rpm), ("rpd", f.rpd)] {
            if value.is_some_and(|v| v < 1) {
                return Err(ConfigError::at(
                    origin,
                    &at(name),
                    "must be 1 or more".into(),
                ));
            }
        }
        if f.rpm.is_none() && f.rpd.is_none() {
            return Err(ConfigError::at(
                origin,
                &at("rpm"),
                "a limit needs rpm, rpd or both".into(),
            ));
        }
        limits.push(AccountRateLimit {
            index,
            models: f.models,
            rpm: f.rpm,
            rpd: f.rpd,
        });
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_ids() {
        let limit = |models: &str| AccountRateLimit {
            index: 0,
            models: models.into(),
            rpm: Some(1),
            rpd: None,
        };
        let free = limit("*:free");
        assert!(free.covers("meta/llama-3:free"));
        assert!(free.covers(":free"));
        assert!(!free.covers("meta/llama-3:free-ish"));
        assert!(!free.covers("gpt-4.1"));
        assert!(limit("gpt-*-mini").covers("gpt-4.1-mini"));
        assert!(!limit("gpt-*-mini").covers("gpt-4.1"));
        assert!(limit("*").covers("anything"));
        assert!(limit("exact").covers("exact") && !limit("exact").covers("exactly"));
        assert!(limit("a*b*c").covers("aXbYbZc"));
    }

    #[test]
    fn only_account_scope_and_positive_limits() {
        let file = |scope: &str, rpm: Option<i64>, rpd: Option<i64>| FileRateLimit {
            models: "*:free".into(),
            scope: scope.into(),
            rpm,
            rpd,
        };
        assert!(parse(vec![file("account", Some(10), Some(100))], "t").is_ok());
        for bad in [
            file("key", Some(1), None),
            file("account", Some(0), None),
            file("account", None, None),
        ] {
            assert!(parse(vec![bad], "t").is_err());
        }
    }
}
