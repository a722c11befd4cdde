//! The account holder's keys: the list, creating one (its secret shown once), editing
//! every field `PATCH /v1/account/keys/{id}` can change, enabling and disabling, deleting
//! after a confirmation. Each form is turned into the JSON body of the API call and handed
//! to the API's own functions, so the checks and messages are the API's.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::key_form::{json_body, key_fields, members, Member};
use crate::console::csrf::Form;
use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{notice, page, secret_once, usd, when, Nav};
use crate::http::account::{self as api, KeyView};
use crate::http::AppState;
use crate::store::KeyId;

fn limit_text(k: &KeyView) -> String {
    match &k.credit_limit {
        None => "No limit".into(),
        Some(limit) => {
            let per = k.limit_reset.map(|r| format!(" {r}")).unwrap_or_default();
            let shown = limit
                .get()
                .parse::<crate::billing::Credits>()
                .map_or(limit.get().to_string(), |c| c.to_string());
            format!("{}{per}", usd(&shown))
        }
    }
}

fn status(k: &KeyView) -> Markup {
    let expired = k
        .expires_at
        .as_deref()
        .and_then(crate::parse_rfc3339)
        .is_some_and(|t| t <= crate::now());
    html! {
        @if expired { span.badge.off { "Expired" } }
        @else if k.is_enabled { span.badge.on { "Enabled" } }
        @else { span.badge.off { "Disabled" } }
    }
}

fn key_table(ctx: &Ctx, keys: &[KeyView]) -> Markup {
    html! {
        @if keys.is_empty() {
            p.empty { "No keys yet. Create one above to call the model endpoints." }
        } @else {
            div.table-wrap { table id="keys" {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Status" } th scope="col" { "Created" }
                    th scope="col" { "Last used" } th.num scope="col" { "Usage" } th.num scope="col" { "Limit" }
                    th.num scope="col" { "Remaining" } th scope="col" { "Expires" } th.num scope="col" { "Rate limit" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @for k in keys {
                        tr data-key-id=(k.id) {
                            td { a href={ "/console/keys/" (k.id) } { (k.name) } span.sub.mono { (k.hint) } }
                            td { (status(k)) }
                            td { (when(Some(&k.created_at))) }
                            td { (when(k.last_used_at.as_deref())) }
                            td.num { (usd(&k.usage)) }
                            td.num { (limit_text(k)) }
                            td.num { @if let Some(r) = &k.limit_remaining { (usd(r)) } @else { span.muted { "—" } } }
                            td { (when(k.expires_at.as_deref())) }
                            td.num { @if let Some(r) = k.rate_limit_rpm { (r) " /min" } @else { span.muted { "—" } } }
                            td { div.actions {
                                a.button.secondary href={ "/console/keys/" (k.id) } aria-label={ "Edit " (k.name) } { "Edit" }
                                form method="post" action={ "/console/keys/" (k.id) } {
                                    (ctx.csrf_field())
                                    input type="hidden" name="toggle" value=(if k.is_enabled { "disable" } else { "enable" });
                                    button.secondary type="submit" aria-label={ (if k.is_enabled { "Disable " } else { "Enable " }) (k.name) } {
                                        (if k.is_enabled { "Disable" } else { "Enable" })
                                    }
                                }
                                a.button.secondary href={ "/console/keys/" (k.id) "/delete" } aria-label={ "Delete " (k.name) } { "Delete" }
                            } }
                        }
                    }
                }
            } }
        }
    }
}

async fn list_page(
    ctx: &Ctx,
    top: Option<Markup>,
    form: Option<&Form>,
    status: StatusCode,
) -> Result<Response, Fail> {
    let account = ctx.account_id()?;
    let keys = api::key_views(&ctx.state, account).await?;
    let body = html! {
        @if let Some(top) = top { (top) }
        section.panel aria-labelledby="create-title" {
            h2 id="create-title" { "Create a key" }
            form.stack method="post" action="/console/keys" {
                (ctx.csrf_field())
                (key_fields(ctx, None, form))
                div.actions { button type="submit" { "Create key" } }
            }
        }
        section.panel aria-labelledby="list-title" {
            h2 id="list-title" { "Keys" small { (keys.len()) " in this account" } }
            (key_table(ctx, &keys))
        }
    };
    let mut response = page(ctx, Nav::Keys, "Keys", body);
    *response.status_mut() = status;
    Ok(response)
}

#[derive(serde::Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /console/keys`
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(done): Query<Done>,
) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    let top = match done.done.as_deref() {
        Some("deleted") => Some(notice(
            "ok",
            "The key was deleted. It no longer works anywhere.",
        )),
        Some("saved") => Some(notice("ok", "Saved.")),
        _ => None,
    };
    list_page(&ctx, top, None, StatusCode::OK).await
}

