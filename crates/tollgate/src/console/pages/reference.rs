//! The API reference: the OpenAPI document of `/openapi.json`, rendered as a list of
//! endpoints grouped by the key they take, each with its parameters and request body.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup};
use serde_json::Value;

use crate::console::ctx::{Ctx, Fail};
use crate::console::layout::{self, Nav};
use crate::http::AppState;

const GROUPS: &[(&str, &str, &str)] = &[
    (
        "inference",
        "Model endpoints",
        "An inference key (tg-inf-…), as Authorization: Bearer or x-api-key.",
    ),
    (
        "provisioning",
        "Account endpoints",
        "A provisioning key (tg-prov-…), as Authorization: Bearer.",
    ),
    (
        "operator",
        "Operator endpoints",
        "An operator key (tg-op-…), as Authorization: Bearer.",
    ),
    ("", "Public endpoints", "No key."),
];

/// The security scheme an operation takes ("" for none).
fn scheme(op: &Value) -> String {
    op.get("security")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(Value::as_object)
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default()
}

fn body_fields(op: &Value, doc: &Value) -> Vec<String> {
    let Some(content) = op
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let Some(schema) = content.values().next().and_then(|c| c.get("schema")) else {
        return Vec::new();
    };
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(&r.replacen('#', "", 1))
            .cloned()
            .unwrap_or(Value::Null),
        None => schema.clone(),
    };
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn operation(path: &str, method: &str, op: &Value, doc: &Value) -> Markup {
    let params: Vec<&str> = op
        .get("parameters")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let fields = body_fields(op, doc);
    html! {
        div.endpoint {
            span class={ "method " (method) } { (method.to_uppercase()) }
            div {
                code { (path) }
                @if let Some(summary) = op.get("summary").and_then(Value::as_str) { div { (summary) } }
                @if !params.is_empty() { div.muted { "Parameters: " code { (params.join(", ")) } } }
                @if !fields.is_empty() { div.muted { "Body: " code { (fields.join(", ")) } } }
            }
        }
    }
}

/// `GET /console/reference`
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Fail> {
    let ctx = Ctx::any(&state, &headers).await?;
    let doc = crate::http::openapi::build();
    let mut ops: Vec<(String, String, String, Value)> = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            if let Some(methods) = item.as_object() {
                for (method, op) in methods {
                    ops.push((scheme(op), path.clone(), method.clone(), op.clone()));
                }
            }
        }
    }
    let body = html! {
        p { "Every endpoint of this gateway, from its OpenAPI 3.1 document: "
            a href="/openapi.json" { "/openapi.json" } " (load it into any OpenAPI tool or client generator)." }
        @for (key, title, auth) in GROUPS {
            @let group: Vec<_> = ops.iter().filter(|(s, ..)| {
                if key.is_empty() { !GROUPS.iter().any(|(k, ..)| !k.is_empty() && s.starts_with(k)) } else { s.starts_with(key) }
            }).collect();
            @if !group.is_empty() {
                section.panel.reference aria-labelledby={ "ref-" (title.replace(' ', "-")) } {
                    h2 id={ "ref-" (title.replace(' ', "-")) } { (title) small { (auth) } }
                    @for (_, path, method, op) in group { (operation(path, method, op, &doc)) }
                }
            }
        }
    };
    Ok(layout::page(&ctx, Nav::Reference, "API reference", body))
}
