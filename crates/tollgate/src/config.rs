//! Configuration: TOML file plus environment and flags, validated once into a typed `Config`,
//! including the provider list and the model catalog.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::billing::{Pricing, UnitPrice};

/// Default listen address when nothing else is set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "tollgate-data";

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// A start-up configuration error, naming the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    origin: String,
    message: String,
}

impl ConfigError {
    fn new(origin: &str, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_string(),
            message: message.into(),
        }
    }
}

/// Values given on the command line or in the environment; they beat the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// Operator commands do not call providers: a missing provider secret is no error.
    pub without_provider_secrets: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    redis_url: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    providers: Vec<FileProvider>,
    #[serde(default)]
    models: Vec<FileModel>,
    #[serde(default)]
    startups: Vec<toml::Table>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<usize>,
    max_upload_bytes: Option<usize>,
    max_stream_frame_bytes: Option<usize>,
    ledger_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    reservation_lease_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: String,
    kind: ProviderKind,
    base_url: String,
    api_key_env: Option<String>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    anthropic_version: Option<String>,
    #[serde(default)]
    chat_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    id: String,
    provider: String,
    upstream_model: Option<String>,
    endpoints: Option<Vec<String>>,
    display_name: Option<String>,
    owned_by: Option<String>,
    created: Option<i64>,
    context_window: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(default)]
    pricing: FilePricing,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePricing {
    input: Option<String>,
    cached_input: Option<String>,
    cache_write: Option<String>,
    output: Option<String>,
    per_image: Option<String>,
    per_request: Option<String>,
    per_audio_second: Option<String>,
    per_character: Option<String>,
}

/// The wire format an upstream provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server.
    Openai,
    /// Anthropic's native Messages API.
    Anthropic,
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
}

/// The model endpoints a catalog entry may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Messages,
    Embeddings,
    ImagesGenerations,
    AudioSpeech,
    AudioTranscriptions,
    AudioTranslations,
    Moderations,
}

impl Endpoint {
    pub const ALL: [Endpoint; 9] = [
        Endpoint::ChatCompletions,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::Embeddings,
        Endpoint::ImagesGenerations,
        Endpoint::AudioSpeech,
        Endpoint::AudioTranscriptions,
        Endpoint::AudioTranslations,
        Endpoint::Moderations,
    ];

    /// The name used in the config and in `/v1/models`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ImagesGenerations => "images.generations",
            Endpoint::AudioSpeech => "audio.speech",
            Endpoint::AudioTranscriptions => "audio.transcriptions",
            Endpoint::AudioTranslations => "audio.translations",
            Endpoint::Moderations => "moderations",
        }
    }

    /// The path below `/v1` of the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Responses => "/responses",
            Endpoint::Messages => "/messages",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::ImagesGenerations => "/images/generations",
            Endpoint::AudioSpeech => "/audio/speech",
            Endpoint::AudioTranscriptions => "/audio/transcriptions",
            Endpoint::AudioTranslations => "/audio/translations",
            Endpoint::Moderations => "/moderations",
        }
    }

    fn parse(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// One model of the catalog.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    /// Index into `Config::providers`.
    pub provider: usize,
    pub upstream_model: String,
    pub endpoints: Vec<Endpoint>,
    pub display_name: String,
    pub owned_by: String,
    pub created: i64,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub pricing: Pricing,
}

/// Size limits on what clients send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest multipart upload (audio).
    pub max_upload_bytes: usize,
    /// Largest single Server-Sent-Events frame accepted from an upstream.
    pub max_stream_frame_bytes: usize,
    /// How long a request waits for its usage record to be safe before it fails with
    /// 503 `ledger_unavailable` (a full disk, an unreachable database).
    pub ledger_wait: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// How long a replica's reservation survives without renewal (cluster mode).
    pub reservation_lease: Duration,
    pub providers: Vec<Provider>,
    pub models: Vec<Arc<Model>>,
    model_index: HashMap<String, usize>,
    /// `GET /v1/startups` entries, served as they are.
    pub startups: Vec<serde_json::Value>,
}