/// `POST /console/keys`: creates a key; the answer is the only one that shows its secret.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, form) = Ctx::form(&state, &headers, body).await?;
    let account = ctx.account_id()?;
    let created = match json_body(members(&form, false)) {
        Ok((map, bytes)) => api::create_key_from(&state, account, &map, &bytes).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(view) => {
            let secret = view.key.clone().unwrap_or_default();
            let top = html! {
                (secret_once(&format!("Key “{}” created", view.name), &secret))
            };
            list_page(&ctx, Some(top), None, StatusCode::OK).await
        }
        Err(e) if e.status.is_client_error() => {
            list_page(
                &ctx,
                Some(notice("error", &e.message)),
                Some(&form),
                e.status,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

fn edit_page(ctx: &Ctx, key: &KeyView, form: Option<&Form>, error: Option<&str>) -> Response {
    let body = html! {
        p { a href="/console/keys" { "← All keys" } }
        @if let Some(error) = error { (notice("error", error)) }
        div.stats {
            div.stat { div.label { "Usage" } div.value { (usd(&key.usage)) } }
            div.stat { div.label { "Remaining" } div.value { @if let Some(r) = &key.limit_remaining { (usd(r)) } @else { "No limit" } } }
            div.stat { div.label { "Today / this week / this month" } div.value.small { (usd(&key.usage_daily)) " / " (usd(&key.usage_weekly)) " / " (usd(&key.usage_monthly)) } }
        }
        section.panel aria-labelledby="edit-title" {
            h2 id="edit-title" { "Settings" small.mono { (key.hint) } }
            form.stack method="post" action={ "/console/keys/" (key.id) } {
                (ctx.csrf_field())
                label.check {
                    input type="checkbox" name="is_enabled" value="on"
                        checked[form.map_or(key.is_enabled, |f| f.checked("is_enabled"))];
                    "Enabled"
                }
                (key_fields(ctx, Some(key), form))
                div.actions {
                    button type="submit" { "Save changes" }
                    a.button.secondary href="/console/keys" { "Cancel" }
                }
            }
        }
        section.panel {
            h2 { "Details" }
            dl.details {
                dt { "Created" } dd { (when(Some(&key.created_at))) }
                dt { "Updated" } dd { (when(Some(&key.updated_at))) }
                dt { "Last used" } dd { (when(key.last_used_at.as_deref())) }
                dt { "Limit resets at" } dd { (when(key.limit_resets_at.as_deref())) }
                dt { "Requests of this key" } dd { a href={ "/console/requests?key_id=" (key.id) } { "Request log" } }
            }
        }
    };
    page(ctx, Nav::Keys, &format!("Key “{}”", key.name), body)
}

fn key_id(text: &str) -> Result<KeyId, Fail> {
    Ok(api::parse_key_id(text)?)
}

/// `GET /console/keys/{id}`
pub async fn edit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    let key = api::key_view(&state, ctx.account_id()?, key_id(&id)?).await?;
    Ok(edit_page(&ctx, &key, None, None))
}

/// `POST /console/keys/{id}`: the whole edit form, or `toggle` (enable / disable).
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, form) = Ctx::form(&state, &headers, body).await?;
    let account = ctx.account_id()?;
    let id = key_id(&id)?;
    let members = match form.get("toggle") {
        Some(toggle) => vec![("is_enabled", Member::Value((toggle == "enable").into()))],
        None => members(&form, true),
    };
    let updated = match json_body(members) {
        Ok((map, bytes)) => api::update_key_from(&state, account, id, &map, &bytes).await,
        Err(e) => Err(e),
    };
    match updated {
        Ok(_) => Ok(Redirect::to("/console/keys?done=saved").into_response()),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            let key = api::key_view(&state, account, id).await?;
            let mut response = edit_page(&ctx, &key, Some(&form), Some(&e.message));
            *response.status_mut() = e.status;
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /console/keys/{id}/delete`: asks first.
pub async fn confirm_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    let key = api::key_view(&state, ctx.account_id()?, key_id(&id)?).await?;
    let body = html! {
        section.panel {
            p { "Delete the key " strong { (key.name) } " (" code { (key.hint) } ")? It stops working at once, everywhere, and cannot be restored. Its usage stays in the request log." }
            form.actions method="post" action={ "/console/keys/" (key.id) "/delete" } {
                (ctx.csrf_field())
                button.danger type="submit" { "Delete key" }
                a.button.secondary href="/console/keys" { "Cancel" }
            }
        }
    };
    Ok(page(&ctx, Nav::Keys, "Delete key", body))
}

/// `POST /console/keys/{id}/delete`
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    let (ctx, _) = Ctx::form(&state, &headers, body).await?;
    api::delete_key_of(&state, ctx.account_id()?, key_id(&id)?).await?;
    Ok(Redirect::to("/console/keys?done=deleted").into_response())
}
