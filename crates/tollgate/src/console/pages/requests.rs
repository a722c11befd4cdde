//! The account holder's request log: a page at a time (newest first), filtered by key,
//! model, status and date, each request's details, and the CSV export. The query string
//! is the one of `GET /v1/account/requests`, read by that API's own parser.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use maud::{html, Markup};

use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{notice, page, usd, when, when_unix, Nav};
use crate::error::ApiError;
use crate::http::requests::{self as api, RequestPage};
use crate::http::AppState;

/// The filters a person can set (`cursor` is the pager's).
const FILTERS: &[&str] = &["key_id", "model", "status", "from", "to"];

/// The query without empty fields (an empty filter means "any").
fn cleaned(query: HashMap<String, String>) -> HashMap<String, String> {
    query
        .into_iter()
        .filter(|(k, v)| !v.trim().is_empty() && (FILTERS.contains(&k.as_str()) || k == "cursor"))
        .map(|(k, v)| (k, v.trim().to_string()))
        .collect()
}

fn query_string(query: &HashMap<String, String>, extra: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for name in FILTERS {
        if let Some(v) = query.get(*name) {
            s.append_pair(name, v);
        }
    }
    for (k, v) in extra {
        s.append_pair(k, v);
    }
    s.finish()
}

fn filters(ctx: &Ctx, query: &HashMap<String, String>, keys: &[(i64, String)]) -> Markup {
    let get = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    html! {
        form.inline.filters method="get" action="/console/requests" aria-label="Filter requests" {
            div.field {
                label for="f-key" { "Key" }
                select id="f-key" name="key_id" {
                    option value="" { "Any key" }
                    @for (id, name) in keys {
                        option value=(id) selected[get("key_id") == id.to_string()] { (name) }
                    }
                }
            }
            div.field {
                label for="f-model" { "Model" }
                select id="f-model" name="model" {
                    option value="" { "Any model" }
                    @for m in &ctx.state.config.models {
                        option value=(m.id) selected[get("model") == m.id] { (m.id) }
                    }
                }
            }
            div.field {
                label for="f-status" { "Status" }
                select id="f-status" name="status" {
                    @for (v, label) in [("", "Any status"), ("success", "Succeeded"), ("error", "Failed")] {
                        option value=(v) selected[get("status") == v] { (label) }
                    }
                }
            }
            div.field { label for="f-from" { "From" } input id="f-from" type="date" name="from" value=(get("from")); }
            div.field { label for="f-to" { "To" } input id="f-to" type="date" name="to" value=(get("to")); }
            div.actions {
                button type="submit" { "Apply" }
                a.button.secondary href="/console/requests" { "Reset" }
            }
        }
    }
}

fn table(page: &RequestPage) -> Markup {
    html! {
        @if page.requests.is_empty() {
            p.empty { "No requests match." }
        } @else {
            div.table-wrap { table id="requests" {
                thead { tr {
                    th scope="col" { "Time" } th scope="col" { "Key" } th scope="col" { "Model" }
                    th scope="col" { "Provider" } th.num scope="col" { "Status" } th.num scope="col" { "Tokens in / out" }
                    th.num scope="col" { "Cost" } th.num scope="col" { "Latency" } th scope="col" { span.visually-hidden { "Details" } }
                } }
                tbody {
                    @for r in &page.requests {
                        tr data-request-id=(r.request_id) {
                            td { (when(Some(&r.created_at))) }
                            td { (r.key_name.clone().unwrap_or_else(|| format!("key {}", r.key_id))) }
                            td { (r.model) @if let Some(asked) = &r.requested_model { span.sub { "asked for " (asked) } } }
                            td { (r.provider.clone().unwrap_or_default()) }
                            td.num { @if r.status < 400 { span.badge.on { (r.status) } } @else { span.badge.off { (r.status) } } }
                            td.num { (r.input_tokens) " / " (r.output_tokens) @if r.estimated { span.sub { "estimated" } } }
                            td.num { (usd(&r.cost)) }
                            td.num { (r.latency_ms) " ms" }
                            td { a href={ "/console/requests/" (r.request_id) } aria-label={ "Details of request " (r.request_id) } { "Details" } }
                        }
                    }
                }
            } }
        }
    }
}

