//! The `[[providers]]` section: where each upstream provider is and how to reach it.

use std::time::Duration;

use serde::Deserialize;

use super::clouds::{self, Cloud};
use super::{ConfigError, Overrides, Secret};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileProvider {
    name: String,
    pub(super) kind: ProviderKind,
    base_url: Option<String>,
    api_key_env: Option<String>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    anthropic_version: Option<String>,
    #[serde(default)]
    chat_only: bool,
    api_version: Option<String>,
    auth: Option<String>,
    /// Bedrock and Vertex (see `clouds`).
    pub(super) region: Option<String>,
    pub(super) project: Option<String>,
    pub(super) credentials_file: Option<String>,
    pub(super) access_token_env: Option<String>,
}

impl FileProvider {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Sets the region of a built-in provider (Bedrock's, from `AWS_REGION`).
    pub(super) fn with_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// A provider of the built-in catalog: its key from `key_env`.
    pub(super) fn builtin(
        name: &str,
        kind: ProviderKind,
        base_url: Option<String>,
        key_env: &str,
    ) -> Self {
        FileProvider {
            name: name.to_string(),
            kind,
            base_url,
            // Bedrock's credentials are the standard AWS variables (see `clouds`).
            api_key_env: (kind != ProviderKind::Bedrock).then(|| key_env.to_string()),
            connect_timeout_ms: None,
            first_byte_timeout_ms: None,
            idle_timeout_ms: None,
            anthropic_version: None,
            chat_only: false,
            api_version: None,
            auth: None,
            region: None,
            project: None,
            credentials_file: None,
            access_token_env: None,
        }
    }
}

/// The wire format an upstream provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server.
    Openai,
    /// Anthropic's native Messages API.
    Anthropic,
    /// Azure OpenAI.
    Azure,
    /// Google's Gemini API (AI Studio), native `generateContent`.
    Gemini,
    /// AWS Bedrock: Converse, and InvokeModel for Anthropic models; SigV4-signed.
    Bedrock,
    /// Google Vertex AI: Anthropic (`rawPredict`) and Gemini models; OAuth.
    Vertex,
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub anthropic_version: String,
    /// An OpenAI-compatible server without the Responses API: `/v1/responses` is
    /// translated to Chat Completions for it.
    pub chat_only: bool,
    /// Azure: the `api-version` of the deployment-in-the-path form (`None`: the v1 form).
    pub api_version: Option<String>,
    /// Azure: the key is sent as `Authorization: Bearer` (an Entra ID token), not `api-key`.
    pub bearer: bool,
    /// Bedrock and Vertex: region, project and credentials.
    pub cloud: Cloud,
}

/// Validates the providers of the file.
pub(super) fn parse(
    file: Vec<FileProvider>,
    origin: &str,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Provider>, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::at(origin, key, msg);
    let mut providers = Vec::new();
    for (i, p) in file.into_iter().enumerate() {
        let key = |field: &str| format!("providers[{i}].{field}");
        if p.name.is_empty() {
            return Err(err(&key("name"), "must not be empty".into()));
        }
        if providers.iter().any(|q: &Provider| q.name == p.name) {
            return Err(err(&key("name"), format!("'{}' is used twice", p.name)));
        }
        let cloud = clouds::parse(&p, &key, origin, overrides, env)?;
        let Some(base_url) = p.base_url.clone().or_else(|| cloud.default_base_url()) else {
            return Err(err(&key("base_url"), "is required".into()));
        };
        let base_url = base_url.trim_end_matches('/').to_string();
        let uri = base_url.parse::<axum::http::Uri>();
        if !uri.is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        }) {
            return Err(err(
                &key("base_url"),
                format!("'{base_url}' is not an http(s) URL"),
            ));
        }
        let api_key = match (&p.api_key_env, overrides.without_provider_secrets) {
            (Some(var), false) => Some(Secret::new(env(var).ok_or_else(|| {
                err(
                    &key("api_key_env"),
                    format!("environment variable {var} is not set"),
                )
            })?)),
            (Some(var), true) => env(var).map(Secret::new),
            (None, _) => None,
        };
        if p.kind != ProviderKind::Azure && p.api_version.is_some() {
            return Err(err(
                &key("api_version"),
                "is only for providers of kind \"azure\"".into(),
            ));
        }
        if let Some(version) = &p.api_version {
            if version.is_empty()
                || !version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(err(
                    &key("api_version"),
                    format!("'{version}' is not an API version such as \"2024-10-21\""),
                ));
            }
        }
        let bearer = match p.auth.as_deref() {
            None | Some("api-key") => false,
            Some("bearer") if p.kind == ProviderKind::Azure => true,
            Some(other) => {
                return Err(err(
                    &key("auth"),
                    format!("'{other}' is not \"api-key\" or \"bearer\" (azure providers only)"),
                ))
            }
        };
        let ms = |v: Option<u64>, default: u64, field: &str| match v {
            Some(0) => Err(err(&key(field), "must be above 0".into())),
            Some(v) => Ok(Duration::from_millis(v)),
            None => Ok(Duration::from_millis(default)),
        };
        providers.push(Provider {
            name: p.name,
            kind: p.kind,
            base_url,
            api_key,
            connect_timeout: ms(p.connect_timeout_ms, 5_000, "connect_timeout_ms")?,
            first_byte_timeout: ms(p.first_byte_timeout_ms, 120_000, "first_byte_timeout_ms")?,
            idle_timeout: ms(p.idle_timeout_ms, 120_000, "idle_timeout_ms")?,
            anthropic_version: p.anthropic_version.unwrap_or_else(|| "2023-06-01".into()),
            chat_only: p.chat_only,
            api_version: p.api_version,
            bearer,
            cloud,
        });
    }

    Ok(providers)
}
