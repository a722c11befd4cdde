//! The model catalog with its prices, and each deployment's routing state.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup};

use crate::billing::{Credits, UnitPrice};
use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{self, Nav};
use crate::http::AppState;
use crate::routing::DeploymentState;

/// USD per million tokens: femto-USD per token are nano-USD per million.
fn per_million(p: Option<UnitPrice>) -> Markup {
    match p {
        Some(p) => html! { "$" (Credits::from_nanos(p.femtos()).to_decimal_string(2)) },
        None => html! { span.muted { "—" } },
    }
}

/// USD per unit.
fn per_unit(p: Option<UnitPrice>, unit: &str) -> Option<String> {
    p.map(|p| {
        let nanos = p.femtos() / 1_000_000;
        format!(
            "${} {unit}",
            Credits::from_nanos(nanos).to_decimal_string(2)
        )
    })
}

fn state_badge(state: DeploymentState) -> Markup {
    match state {
        DeploymentState::Healthy { failures: 0 } => html! { span.badge.on { "healthy" } },
        DeploymentState::Healthy { failures } => {
            html! { span.badge.plain { "healthy, " (failures) " recent failures" } }
        }
        DeploymentState::CoolingDown { until } => {
            let left = until.saturating_duration_since(std::time::Instant::now());
            html! { span.badge.off { "cooling down, " (left.as_secs().max(1)) " s left" } }
        }
        DeploymentState::Probing { .. } => html! { span.badge.plain { "probing" } },
    }
}

/// `GET /console/models`
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    let ctx = Ctx::any(&state, &headers).await?;
    let config = &state.config;
    let router = state.gateway.router();
    let body = html! {
        @if config.models.is_empty() {
            (super::overview::no_models_hint())
        } @else {
            section.panel aria-labelledby="catalog-title" {
                h2 id="catalog-title" { "Catalog" small { "prices in USD per million tokens unless noted" } }
                div.table-wrap { table id="models" {
                    thead { tr {
                        th scope="col" { "Model" } th scope="col" { "Served by" } th scope="col" { "Endpoints" }
                        th.num scope="col" { "Input" } th.num scope="col" { "Cached input" } th.num scope="col" { "Output" }
                        th scope="col" { "Other prices" }
                    } }
                    tbody {
                        @for m in &config.models {
                            @let p = &m.pricing;
                            @let others: Vec<String> = [
                                per_unit(p.per_image, "per image"),
                                per_unit(p.per_request, "per request"),
                                per_unit(p.per_audio_second, "per audio second"),
                                per_unit(p.per_character, "per character"),
                            ].into_iter().flatten().collect();
                            tr {
                                td { strong { (m.id) } @if m.display_name != m.id { span.sub { (m.display_name) } } @if m.free { span.badge.plain { "free" } } }
                                td {
                                    @for d in &m.deployments {
                                        div {
                                            (config.providers[d.provider].name) " · " code { (d.upstream_model) } " "
                                            (state_badge(router.health(d)))
                                        }
                                    }
                                    @if !m.fallbacks.is_empty() { span.sub { "falls back to " (m.fallbacks.join(", ")) } }
                                }
                                td { span.sub { (m.endpoints.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")) } }
                                td.num { (per_million(p.input)) }
                                td.num { (per_million(p.cached_input)) }
                                td.num { (per_million(p.output)) }
                                td { @if others.is_empty() { span.muted { "—" } } @else { (others.join(", ")) } }
                            }
                        }
                    }
                } }
            }
        }
    };
    Ok(layout::page(&ctx, Nav::Models, "Models", body))
}
