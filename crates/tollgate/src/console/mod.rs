//! The web console: pages for account holders and the operator, rendered by the server
//! from the same operations as the HTTP APIs (the handlers' `*_from` / `*_of` functions
//! in `crate::http`), its stylesheet and script embedded in the binary. Served at
//! `/console` (`/` leads there); signing in gives a server-side session (`session.rs`),
//! every change is a POST form with a CSRF token (`csrf.rs`).

mod assets;
mod chart;
mod csrf;
mod ctx;
pub mod db;
mod layout;
mod pages;
pub mod session;

use std::time::Duration;

use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::http::AppState;

pub use ctx::{Ctx, Fail};

/// The console's own parts.
pub struct Console {
    db: Result<db::Db, String>,
    /// A session's lifetime, in seconds.
    pub session_seconds: i64,
    /// Cookies are always `Secure` (the server is reached over TLS only).
    pub secure_cookie: bool,
}

impl Console {
    /// The console over the store's database.
    pub fn new(database_url: &str, session: Duration, secure_cookie: bool) -> Console {
        Console {
            db: db::Db::open(database_url).map_err(|e| e.to_string()),
            session_seconds: i64::try_from(session.as_secs()).unwrap_or(i64::MAX),
            secure_cookie,
        }
    }

    fn db(&self) -> Result<&db::Db, ApiError> {
        self.db.as_ref().map_err(ApiError::internal)
    }
}

/// The console's routes (merged into the application's router).
pub fn router() -> Router<AppState> {
    use pages::{accounts, credits, keys, models, overview, reference, requests, sign_in};
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(overview::home))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/assets/{name}", get(assets::serve))
        .route("/console/keys", get(keys::list).post(keys::create))
        .route("/console/keys/{id}", get(keys::edit).post(keys::update))
        .route(
            "/console/keys/{id}/delete",
            get(keys::confirm_delete).post(keys::delete),
        )
        .route("/console/credits", get(credits::page))
        .route("/console/requests", get(requests::list))
        .route("/console/requests/export", get(requests::export))
        .route("/console/requests/{request_id}", get(requests::detail))
        .route("/console/models", get(models::page))
        .route("/console/reference", get(reference::page))
        .route(
            "/console/accounts",
            get(accounts::list).post(accounts::create),
        )
        .route("/console/accounts/{id}", get(accounts::detail))
        .route("/console/accounts/{id}/grants", post(accounts::grant))
        .route(
            "/console/accounts/{id}/provisioning-keys",
            post(accounts::mint_key),
        )
        .route(
            "/console/provisioning-keys/{id}/revoke",
            post(accounts::revoke_key),
        )
}

/// Whether a path is the console's (its errors are pages, not the API's JSON).
pub fn owns(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}
