//! The `[server]` and `[cors]` sections: how long a client connection may take to send a
//! request, and which browser origins may call the gateway.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServer {
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCors {
    #[serde(default)]
    allowed_origins: Vec<String>,
}

/// Timeouts of client connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time to send a whole request head, from the connection's start or the end of its
    /// previous answer (so also how long an idle keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Longest pause between two chunks of a request body.
    pub body_timeout: Duration,
}

/// Default of both timeouts.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn server(file: FileServer, origin: &str) -> Result<ServerLimits, ConfigError> {
    let ms = |value: Option<u64>, key: &str| match value {
        Some(0) => Err(ConfigError::at(origin, key, "must be above 0".into())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(DEFAULT_TIMEOUT),
    };
    Ok(ServerLimits {
        header_timeout: ms(file.header_timeout_ms, "server.header_timeout_ms")?,
        body_timeout: ms(file.body_timeout_ms, "server.body_timeout_ms")?,
    })
}

/// The browser origins allowed to call the gateway (`None`: CORS is off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// Any origin (`["*"]`).
    Any,
    /// These origins, as browsers send them (`https://app.example.com`).
    Origins(Vec<String>),
}

pub(super) fn cors(file: FileCors, origin: &str) -> Result<Option<Cors>, ConfigError> {
    let key = "cors.allowed_origins";
    if file.allowed_origins.is_empty() {
        return Ok(None);
    }
    if file.allowed_origins.iter().any(|o| o == "*") {
        if file.allowed_origins.len() > 1 {
            return Err(ConfigError::at(
                origin,
                key,
                "\"*\" allows every origin; give it alone".into(),
            ));
        }
        return Ok(Some(Cors::Any));
    }
    for allowed in &file.allowed_origins {
        let valid = allowed.parse::<axum::http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.path() == "/"
                && !allowed.ends_with('/')
        });
        if !valid {
            return Err(ConfigError::at(
                origin,
                key,
                format!("'{allowed}' is not an origin such as https://app.example.com (scheme and host, optional port, no path)"),
            ));
        }
    }
    Ok(Some(Cors::Origins(file.allowed_origins)))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConsole {
    session_hours: Option<u64>,
    secure_cookie: Option<bool>,
}

/// The `[console]` section: the web console's sessions.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleSettings {
    /// How long a console session lasts after sign-in.
    pub session: Duration,
    /// Session cookies are always `Secure` (else only behind `X-Forwarded-Proto: https`).
    pub secure_cookie: bool,
}

/// Most hours a session may last (30 days).
const MAX_SESSION_HOURS: u64 = 720;

pub(super) fn console(file: FileConsole, origin: &str) -> Result<ConsoleSettings, ConfigError> {
    let hours = match file.session_hours {
        None => 12,
        Some(h) if (1..=MAX_SESSION_HOURS).contains(&h) => h,
        Some(h) => {
            return Err(ConfigError::at(
                origin,
                "console.session_hours",
                format!("must be 1 to {MAX_SESSION_HOURS} hours (got {h})"),
            ))
        }
    };
    Ok(ConsoleSettings {
        session: Duration::from_secs(hours * 3600),
        secure_cookie: file.secure_cookie.unwrap_or(false),
    })
}
