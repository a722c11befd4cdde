//! The account holder's overview: balance, 30-day spend by day and model, top models and
//! usage per key. The operator's home is the accounts page.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup};

use crate::accounts::Totals;
use crate::billing::Credits;
use crate::console::chart::{self, Spend};
use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{page, usd, Nav};
use crate::error::ApiError;
use crate::http::AppState;

/// Days the overview covers.
const DAYS: u32 = 30;
/// Rows of the top models and usage-per-key tables.
const TOP: usize = 20;

/// `GET /console`
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    let ctx = Ctx::any(&state, &headers).await?;
    match ctx.account_id() {
        Ok(account) => overview(&ctx, account).await,
        Err(_) => super::accounts::accounts_page(&ctx, None, None).await,
    }
}

/// The last `days` days (today included), oldest first, as YYYY-MM-DD.
pub fn last_days(days: u32) -> Vec<String> {
    let today = time::OffsetDateTime::now_utc().date();
    (0..i64::from(days))
        .rev()
        .map(|back| (today - time::Duration::days(back)).to_string())
        .collect()
}

/// The daily spend by model of an account over `days` (from the daily roll-up).
pub async fn spend(
    state: &AppState,
    account: crate::store::AccountId,
    days: u32,
) -> Result<Spend, ApiError> {
    let days = last_days(days);
    let since = days.first().cloned().unwrap_or_default();
    let rows = state
        .console
        .db()?
        .day_model_costs(account.0, &since)
        .await
        .map_err(ApiError::internal)?;
    let costs: BTreeMap<(String, String), i64> = rows
        .into_iter()
        .map(|r| ((r.day, r.model), r.cost))
        .collect();
    Ok(Spend { days, costs })
}

fn share(part: Credits, whole: Credits) -> f64 {
    if whole.nanos() <= 0 {
        0.0
    } else {
        (part.nanos() as f64 / whole.nanos() as f64 * 100.0).clamp(0.0, 100.0)
    }
}

fn meter(part: Credits, whole: Credits) -> Markup {
    // Widths are set by a class per 5 %: the content security policy allows no inline style.
    let pct = (share(part, whole) / 5.0).round() as u32 * 5;
    html! { div.meter aria-hidden="true" { span class={ "w" (pct) } {} } }
}

fn totals_cells(t: &Totals) -> Markup {
    html! {
        td.num { (t.requests) }
        td.num { (t.input_tokens) " / " (t.output_tokens) }
        td.num { (usd(&t.cost.to_string())) }
    }
}

/// Shown while the catalog has no models: how to add a provider.
pub fn no_models_hint() -> Markup {
    html! {
        section.panel {
            h2 { "No models yet" }
            p { "This gateway has no models to serve. Add a provider and its models to the config file, then restart " code { "tollgate serve" } ":" }
            pre { code { "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key_env = \"OPENAI_API_KEY\"\n\n[[models]]\nid = \"gpt-4.1-mini\"\nprovider = \"openai\"\nendpoints = [\"chat.completions\", \"responses\"]\npricing = { input = \"0.40\", output = \"1.60\" }" } }
            p.muted { "See docs/configuration.md for every provider kind (OpenAI-compatible servers, Anthropic, Azure, Gemini)." }
        }
    }
}

async fn overview(ctx: &Ctx, account: crate::store::AccountId) -> Result<Response, Fail> {
    let state = &ctx.state;
    state.writer.caught_up().await.map_err(ApiError::from)?;
    let settled = crate::http::credits::settled(state, account).await?;
    let activity = state.accounts.activity(account, DAYS).await?;
    let spend = spend(state, account, DAYS).await?;
    let total = activity.total.cost;
    let body = html! {
        @if state.config.models.is_empty() { (no_models_hint()) }
        div.stats {
            div.stat { div.label { "Balance" } div.value data-balance=(settled.balance().to_string()) { (usd(&settled.balance().to_string())) } }
            div.stat { div.label { "Spent, last 30 days" } div.value { (usd(&total.to_string())) } }
            div.stat { div.label { "Requests, last 30 days" } div.value { (activity.total.requests) } }
            div.stat { div.label { "Tokens in / out" } div.value { (activity.total.input_tokens) " / " (activity.total.output_tokens) } }
        }
        section.panel aria-labelledby="spend-title" {
            h2 id="spend-title" { "Daily spend by model" small { "last 30 days, UTC" } }
            (chart::render(&spend))
        }
        div.grid2 {
            section.panel aria-labelledby="models-title" {
                h2 id="models-title" { "Top models" }
                @if activity.models.is_empty() {
                    p.empty { "No requests yet." }
                } @else {
                    div.table-wrap { table {
                        thead { tr { th scope="col" { "Model" } th.num scope="col" { "Requests" } th.num scope="col" { "Tokens in / out" } th.num scope="col" { "Cost" } } }
                        tbody {
                            @for (model, t) in activity.models.iter().take(TOP) {
                                tr { td { (model) (meter(t.cost, total)) } (totals_cells(t)) }
                            }
                        }
                    } }
                }
            }
            section.panel aria-labelledby="keys-title" {
                h2 id="keys-title" { "Usage per key" a href="/console/keys" { small { "Manage keys" } } }
                @if activity.keys.is_empty() {
                    p.empty { "No key has been used yet. " a href="/console/keys" { "Create a key" } " to start." }
                } @else {
                    div.table-wrap { table {
                        thead { tr { th scope="col" { "Key" } th.num scope="col" { "Requests" } th.num scope="col" { "Tokens in / out" } th.num scope="col" { "Cost" } } }
                        tbody {
                            @for (id, name, t) in activity.keys.iter().take(TOP) {
                                tr { td { a href={ "/console/keys/" (id.0) } { (name) } (meter(t.cost, total)) } (totals_cells(t)) }
                            }
                        }
                    } }
                    @if activity.keys.len() > TOP {
                        p.muted { "The " (TOP) " most expensive of " (activity.keys.len()) " keys used; " a href="/console/keys" { "every key" } " shows its usage." }
                    }
                }
            }
        }
    };
    Ok(page(ctx, Nav::Overview, "Overview", body))
}
