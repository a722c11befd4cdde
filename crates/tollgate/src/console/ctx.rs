//! What a console handler starts from: the request's session (or a redirect to the
//! sign-in page), its role, and for a POST the form with its CSRF token checked. And how
//! a handler fails: a page saying why, with the status the API would give.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::csrf::{self, Form};
use super::layout;
use super::session::{self, Role, Session};
use crate::error::ApiError;
use crate::http::AppState;
use crate::store::{Account, AccountId};

/// A signed-in request.
pub struct Ctx {
    pub state: AppState,
    pub session: Session,
    /// The account of an account holder (none for the operator).
    pub account: Option<Account>,
}

/// Why a console request did not get its page.
#[derive(Debug)]
pub enum Fail {
    /// No live session: to the sign-in page.
    SignIn,
    /// A POST without this session's CSRF token, or from another site.
    Forbidden,
    /// A page of the other role: as if it did not exist (404).
    WrongRole,
    /// What the API would have answered.
    Api(ApiError),
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Fail::Api(e)
    }
}

impl From<crate::store::StoreError> for Fail {
    fn from(e: crate::store::StoreError) -> Self {
        Fail::Api(e.into())
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::SignIn => Redirect::to("/console/sign-in").into_response(),
            Fail::WrongRole => error_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page for this session.",
            ),
            Fail::Forbidden => error_page(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The request did not carry this session's form token, or came from another site. Go back, reload the page and try again.",
            ),
            Fail::Api(e) => {
                let title = match e.status.as_u16() {
                    404 => "Not found",
                    400..=499 => "That did not work",
                    _ => "Something went wrong",
                };
                error_page(e.status, title, &e.message)
            }
        }
    }
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        main.narrow {
            h1 { (title) }
            p.notice.error role="alert" { (message) }
            p { a href="/console" { "Back to the console" } }
        }
    };
    let mut response = respond(layout::bare(title, body));
    *response.status_mut() = status;
    response
}

/// An HTML page, never cached, under a strict content security policy.
pub fn respond(markup: Markup) -> Response {
    let mut response = markup.into_string().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    protect(headers);
    response
}

/// The headers of every console response: no caching (pages may show a key once), no
/// framing, no inline script, no referrer to other sites (same-origin: with none at all,
/// Chromium sends `Origin: null` on the console's own forms).
pub fn protect(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

impl Ctx {
    /// Any signed-in request.
    pub async fn any(state: &AppState, headers: &HeaderMap) -> Result<Ctx, Fail> {
        let session = session::current(state, &state.console, headers)
            .await?
            .ok_or(Fail::SignIn)?;
        let account = match session.role {
            Role::Account(id) => Some(state.accounts.account(id).await?.ok_or(Fail::SignIn)?),
            Role::Operator => None,
        };
        Ok(Ctx {
            state: state.clone(),
            session,
            account,
        })
    }

    /// An account holder's request.
    pub async fn account(state: &AppState, headers: &HeaderMap) -> Result<Ctx, Fail> {
        let ctx = Ctx::any(state, headers).await?;
        if ctx.account.is_none() {
            return Err(Fail::WrongRole);
        }
        Ok(ctx)
    }

    /// The operator's request.
    pub async fn operator(state: &AppState, headers: &HeaderMap) -> Result<Ctx, Fail> {
        let ctx = Ctx::any(state, headers).await?;
        if ctx.account.is_some() {
            return Err(Fail::WrongRole);
        }
        Ok(ctx)
    }

    /// A signed-in POST: its form, once its CSRF token and origin are checked.
    pub async fn form(
        state: &AppState,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Ctx, Form), Fail> {
        let ctx = Ctx::any(state, headers).await?;
        if !csrf::same_site(headers) {
            return Err(Fail::Forbidden);
        }
        let form = Form::read(body).await?;
        if !csrf::token_matches(&ctx.session, &form) {
            return Err(Fail::Forbidden);
        }
        Ok((ctx, form))
    }

    /// Refuses an account holder's request (for the operator's forms).
    pub fn require_operator(&self) -> Result<(), Fail> {
        match self.account {
            Some(_) => Err(Fail::WrongRole),
            None => Ok(()),
        }
    }

    /// The account id of an account holder's request.
    pub fn account_id(&self) -> Result<AccountId, Fail> {
        self.account.as_ref().map(|a| a.id).ok_or(Fail::WrongRole)
    }

    /// The hidden field every form of this session carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name=(csrf::FIELD) value=(self.session.csrf); }
    }
}