impl Config {
    /// Reads the file (if any), applies overrides and validates everything.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let (file, origin) = match &overrides.config_file {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (FileConfig::default(), "defaults".to_string()),
        };
        Self::from_file(file, &origin, overrides, &|name| std::env::var(name).ok())
    }

    /// Parses TOML text (for tests and `load`).
    pub fn from_toml(
        text: &str,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::new("config", toml_message(&e)))?;
        Self::from_file(file, "config", overrides, env)
    }

    fn from_file(
        file: FileConfig,
        origin: &str,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(origin, format!("`{key}`: {msg}"));
        let listen_text = overrides
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(
                "listen",
                format!("'{listen_text}' is not an address like 127.0.0.1:8080"),
            )
        })?;
        let data_dir = file
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = overrides
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}/tollgate.db", data_dir.display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(err(
                "database_url",
                "must start with sqlite:// or postgres://".to_string(),
            ));
        }
        let redis_url = overrides.redis_url.clone().or(file.redis_url);
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(err("redis_url", "must start with redis://".to_string()));
            }
        }
        let limits = Limits {
            max_body_bytes: positive(file.limits.max_body_bytes, 4 << 20)
                .ok_or_else(|| err("limits.max_body_bytes", "must be above 0".into()))?,
            max_upload_bytes: positive(file.limits.max_upload_bytes, 26 << 20)
                .ok_or_else(|| err("limits.max_upload_bytes", "must be above 0".into()))?,
            max_stream_frame_bytes: positive(file.limits.max_stream_frame_bytes, 4 << 20)
                .ok_or_else(|| err("limits.max_stream_frame_bytes", "must be above 0".into()))?,
            ledger_wait: match file.limits.ledger_wait_ms {
                None => crate::usage::DEFAULT_LEDGER_WAIT,
                Some(ms) if (100..=600_000).contains(&ms) => Duration::from_millis(ms),
                Some(_) => {
                    return Err(err(
                        "limits.ledger_wait_ms",
                        "must be between 100 and 600000".into(),
                    ))
                }
            },
        };

        let reservation_lease = match file.cluster.reservation_lease_ms {
            Some(ms) if ms < 1000 => {
                return Err(err(
                    "cluster.reservation_lease_ms",
                    "must be at least 1000".into(),
                ))
            }
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(30),
        };

        let mut providers = Vec::new();
        for (i, p) in file.providers.into_iter().enumerate() {
            let key = |field: &str| format!("providers[{i}].{field}");
            if p.name.is_empty() {
                return Err(err(&key("name"), "must not be empty".into()));
            }
            if providers.iter().any(|q: &Provider| q.name == p.name) {
                return Err(err(&key("name"), format!("'{}' is used twice", p.name)));
            }
            let base_url = p.base_url.trim_end_matches('/').to_string();
            let uri = base_url.parse::<axum::http::Uri>();
            if !uri.is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            }) {
                return Err(err(
                    &key("base_url"),
                    format!("'{}' is not an http(s) URL", p.base_url),
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
            });
        }

        let mut models = Vec::new();
        let mut model_index = HashMap::new();
        for (i, m) in file.models.into_iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            if m.id.is_empty() || m.id.len() > 255 {
                return Err(err(&key("id"), "must be 1 to 255 characters".into()));
            }
            if model_index.contains_key(&m.id) {
                return Err(err(&key("id"), format!("'{}' is used twice", m.id)));
            }
            let provider = providers
                .iter()
                .position(|p| p.name == m.provider)
                .ok_or_else(|| {
                    err(
                        &key("provider"),
                        format!("no provider named '{}'", m.provider),
                    )
                })?;
            let endpoints = match m.endpoints {
                Some(names) => names
                    .iter()
                    .map(|n| {
                        Endpoint::parse(n).ok_or_else(|| {
                            err(
                                &key("endpoints"),
                                format!(
                                    "unknown endpoint '{n}' (one of: {})",
                                    Endpoint::ALL.map(Endpoint::name).join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![
                    Endpoint::ChatCompletions,
                    Endpoint::Responses,
                    Endpoint::Messages,
                ],
            };
            let per_m = |v: &Option<String>, field: &str| {
                v.as_deref()
                    .map(|t| {
                        UnitPrice::per_million(t).map_err(|e| {
                            err(&key(&format!("pricing.{field}")), format!("'{t}': {e}"))
                        })
                    })
                    .transpose()
            };
            let per_unit = |v: &Option<String>, field: &str| {
                v.as_deref()
                    .map(|t| {
                        UnitPrice::per_unit(t).map_err(|e| {
                            err(&key(&format!("pricing.{field}")), format!("'{t}': {e}"))
                        })
                    })
                    .transpose()
            };
            let pr = &m.pricing;
            let pricing = Pricing {
                input: per_m(&pr.input, "input")?,
                cached_input: per_m(&pr.cached_input, "cached_input")?,
                cache_write: per_m(&pr.cache_write, "cache_write")?,
                output: per_m(&pr.output, "output")?,
                per_image: per_unit(&pr.per_image, "per_image")?,
                per_request: per_unit(&pr.per_request, "per_request")?,
                per_audio_second: per_unit(&pr.per_audio_second, "per_audio_second")?,
                per_character: per_unit(&pr.per_character, "per_character")?,
            };
            model_index.insert(m.id.clone(), models.len());
            models.push(Arc::new(Model {
                upstream_model: m.upstream_model.unwrap_or_else(|| m.id.clone()),
                display_name: m.display_name.unwrap_or_else(|| m.id.clone()),
                owned_by: m
                    .owned_by
                    .unwrap_or_else(|| providers[provider].name.clone()),
                created: m.created.unwrap_or(0),
                id: m.id,
                provider,
                endpoints,
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
                pricing,
            }));
        }

        let startups = file
            .startups
            .into_iter()
            .map(|t| serde_json::to_value(t).unwrap_or(serde_json::Value::Null))
            .collect();

        Ok(Config {
            listen,
            database_url,
            redis_url,
            data_dir,
            limits,
            reservation_lease,
            providers,
            models,
            model_index,
            startups,
        })
    }

    /// The catalog entry for a public model id.
    pub fn model(&self, id: &str) -> Option<&Arc<Model>> {
        self.model_index.get(id).map(|&i| &self.models[i])
    }

    /// The provider serving a model.
    pub fn provider_of(&self, model: &Model) -> &Provider {
        &self.providers[model.provider]
    }
}

fn positive(value: Option<usize>, default: usize) -> Option<usize> {
    match value {
        Some(0) => None,
        Some(v) => Some(v),
        None => Some(default),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, format!("cannot read: {e}")))?;
    toml::from_str(&text).map_err(|e| ConfigError::new(&origin, toml_message(&e)))
}

fn toml_message(e: &toml::de::Error) -> String {
    e.to_string().trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "UP_KEY").then(|| "secret".to_string())
    }

    const GOOD: &str = r#"
listen = "127.0.0.1:9999"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:1/v1/"
api_key_env = "UP_KEY"
[[models]]
id = "m1"
provider = "up"
endpoints = ["chat.completions", "embeddings"]
pricing = { input = "0.40", output = "1.60" }
[[startups]]
name = "Example"
url = "https://example.com"
"#;

    #[test]
    fn loads_a_full_file() {
        let c = Config::from_toml(GOOD, &Overrides::default(), &env).expect("valid");
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:1/v1");
        assert_eq!(
            c.providers[0].api_key.as_ref().map(Secret::expose),
            Some("secret")
        );
        assert_eq!(format!("{:?}", c.providers[0].api_key), "Some(*****)");
        let m = c.model("m1").expect("model");
        assert_eq!(m.upstream_model, "m1");
        assert_eq!(
            m.endpoints,
            vec![Endpoint::ChatCompletions, Endpoint::Embeddings]
        );
        assert_eq!(c.startups[0]["url"], "https://example.com");
        assert_eq!(c.database_url, "sqlite://tollgate-data/tollgate.db");
    }

    #[test]
    fn overrides_beat_the_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:1234".into()),
            database_url: Some("sqlite://x.db".into()),
            ..Overrides::default()
        };
        let c = Config::from_toml(GOOD, &o, &env).expect("valid");
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.database_url, "sqlite://x.db");
    }

    fn error_of(text: &str) -> String {
        match Config::from_toml(text, &Overrides::default(), &env) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error_of("lisen = 'x'").contains("lisen"));
        assert!(error_of("listen = 'nope'").contains("`listen`"));
        assert!(error_of("listen = 5").contains("listen"));
        assert!(error_of("database_url = 'mysql://x'").contains("`database_url`"));
        assert!(error_of("[limits]\nmax_body_bytes = 0").contains("limits.max_body_bytes"));
        assert!(error_of("[limits]\nledger_wait_ms = 5").contains("limits.ledger_wait_ms"));
        let bad_model = GOOD.replace("provider = \"up\"", "provider = \"nope\"");
        assert!(error_of(&bad_model).contains("models[0].provider"));
        let bad_price = GOOD.replace("\"0.40\"", "\"cheap\"");
        assert!(error_of(&bad_price).contains("models[0].pricing.input"));
        let bad_env = GOOD.replace("UP_KEY", "MISSING_KEY");
        assert!(error_of(&bad_env).contains("MISSING_KEY"));
        let bad_endpoint = GOOD.replace("\"embeddings\"", "\"embedding\"");
        assert!(error_of(&bad_endpoint).contains("models[0].endpoints"));
        assert!(error_of("[[models]]\nid='x'\nprovider='p'\nfoo=1").contains("foo"));
    }
}
