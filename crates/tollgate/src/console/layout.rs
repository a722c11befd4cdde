//! The page shell (header, navigation, sign-out) and small pieces every page uses.

use axum::response::Response;
use maud::{html, Markup, DOCTYPE};

use super::ctx::{respond, Ctx};

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Keys,
    Credits,
    Requests,
    Accounts,
    Models,
    Reference,
}

const ACCOUNT_NAV: &[(Nav, &str, &str)] = &[
    (Nav::Overview, "/console", "Overview"),
    (Nav::Keys, "/console/keys", "Keys"),
    (Nav::Credits, "/console/credits", "Credits"),
    (Nav::Requests, "/console/requests", "Requests"),
    (Nav::Models, "/console/models", "Models"),
    (Nav::Reference, "/console/reference", "API reference"),
];

const OPERATOR_NAV: &[(Nav, &str, &str)] = &[
    (Nav::Accounts, "/console", "Accounts"),
    (Nav::Models, "/console/models", "Models"),
    (Nav::Reference, "/console/reference", "API reference"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · Tollgate" }
            link rel="stylesheet" href=(super::assets::CSS_PATH);
            link rel="icon" href=(super::assets::ICON_PATH) type="image/svg+xml";
            script src=(super::assets::JS_PATH) defer {}
        }
    }
}

fn brand() -> Markup {
    html! {
        a.brand href="/console" {
            svg width="22" height="22" viewBox="0 0 24 24" aria-hidden="true" {
                rect x="2" y="10" width="20" height="4" rx="2" class="brand-bar" {}
                rect x="4" y="4" width="4" height="16" rx="2" class="brand-post" {}
            }
            span { "Tollgate" }
        }
    }
}

/// A page of a signed-in session.
pub fn page(ctx: &Ctx, active: Nav, title: &str, body: Markup) -> Response {
    let (nav, who) = match &ctx.account {
        Some(account) => (ACCOUNT_NAV, format!("Account · {}", account.name)),
        None => (OPERATOR_NAV, "Operator".to_string()),
    };
    respond(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    (brand())
                    nav aria-label="Console" {
                        ul {
                            @for (section, href, label) in nav {
                                li {
                                    @if *section == active {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (who) }
                        form method="post" action="/console/sign-out" {
                            (ctx.csrf_field())
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    })
}

/// A page outside a session (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.top { (brand()) }
                (body)
            }
        }
    }
}

/// A decimal amount of credits as dollars.
pub fn usd(amount: &str) -> String {
    match amount.strip_prefix('-') {
        Some(positive) => format!("−${positive}"),
        None => format!("${amount}"),
    }
}

/// An RFC 3339 time, shown as `2026-03-31 10:00 UTC`.
pub fn when(rfc3339: Option<&str>) -> Markup {
    match rfc3339 {
        None => html! { span.muted { "—" } },
        Some(t) => {
            let shown = t.get(..16).map_or(t.to_string(), |s| s.replace('T', " "));
            html! { time datetime=(t) { (shown) " UTC" } }
        }
    }
}

/// A unix time as [`when`] shows it.
pub fn when_unix(unix: Option<i64>) -> Markup {
    when(unix.map(crate::rfc3339).as_deref())
}

/// A notice: the one-time secret box, an error, a success.
pub fn notice(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { p class={ "notice " (kind) } role=(role) { (text) } }
}

/// A freshly minted key: shown once, with a copy button and the warning.
pub fn secret_once(label: &str, plaintext: &str) -> Markup {
    html! {
        section.secret aria-labelledby="secret-title" {
            h2 id="secret-title" { (label) }
            p.warning { strong { "Store it now." } " This is the only time the key is shown; Tollgate keeps only a hash of it." }
            div.secret-row {
                code id="new-secret" data-secret { (plaintext) }
                button type="button" data-copy="#new-secret" { "Copy" }
            }
        }
    }
}
