//! The operator's pages: accounts with their balance and 30-day spend, creating one,
//! granting credits with a note, minting and revoking provisioning keys. Each form calls
//! the operator API's own functions (`crate::http::admin`).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{Map, Value};

use crate::billing::Credits;
use crate::console::csrf::Form;
use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{notice, page, secret_once, usd, when, when_unix, Nav};
use crate::error::ApiError;
use crate::http::admin::{self, AccountView, GrantView};
use crate::http::AppState;
use crate::store::{KeyId, KeyKind};

fn object(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect()
}

/// The accounts page; the operator's home.
pub async fn accounts_page(
    ctx: &Ctx,
    error: Option<&str>,
    form: Option<&Form>,
) -> Result<Response, Fail> {
    let state = &ctx.state;
    let accounts = state.accounts.list_accounts().await?;
    let since = super::overview::last_days(30)
        .first()
        .cloned()
        .unwrap_or_default();
    let spent: HashMap<i64, i64> = state
        .console
        .db()?
        .account_costs(&since)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    let body = html! {
        @if let Some(error) = error { (notice("error", error)) }
        section.panel aria-labelledby="new-account" {
            h2 id="new-account" { "Create an account" }
            form.inline method="post" action="/console/accounts" {
                (ctx.csrf_field())
                div.field {
                    label for="account-name" { "Name" }
                    input id="account-name" name="name" type="text" required maxlength="255" placeholder="acme"
                        value=(form.map(|f| f.text("name")).unwrap_or(""));
                }
                button type="submit" { "Create account" }
            }
        }
        section.panel aria-labelledby="accounts-title" {
            h2 id="accounts-title" { "Accounts" small { (accounts.len()) " in total" } }
            div.table-wrap { table id="accounts" {
                thead { tr {
                    th scope="col" { "Account" } th scope="col" { "Created" } th.num scope="col" { "Balance" }
                    th.num scope="col" { "Spent, last 30 days" } th.num scope="col" { "Granted in total" }
                } }
                tbody {
                    @for a in &accounts {
                        tr {
                            td { a href={ "/console/accounts/" (a.id.0) } { (a.name) } span.sub { "id " (a.id.0) } }
                            td { (when_unix(Some(a.created_at))) }
                            td.num { (usd(&a.balance().to_string())) }
                            td.num { (usd(&Credits::from_nanos(spent.get(&a.id.0).copied().unwrap_or(0)).to_string())) }
                            td.num { (usd(&a.granted.to_string())) }
                        }
                    }
                }
            } }
        }
    };
    Ok(page(ctx, Nav::Accounts, "Accounts", body))
}

/// `GET /console/accounts`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    let ctx = Ctx::operator(&state, &headers).await?;
    accounts_page(&ctx, None, None).await
}