/// `GET /console/requests`
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    let account = ctx.account_id()?;
    state.writer.caught_up().await.map_err(ApiError::from)?;
    let query = cleaned(query);
    let keys: Vec<(i64, String)> = state
        .accounts
        .list_keys(account, crate::store::KeyKind::Inference)
        .await?
        .into_iter()
        .map(|k| (k.id.0, k.name))
        .collect();
    let (result, error) = match api::page(&state, account, &query).await {
        Ok(page) => (Some(page), None),
        Err(e) if e.status.is_client_error() => (None, Some(e.message)),
        Err(e) => return Err(e.into()),
    };
    let body = html! {
        (filters(&ctx, &query, &keys))
        @if let Some(error) = &error { (notice("error", error)) }
        section.panel aria-labelledby="log-title" {
            div.panel-head {
                h2 id="log-title" { "Requests" small { "newest first" } }
                a.button.secondary href={ "/console/requests/export?" (query_string(&query, &[])) } download="requests.csv" { "Export CSV" }
            }
            @if let Some(page) = &result { (table(page)) }
            nav.pager aria-label="Pages" {
                @if query.contains_key("cursor") {
                    a href={ "/console/requests?" (query_string(&query, &[])) } { "← Newest" }
                } @else { span {} }
                @if let Some(next) = result.as_ref().and_then(|p| p.next_cursor.as_deref()) {
                    a href={ "/console/requests?" (query_string(&query, &[("cursor", next)])) } { "Older →" }
                }
            }
        }
    };
    Ok(page(&ctx, Nav::Requests, "Requests", body))
}

/// `GET /console/requests/export`: the CSV of `GET /v1/account/requests?format=csv`.
pub async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    state.writer.caught_up().await.map_err(ApiError::from)?;
    let mut query = cleaned(query);
    query.remove("cursor");
    query.insert("format".into(), "csv".into());
    let mut response = api::respond(&state, ctx.account_id()?, &query, &HeaderMap::new()).await?;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /console/requests/{request_id}`: one request of this account (404 for any other).
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    let account = ctx.account_id()?;
    let not_found = || {
        ApiError::not_found(
            "request_not_found",
            "No request with that id in this account.",
        )
    };
    let record = state
        .store
        .usage_record(&request_id)
        .await?
        .filter(|r| r.account_id == account)
        .ok_or_else(not_found)?;
    let key = state.accounts.get_key(account, record.key_id).await?;
    let d = &record.detail;
    let body = html! {
        p { a href="/console/requests" { "← All requests" } }
        section.panel {
            dl.details {
                dt { "Request id" } dd.mono { (record.request_id) }
                dt { "Time" } dd { (when_unix(Some(record.created_at))) }
                dt { "Key" } dd { @match &key { Some(k) => a href={ "/console/keys/" (k.id.0) } { (k.name) }, None => { "key " (record.key_id.0) " (deleted)" } } }
                dt { "Endpoint" } dd.mono { (record.endpoint) }
                dt { "Model (served)" } dd { (record.model) }
                dt { "Model asked for" } dd { (d.requested_model.clone().unwrap_or_else(|| record.model.clone())) }
                dt { "Provider" } dd { (d.provider.clone().unwrap_or_default()) }
                dt { "Status" } dd { (record.status) }
                dt { "Input tokens" } dd { (record.input_tokens) }
                dt { "Cached input tokens" } dd { (record.cached_input_tokens) }
                dt { "Output tokens" } dd { (record.output_tokens) @if d.estimated { " (counted by the gateway: the provider reported none)" } }
                dt { "Cost" } dd { (usd(&record.cost.to_string())) }
                dt { "Latency" } dd { (record.latency_ms) " ms" }
                dt { "Upstream attempts" } dd { (d.attempts) }
            }
        }
    };
    Ok(page(&ctx, Nav::Requests, "Request details", body))
}
