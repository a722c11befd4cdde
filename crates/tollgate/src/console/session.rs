//! Console sessions: signing in with a provisioning key (an account holder) or an operator
//! key (the operator) opens one. The browser holds a random token in an HttpOnly,
//! SameSite=Strict cookie (Secure behind TLS); the database holds only the token's SHA-256.
//! The key itself is checked once, through the same authenticator as the API, and never
//! kept: neither in the browser nor in the session. A session ends at sign-out, at its
//! expiry, or when the key it was opened with is revoked, deleted, disabled or expires.

use axum::http::{header, HeaderMap, HeaderValue};
use rand::RngCore;

use super::db::SessionRow;
use super::Console;
use crate::auth::{hash_key, AuthFailure, OPERATOR_PREFIX};
use crate::error::ApiError;
use crate::http::AppState;
use crate::store::AccountId;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";

/// Who a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An account holder, signed in with a provisioning key of this account.
    Account(AccountId),
    /// The operator, signed in with an operator key.
    Operator,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub token_hash: String,
    pub role: Role,
    /// The token every form of this session posts back (see `csrf.rs`).
    pub csrf: String,
    pub expires_at: i64,
}

impl Session {
    fn from_row(token_hash: String, row: SessionRow) -> Option<Session> {
        let role = match (row.account_id, row.operator_key_id) {
            (Some(account), None) => Role::Account(AccountId(account)),
            (None, Some(_)) => Role::Operator,
            _ => return None,
        };
        Some(Session {
            token_hash,
            role,
            csrf: row.csrf_token,
            expires_at: row.expires_at,
        })
    }

    /// The account of an account holder's session.
    pub fn account(&self) -> Option<AccountId> {
        match self.role {
            Role::Account(id) => Some(id),
            Role::Operator => None,
        }
    }
}

/// 256 random bits, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The session token the request's cookie carries, if any.
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The request's live session, if it has one.
pub async fn current(
    state: &AppState,
    console: &Console,
    headers: &HeaderMap,
) -> Result<Option<Session>, ApiError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let hash = hash_key(token);
    let row = console
        .db()?
        .session(&hash, state.config.clock.now())
        .await
        .map_err(ApiError::internal)?;
    Ok(row.and_then(|row| Session::from_row(hash, row)))
}

/// Why signing in failed, in words for the sign-in page.
pub enum SignInError {
    Refused(String),
    Failed(ApiError),
}

/// Checks `key` with the API's own authenticator and opens a session for it; returns the
/// session and the cookie's token.
pub async fn sign_in(
    state: &AppState,
    console: &Console,
    key: &str,
) -> Result<(Session, String), SignInError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(SignInError::Refused(
            "Paste a provisioning key (tg-prov-…) or an operator key (tg-op-…).".into(),
        ));
    }
    let mut headers = HeaderMap::new();
    let bearer = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
        SignInError::Refused("That is not a key: keys are letters, digits and dashes.".into())
    })?;
    headers.insert(header::AUTHORIZATION, bearer);
    let refused = |e: AuthFailure| match e {
        AuthFailure::Refused(why) => SignInError::Refused(why.to_string()),
        AuthFailure::Store(e) => SignInError::Failed(e.into()),
    };
    let now = state.config.clock.now();
    let mut row = SessionRow {
        account_id: None,
        key_id: None,
        operator_key_id: None,
        csrf_token: random_token(),
        created_at: now,
        expires_at: now.saturating_add(console.session_seconds),
    };
    if key.starts_with(OPERATOR_PREFIX) {
        let operator = state.auth.operator(&headers).await.map_err(refused)?;
        row.operator_key_id = Some(operator.id);
    } else {
        let owner = state.auth.provisioning(&headers).await.map_err(refused)?;
        row.account_id = Some(owner.account_id.0);
        row.key_id = Some(owner.id.0);
    }
    let db = console.db().map_err(SignInError::Failed)?;
    // Sign-ins are rare: a good time to forget the sessions that ended.
    if let Err(e) = db.delete_expired(now).await {
        tracing::warn!(error = %e, "deleting expired console sessions failed");
    }
    let token = random_token();
    let hash = hash_key(&token);
    db.create_session(&row, &hash)
        .await
        .map_err(|e| SignInError::Failed(ApiError::internal(e)))?;
    let session = Session::from_row(hash, row)
        .ok_or_else(|| SignInError::Failed(ApiError::internal("a session without a role")))?;
    Ok((session, token))
}

/// Ends a session.
pub async fn sign_out(console: &Console, session: &Session) -> Result<(), ApiError> {
    console
        .db()?
        .delete_session(&session.token_hash)
        .await
        .map_err(ApiError::internal)
}

/// Whether the browser reached us over TLS: `[console] secure_cookie`, or the front
/// door's `X-Forwarded-Proto: https`. (A forged header can only make a cookie stricter.)
pub fn over_tls(console: &Console, headers: &HeaderMap) -> bool {
    console.secure_cookie
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` of a new session.
pub fn set_cookie(token: &str, max_age: i64, secure: bool) -> HeaderValue {
    cookie(token, max_age, secure)
}

/// The `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    cookie("", 0, secure)
}

fn cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("tollgate_session=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tollgate_session=abc ; b=2"),
        );
        assert_eq!(cookie_token(&h), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("tollgate_session="),
        );
        assert_eq!(cookie_token(&h), None);
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let c = set_cookie("t", 60, true);
        assert_eq!(
            c.to_str().expect("ascii"),
            "tollgate_session=t; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!clear_cookie(false)
            .to_str()
            .expect("ascii")
            .contains("Secure"));
    }
}