/// `POST /console/accounts` (`name`)
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, form) = Ctx::form(&state, &headers, body).await?;
    ctx.require_operator()?;
    match admin::create_account_from(&state, &object(&[("name", form.text("name"))])).await {
        Ok(account) => Ok(
            Redirect::to(&format!("/console/accounts/{}?done=created", account.id)).into_response(),
        ),
        Err(e) if e.status.is_client_error() => {
            let mut response = accounts_page(&ctx, Some(&e.message), Some(&form)).await?;
            *response.status_mut() = e.status;
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

async fn detail_page(
    ctx: &Ctx,
    id: &str,
    top: Option<Markup>,
    form: Option<&Form>,
) -> Result<Response, Fail> {
    let state = &ctx.state;
    let account = admin::account_of_path(state, id).await?;
    let view = AccountView::new(&account);
    let mut grants: Vec<GrantView> = state
        .accounts
        .grants(account.id)
        .await?
        .iter()
        .map(GrantView::new)
        .collect();
    grants.reverse();
    let keys = state
        .accounts
        .list_keys(account.id, KeyKind::Provisioning)
        .await?;
    let value = |name: &str| form.map(|f| f.text(name).to_string()).unwrap_or_default();
    let body = html! {
        p { a href="/console" { "← All accounts" } }
        @if let Some(top) = top { (top) }
        div.stats {
            div.stat { div.label { "Balance" } div.value data-balance=(view.balance) { (usd(&view.balance)) } }
            div.stat { div.label { "Granted in total" } div.value { (usd(&view.total_granted)) } }
            div.stat { div.label { "Spent in total" } div.value { (usd(&view.total_charged)) } }
        }
        div.grid2 {
            section.panel aria-labelledby="grant-title" {
                h2 id="grant-title" { "Grant credits" }
                form.stack method="post" action={ "/console/accounts/" (view.id) "/grants" } {
                    (ctx.csrf_field())
                    div.field {
                        label for="amount" { "Amount (USD)" }
                        input id="amount" name="amount" type="text" inputmode="decimal" required placeholder="50.00" value=(value("amount"));
                    }
                    div.field {
                        label for="note" { "Note" }
                        input id="note" name="note" type="text" maxlength="1000" placeholder="Invoice 2026-031" value=(value("note"));
                    }
                    div.actions { button type="submit" { "Grant credits" } }
                }
            }
            section.panel aria-labelledby="mint-title" {
                h2 id="mint-title" { "Mint a provisioning key" }
                p.muted { "The account holder signs in to this console, or calls /v1/account/*, with it." }
                form.stack method="post" action={ "/console/accounts/" (view.id) "/provisioning-keys" } {
                    (ctx.csrf_field())
                    div.field {
                        label for="key-name" { "Name" }
                        input id="key-name" name="name" type="text" maxlength="255" placeholder="provisioning" value=(value("name"));
                    }
                    div.actions { button type="submit" { "Mint key" } }
                }
            }
        }
        section.panel aria-labelledby="pkeys-title" {
            h2 id="pkeys-title" { "Provisioning keys" }
            @if keys.is_empty() { p.empty { "None: the account holder cannot sign in until you mint one." } }
            @else {
                div.table-wrap { table id="provisioning-keys" {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for k in &keys {
                            tr {
                                td { (k.name) } td.mono { (k.hint) }
                                td { (when_unix(Some(k.created_at))) } td { (when_unix(k.last_used_at)) }
                                td {
                                    form method="post" action={ "/console/provisioning-keys/" (k.id.0) "/revoke" } {
                                        (ctx.csrf_field())
                                        input type="hidden" name="account_id" value=(view.id);
                                        button.danger type="submit" data-confirm={ "Revoke the provisioning key “" (k.name) "”? It stops working at once." }
                                            aria-label={ "Revoke " (k.name) } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section.panel aria-labelledby="grants-title" {
            h2 id="grants-title" { "Credit grants" small { "newest first" } }
            @if grants.is_empty() { p.empty { "No grants yet." } }
            @else {
                div.table-wrap { table id="grants" {
                    thead { tr { th scope="col" { "Date" } th.num scope="col" { "Amount" } th scope="col" { "Note" } } }
                    tbody {
                        @for g in &grants {
                            tr { td { (when(Some(&g.created_at))) } td.num { (usd(&g.amount)) } td { (g.note.clone().unwrap_or_default()) } }
                        }
                    }
                } }
            }
        }
    };
    Ok(page(
        ctx,
        Nav::Accounts,
        &format!("Account “{}”", view.name),
        body,
    ))
}

#[derive(serde::Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /console/accounts/{id}`
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, Fail> {
    let ctx = Ctx::operator(&state, &headers).await?;
    let top = match done.done.as_deref() {
        Some("created") => Some(notice(
            "ok",
            "Account created. Grant it credits and mint a provisioning key for its holder.",
        )),
        Some("granted") => Some(notice("ok", "Credits granted.")),
        Some("revoked") => Some(notice(
            "ok",
            "The provisioning key was revoked; its sessions ended.",
        )),
        _ => None,
    };
    detail_page(&ctx, &id, top, None).await
}

/// A failed form of the account page: the page again, with the error.
async fn again(ctx: &Ctx, id: &str, e: ApiError, form: &Form) -> Result<Response, Fail> {
    if !e.status.is_client_error() || e.status == StatusCode::NOT_FOUND {
        return Err(e.into());
    }
    let mut response = detail_page(ctx, id, Some(notice("error", &e.message)), Some(form)).await?;
    *response.status_mut() = e.status;
    Ok(response)
}

/// `POST /console/accounts/{id}/grants` (`amount`, `note`)
pub async fn grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, form) = Ctx::form(&state, &headers, body).await?;
    ctx.require_operator()?;
    let account = admin::account_of_path(&state, &id).await?;
    let map = object(&[("amount", form.text("amount")), ("note", form.text("note"))]);
    match admin::create_grant_from(&state, &account, &map, b"").await {
        Ok(_) => Ok(
            Redirect::to(&format!("/console/accounts/{}?done=granted", account.id.0))
                .into_response(),
        ),
        Err(e) => again(&ctx, &id, e, &form).await,
    }
}

/// `POST /console/accounts/{id}/provisioning-keys` (`name`): the answer shows the secret once.
pub async fn mint_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, form) = Ctx::form(&state, &headers, body).await?;
    ctx.require_operator()?;
    let account = admin::account_of_path(&state, &id).await?;
    let name = match form.text("name") {
        "" => Ok("provisioning".to_string()),
        name => crate::http::account::parse_name(&Value::from(name)),
    };
    let minted = match name {
        Ok(name) => admin::create_provisioning_key_named(&state, &account, &name).await,
        Err(e) => Err(e),
    };
    match minted {
        Ok(key) => {
            let top = secret_once(&format!("Provisioning key “{}” minted", key.name), &key.key);
            detail_page(&ctx, &id, Some(top), None).await
        }
        Err(e) => again(&ctx, &id, e, &form).await,
    }
}

/// `POST /console/provisioning-keys/{id}/revoke` (`account_id`, to return to)
pub async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, form) = Ctx::form(&state, &headers, body).await?;
    ctx.require_operator()?;
    let id = id.parse::<i64>().map(KeyId).map_err(|_| {
        ApiError::invalid_field(
            "id",
            format!(
                "The key id must be an integer (got '{}').",
                crate::error::quoted(&id)
            ),
        )
    })?;
    admin::revoke_provisioning_key_by_id(&state, id).await?;
    let back = form
        .text("account_id")
        .parse::<i64>()
        .map_or("/console".to_string(), |a| {
            format!("/console/accounts/{a}?done=revoked")
        });
    Ok(Redirect::to(&back).into_response())
}
