//! The account holder's credit transactions: the balance and every grant (with its note,
//! what is left of it and its expiry), as `GET /v1/account/credits` gives them.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;
use serde_json::Value;

use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{self, usd, when, Nav};
use crate::http::AppState;

async fn render(ctx: &Ctx) -> Result<Response, Fail> {
    let state = &ctx.state;
    let account = ctx.account_id()?;
    let settled = crate::http::credits::settled(state, account).await?;
    let grants = state.accounts.credit_grants(account).await?;
    let grants: Vec<Value> = grants
        .iter()
        .map(crate::http::credits::grant_json)
        .collect();
    let text = |g: &Value, name: &str| g.get(name).and_then(Value::as_str).map(str::to_string);
    let body = html! {
        div.stats {
            div.stat { div.label { "Balance" } div.value { (usd(&settled.balance().to_string())) } }
            div.stat { div.label { "Granted in total" } div.value { (usd(&settled.granted.to_string())) } }
            div.stat { div.label { "Spent in total" } div.value { (usd(&settled.charged.to_string())) } }
            div.stat { div.label { "Expired unused" } div.value { (usd(&settled.expired.to_string())) } }
        }
        section.panel aria-labelledby="grants-title" {
            h2 id="grants-title" { "Credit transactions" small { "newest first" } }
            @if grants.is_empty() {
                p.empty { "No credits granted yet. Your operator grants credits to this account." }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Date" } th.num scope="col" { "Amount" } th.num scope="col" { "Remaining" }
                        th scope="col" { "Expires" } th scope="col" { "Status" } th scope="col" { "Note" }
                    } }
                    tbody {
                        @for g in &grants {
                            tr {
                                td { (when(text(g, "created_at").as_deref())) }
                                td.num { (usd(&text(g, "amount").unwrap_or_default())) }
                                td.num { (usd(&text(g, "remaining").unwrap_or_default())) }
                                td { (when(text(g, "expires_at").as_deref())) }
                                td { span.badge.plain { (text(g, "status").unwrap_or_default()) } }
                                td { @if let Some(note) = text(g, "note") { (note) } @else { span.muted { "—" } } }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page(ctx, Nav::Credits, "Credits", body))
}

/// `GET /console/credits`
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    let ctx = Ctx::account(&state, &headers).await?;
    render(&ctx).await
}
