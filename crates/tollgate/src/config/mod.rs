//! Configuration: TOML file plus environment and flags, validated once into a typed `Config`,
//! including the provider list and the model catalog.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

mod builtin;
mod catalog;
mod clouds;
mod front;
mod observability;
mod pricing;
mod providers;
mod rate_limits;
mod routing;
mod webhooks;

pub use catalog::{Deployment, Endpoint, Model};
pub use clouds::{AwsCredentials, Cloud, GoogleAuth, ServiceAccount};
pub use front::{ConsoleSettings, Cors, ServerLimits};
pub use observability::{LogFormat, Observability};
pub use providers::{Provider, ProviderKind};
pub use rate_limits::AccountRateLimit;
pub use routing::Routing;
pub use webhooks::{OperatorWebhook, WebhookPolicy};

/// Default listen address when nothing else is set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default limit of a JSON request body: Anthropic's own (32 MB), which long agent
/// sessions (a whole conversation with images on every turn) come near.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 << 20;
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

    /// An error about one key of the file.
    fn at(origin: &str, key: &str, message: String) -> Self {
        ConfigError::new(origin, format!("`{key}`: {message}"))
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
    server: front::FileServer,
    #[serde(default)]
    cors: front::FileCors,
    #[serde(default)]
    console: front::FileConsole,
    #[serde(default)]
    observability: observability::FileObservability,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    routing: routing::FileRouting,
    #[serde(default)]
    providers: Vec<providers::FileProvider>,
    #[serde(default)]
    models: Vec<catalog::FileModel>,
    #[serde(default)]
    startups: Vec<toml::Table>,
    #[serde(default)]
    webhooks: Vec<webhooks::FileWebhook>,
    #[serde(default)]
    webhook_policy: webhooks::FileWebhookPolicy,
    #[serde(default)]
    rate_limits: Vec<rate_limits::FileRateLimit>,
    #[serde(default)]
    catalog: builtin::FileCatalog,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<usize>,
    max_upload_bytes: Option<usize>,
    max_stream_frame_bytes: Option<usize>,
    stream_timeout_ms: Option<u64>,
    ledger_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    reservation_lease_ms: Option<u64>,
    budget_check_interval_ms: Option<u64>,
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
    /// Longest a model response may take, streamed or not, from its first byte on.
    pub stream_timeout: Duration,
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
    /// Timeouts of client connections.
    pub server: ServerLimits,
    /// The browser origins allowed to call the gateway; `None`: no CORS answers.
    pub cors: Option<Cors>,
    /// `[console]`: the web console's sessions.
    pub console: ConsoleSettings,
    /// `[observability]`: metrics, log format, traces.
    pub observability: Observability,
    /// How long a replica's reservation survives without renewal (cluster mode).
    pub reservation_lease: Duration,
    /// How often each account's shared budget is checked against the ledger (cluster mode).
    pub budget_check_interval: Duration,
    pub routing: Routing,
    pub providers: Vec<Provider>,
    pub models: Vec<Arc<Model>>,
    model_index: HashMap<String, usize>,
    /// `GET /v1/startups` entries, served as they are.
    pub startups: Vec<serde_json::Value>,
    /// Operator webhooks and how webhooks are delivered.
    pub webhooks: WebhookPolicy,
    /// Request-rate limits an account shares over the models matching a pattern.
    pub rate_limits: Vec<AccountRateLimit>,
    /// The clock of budget windows: the system's, or the file named by
    /// `TOLLGATE_CLOCK_FILE` (tests).
    pub clock: crate::clock::Clock,
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
        let err = |key: &str, msg: String| ConfigError::at(origin, key, msg);
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
            if database_url.starts_with("sqlite:") {
                return Err(err(
                    "redis_url",
                    "cluster mode needs a PostgreSQL database_url (replicas share the ledger)"
                        .to_string(),
                ));
            }
        }
        let limits = Limits {
            max_body_bytes: positive(file.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES)
                .ok_or_else(|| err("limits.max_body_bytes", "must be above 0".into()))?,
            max_upload_bytes: positive(file.limits.max_upload_bytes, 26 << 20)
                .ok_or_else(|| err("limits.max_upload_bytes", "must be above 0".into()))?,
            max_stream_frame_bytes: positive(file.limits.max_stream_frame_bytes, 4 << 20)
                .ok_or_else(|| err("limits.max_stream_frame_bytes", "must be above 0".into()))?,
            stream_timeout: match file.limits.stream_timeout_ms {
                Some(0) => return Err(err("limits.stream_timeout_ms", "must be above 0".into())),
                Some(ms) => Duration::from_millis(ms),
                None => Duration::from_secs(30 * 60),
            },
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
        let budget_check_interval = match file.cluster.budget_check_interval_ms {
            Some(ms) if ms < 1000 => {
                return Err(err(
                    "cluster.budget_check_interval_ms",
                    "must be at least 1000".into(),
                ))
            }
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(30),
        };

        let server = front::server(file.server, origin)?;
        let cors = front::cors(file.cors, origin)?;
        let console = front::console(file.console, origin)?;
        let observability = observability::parse(file.observability, origin, env)?;
        let routing = routing::parse(file.routing, origin)?;
        let rate_limits = rate_limits::parse(file.rate_limits, origin)?;
        let (mut file_providers, mut file_models) = (file.providers, file.models);
        builtin::extend(&file.catalog, &mut file_providers, &mut file_models, env)?;
        let providers = providers::parse(file_providers, origin, overrides, env)?;
        let catalog = catalog::parse(file_models, origin, &providers)?;
        let webhooks = webhooks::parse(file.webhooks, file.webhook_policy, origin, overrides, env)?;

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
            server,
            cors,
            console,
            observability,
            reservation_lease,
            budget_check_interval,
            routing,
            providers,
            models: catalog.models,
            model_index: catalog.index,
            startups,
            webhooks,
            rate_limits,
            clock: match env(crate::clock::CLOCK_FILE_ENV) {
                Some(path) if !path.is_empty() => crate::clock::Clock::from_file(path.into()),
                _ => crate::clock::Clock::system(),
            },
        })
    }

    /// The catalog entry for a public model id.
    pub fn model(&self, id: &str) -> Option<&Arc<Model>> {
        self.model_index.get(id).map(|&i| &self.models[i])
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
        assert_eq!(m.deployments[0].upstream_model, "m1");
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

    const ROUTED: &str = r#"
[routing]
max_attempts = 4
cooldown_failures = 2
cooldown_ms = 1000
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[providers]]
name = "b"
kind = "anthropic"
base_url = "http://127.0.0.1:2/v1"
[[models]]
id = "m1"
endpoints = ["chat.completions"]
fallbacks = ["m2"]
pricing = { input = "1", output = "2" }
[[models.deployments]]
provider = "a"
weight = 3
[[models.deployments]]
provider = "a"
upstream_model = "m1-b"
priority = 1
[[models]]
id = "m2"
provider = "b"
upstream_model = "claude"
free = true
"#;

    #[test]
    fn deployments_and_fallbacks() {
        let c = Config::from_toml(ROUTED, &Overrides::default(), &env).expect("valid");
        assert_eq!(c.routing.max_attempts, 4);
        assert_eq!(c.routing.cooldown_failures, 2);
        assert_eq!(c.routing.cooldown, Duration::from_millis(1000));
        assert!(!c.routing.retry_on_timeout);
        let m1 = c.model("m1").expect("m1");
        assert_eq!(m1.deployments.len(), 2);
        assert_eq!(
            (m1.deployments[0].weight, m1.deployments[0].priority),
            (3, 0)
        );
        assert_eq!(m1.deployments[0].upstream_model, "m1");
        assert_eq!(m1.deployments[1].upstream_model, "m1-b");
        assert_eq!(m1.deployments[1].priority, 1);
        assert_eq!(m1.fallbacks, vec!["m2".to_string()]);
        let m2 = c.model("m2").expect("m2");
        assert_eq!(m2.deployments.len(), 1);
        assert_eq!(m2.deployments[0].provider, 1);
        // Deployment ids are unique over the catalog.
        let ids: Vec<usize> = c
            .models
            .iter()
            .flat_map(|m| m.deployments.iter().map(|d| d.id))
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
    }

    #[test]
    fn routing_errors_name_the_key() {
        let both = ROUTED.replace(
            "fallbacks = [\"m2\"]",
            "fallbacks = [\"m2\"]\nprovider = \"a\"",
        );
        assert!(error_of(&both).contains("models[0].provider"));
        let unknown = ROUTED.replace("fallbacks = [\"m2\"]", "fallbacks = [\"m3\"]");
        assert!(error_of(&unknown).contains("models[0].fallbacks[0]"));
        let itself = ROUTED.replace("fallbacks = [\"m2\"]", "fallbacks = [\"m1\"]");
        assert!(error_of(&itself).contains("the model itself"));
        let bad_provider = ROUTED.replace("provider = \"a\"\nweight = 3", "provider = \"z\"");
        assert!(error_of(&bad_provider).contains("models[0].deployments[0].provider"));
        let zero_weight = ROUTED.replace("weight = 3", "weight = 0");
        assert!(error_of(&zero_weight).contains("deployments[0].weight"));
        let unpriced = GOOD.replace(
            "pricing = { input = \"0.40\", output = \"1.60\" }",
            "pricing = { input = \"0.40\" }",
        );
        let message = error_of(&unpriced);
        assert!(
            message.contains("models[0].pricing") && message.contains("'m1'"),
            "{message}"
        );
        assert!(
            message.contains("chat.completions") && message.contains("free = true"),
            "{message}"
        );
        let none = "[[models]]\nid = 'x'";
        assert!(error_of(none).contains("models[0].provider"));
        assert!(error_of("[routing]\nmax_attempts = 0").contains("routing.max_attempts"));
        assert!(error_of("[routing]\nretries = 1").contains("retries"));
        assert!(error_of("[server]\nheader_timeout_ms = 0").contains("server.header_timeout_ms"));
        assert!(
            error_of("[cors]\nallowed_origins = ['https://a.example/path']")
                .contains("cors.allowed_origins")
        );
        assert!(
            error_of("[cors]\nallowed_origins = ['*', 'https://a.example']")
                .contains("cors.allowed_origins")
        );
        let c = Config::from_toml(
            "[cors]\nallowed_origins = ['https://a.example:8443']",
            &Overrides::default(),
            &env,
        )
        .expect("valid");
        assert_eq!(
            c.cors,
            Some(Cors::Origins(vec!["https://a.example:8443".into()]))
        );
        let c = Config::from_toml("", &Overrides::default(), &env).expect("valid");
        assert_eq!(c.cors, None);
        assert_eq!(c.limits.max_body_bytes, 32 << 20);
        assert_eq!(c.server.header_timeout, Duration::from_secs(30));
    }
}
