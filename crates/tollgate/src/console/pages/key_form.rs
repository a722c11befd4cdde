//! The key forms: their fields (filled from a key when editing, or from the form sent
//! when it comes back with an error), and a sent form turned into the JSON body of
//! `POST /v1/account/keys` or `PATCH /v1/account/keys/{id}`.

use maud::{html, Markup};
use serde_json::{Map, Value};

use crate::console::csrf::Form;
use crate::console::ctx::Ctx;
use crate::error::ApiError;
use crate::http::account::KeyView;
use crate::http::extract::json_object;

/// One member of a JSON body built from a form.
pub enum Member {
    /// A number as the person typed it (kept as text: money is read exactly).
    Number(String),
    Value(Value),
}

/// A JSON body from form fields, parsed back the way the API parses a request's.
pub fn json_body(members: Vec<(&str, Member)>) -> Result<(Map<String, Value>, Vec<u8>), ApiError> {
    let mut text = String::from("{");
    for (i, (name, member)) in members.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Value::from(*name).to_string());
        text.push(':');
        match member {
            Member::Number(n) => text.push_str(n),
            Member::Value(v) => text.push_str(&v.to_string()),
        }
    }
    text.push('}');
    let bytes = text.into_bytes();
    Ok((json_object(&bytes)?, bytes))
}

/// A number field: absent when empty (`null` if `clear`), the typed number when it is one,
/// else the text (which the API refuses, saying what it wants).
fn number(form: &Form, name: &str, clear: bool) -> Option<Member> {
    let text = form.text(name);
    if text.is_empty() {
        return clear.then_some(Member::Value(Value::Null));
    }
    let is_number = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'e' | b'E' | b'+'))
        && matches!(serde_json::from_str::<Value>(text), Ok(Value::Number(_)));
    Some(if is_number {
        Member::Number(text.to_string())
    } else {
        Member::Value(text.into())
    })
}

/// A text field: absent (or `null`) when empty.
fn text(form: &Form, name: &str, clear: bool) -> Option<Member> {
    match form.text(name) {
        "" => clear.then_some(Member::Value(Value::Null)),
        t => Some(Member::Value(t.into())),
    }
}

/// `expires_at` from a `datetime-local` field, read as UTC.
fn expiry(form: &Form, clear: bool) -> Option<Member> {
    match form.text("expires_at") {
        "" => clear.then_some(Member::Value(Value::Null)),
        t if t.len() == 16 => Some(Member::Value(format!("{t}:00Z").into())),
        t if t.len() == 19 && !t.ends_with('Z') => Some(Member::Value(format!("{t}Z").into())),
        t => Some(Member::Value(t.into())),
    }
}

/// `allowed_models` from a comma- or space-separated list.
fn models(form: &Form, clear: bool) -> Option<Member> {
    let list: Vec<Value> = form
        .text("allowed_models")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(Value::from)
        .collect();
    if list.is_empty() {
        clear.then_some(Member::Value(Value::Null))
    } else {
        Some(Member::Value(Value::Array(list)))
    }
}

/// The members of a create (`clear` false) or a full edit (`clear` true).
pub fn members(form: &Form, clear: bool) -> Vec<(&'static str, Member)> {
    let mut m = vec![("name", Member::Value(form.text("name").into()))];
    if clear {
        m.push((
            "is_enabled",
            Member::Value(form.checked("is_enabled").into()),
        ));
    }
    let optional = [
        ("credit_limit", number(form, "credit_limit", clear)),
        ("limit_reset", text(form, "limit_reset", clear)),
        ("expires_at", expiry(form, clear)),
        ("rate_limit_rpm", number(form, "rate_limit_rpm", clear)),
        ("allowed_models", models(form, clear)),
    ];
    for (name, member) in optional {
        if let Some(member) = member {
            m.push((name, member));
        }
    }
    m.push((
        "clamp_max_tokens",
        Member::Value(form.checked("clamp_max_tokens").into()),
    ));
    m
}

/// The fields of the create and edit forms, filled from `key` when editing.
pub fn key_fields(ctx: &Ctx, key: Option<&KeyView>, form: Option<&Form>) -> Markup {
    let value = |name: &str, from_key: Option<String>| -> String {
        form.map(|f| f.text(name).to_string())
            .or(from_key)
            .unwrap_or_default()
    };
    let name = value("name", key.map(|k| k.name.clone()));
    let limit = value(
        "credit_limit",
        key.and_then(|k| k.credit_limit.as_ref().map(|l| l.get().to_string())),
    );
    let reset = value(
        "limit_reset",
        key.and_then(|k| k.limit_reset.map(str::to_string)),
    );
    let expires = value(
        "expires_at",
        key.and_then(|k| {
            k.expires_at
                .as_ref()
                .and_then(|e| e.get(..16))
                .map(str::to_string)
        }),
    );
    let rpm = value(
        "rate_limit_rpm",
        key.and_then(|k| k.rate_limit_rpm.map(|r| r.to_string())),
    );
    let allowed = value(
        "allowed_models",
        key.and_then(|k| k.allowed_models.as_ref().map(|m| m.join(", "))),
    );
    let clamp = form.map_or(key.is_some_and(|k| k.clamp_max_tokens), |f| {
        f.checked("clamp_max_tokens")
    });
    let catalog: Vec<&str> = ctx
        .state
        .config
        .models
        .iter()
        .map(|m| m.id.as_str())
        .collect();
    html! {
        div.fields {
            div.field {
                label for="name" { "Name" }
                input id="name" name="name" type="text" required maxlength="255" value=(name) placeholder="CI worker";
            }
            div.field {
                label for="credit_limit" { "Credit limit (USD)" }
                input id="credit_limit" name="credit_limit" type="text" inputmode="decimal" value=(limit) placeholder="No limit" aria-describedby="credit_limit-hint";
                span.hint id="credit_limit-hint" { "Empty: no limit." }
            }
            div.field {
                label for="limit_reset" { "Limit resets" }
                select id="limit_reset" name="limit_reset" {
                    @for (v, label) in [("", "Never (lifetime limit)"), ("daily", "Daily"), ("weekly", "Weekly"), ("monthly", "Monthly")] {
                        option value=(v) selected[reset == v] { (label) }
                    }
                }
            }
            div.field {
                label for="expires_at" { "Expires (UTC)" }
                input id="expires_at" name="expires_at" type="datetime-local" value=(expires) aria-describedby="expires-hint";
                span.hint id="expires-hint" { "Empty: never." }
            }
            div.field {
                label for="rate_limit_rpm" { "Rate limit (requests/min)" }
                input id="rate_limit_rpm" name="rate_limit_rpm" type="text" inputmode="numeric" value=(rpm) placeholder="No limit";
            }
            div.field.wide {
                label for="allowed_models" { "Allowed models" }
                input id="allowed_models" name="allowed_models" type="text" value=(allowed) placeholder="Every model" aria-describedby="allowed-hint";
                span.hint id="allowed-hint" {
                    "Comma-separated; empty: every model."
                    @if !catalog.is_empty() { " Models: " (catalog.join(", ")) }
                }
            }
        }
        label.check {
            input type="checkbox" name="clamp_max_tokens" value="on" checked[clamp];
            "Lower max_tokens to what the budget can pay for, instead of refusing the request"
        }
    }
}
