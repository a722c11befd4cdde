//! Signing in and out.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::console::csrf::{self, Form};
use crate::console::ctx::{respond, Ctx, Fail};
use crate::console::layout::{bare, notice};
use crate::console::session::{self, SignInError};
use crate::http::AppState;

fn page(error: Option<&str>) -> Response {
    respond(bare(
        "Sign in",
        html! {
            main.signin id="main" {
                h1 { "Sign in to the console" }
                p { "Use a " strong { "provisioning key" } " (" code { "tg-prov-…" } ") to manage your account's keys and spending, or an "
                    strong { "operator key" } " (" code { "tg-op-…" } ") to manage accounts." }
                @if let Some(error) = error { (notice("error", error)) }
                form.stack method="post" action="/console/sign-in" {
                    div.field {
                        label for="key" { "Key" }
                        input id="key" name="key" type="password" autocomplete="off" required autofocus
                            aria-describedby="key-hint";
                        span.hint id="key-hint" { "The key is checked once and never stored in your browser; you get a session that ends when you sign out." }
                    }
                    button type="submit" { "Sign in" }
                }
                p.muted {
                    "First start? Tollgate wrote a provisioning key for the " code { "default" } " account to "
                    code { "provisioning-key.txt" } " in its data folder. Operators create keys with "
                    code { "tollgate operator-keys create" } "."
                }
            }
        },
    ))
}

/// `GET /console/sign-in`
pub async fn form(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    if session::current(&state, &state.console, &headers)
        .await?
        .is_some()
    {
        return Ok(Redirect::to("/console").into_response());
    }
    Ok(page(None))
}

/// `POST /console/sign-in` (`key`)
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Fail> {
    if !csrf::same_site(&headers) {
        return Err(Fail::Forbidden);
    }
    let form = Form::read(body).await?;
    match session::sign_in(&state, &state.console, form.text("key")).await {
        Ok((_, token)) => {
            let secure = session::over_tls(&state.console, &headers);
            let mut response = Redirect::to("/console").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(&token, state.console.session_seconds, secure),
            );
            crate::console::ctx::protect(response.headers_mut());
            Ok(response)
        }
        Err(SignInError::Refused(why)) => {
            let mut response = page(Some(&why));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok(response)
        }
        Err(SignInError::Failed(e)) => Err(e.into()),
    }
}

/// `POST /console/sign-out`
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, _) = Ctx::form(&state, &headers, body).await?;
    session::sign_out(&state.console, &ctx.session).await?;
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(session::over_tls(&state.console, &headers)),
    );
    Ok(response)
}
