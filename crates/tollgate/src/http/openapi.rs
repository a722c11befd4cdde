//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint, built from the code
//! once: the model endpoints from [`Endpoint::ALL`] (the router's own list), the answers
//! of the account, request-log and operator endpoints from their Rust types (`utoipa`
//! derives their schemas), and errors in both shapes of [`crate::error`].

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use utoipa::openapi::{ComponentsBuilder, RefOr, Schema};

use super::account::{KeyList, KeyView};
use super::admin::{
    AccountList, AccountView, GrantCreated, GrantList, GrantView, ProvisioningKeyView,
};
use super::requests::{RequestPage, RequestView, MAX_LIMIT};
use crate::config::Endpoint;

/// `GET /openapi.json`
pub async fn document() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| build().to_string());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text.as_str(),
    )
        .into_response()
}

/// The component schemas derived from the answer types.
fn derived_schemas() -> Map<String, Value> {
    let components = ComponentsBuilder::new()
        .schema_from::<KeyView>()
        .schema_from::<KeyList>()
        .schema_from::<AccountView>()
        .schema_from::<AccountList>()
        .schema_from::<GrantView>()
        .schema_from::<GrantCreated>()
        .schema_from::<GrantList>()
        .schema_from::<ProvisioningKeyView>()
        .schema_from::<RequestView>()
        .schema_from::<RequestPage>()
        .build();
    let mut map = Map::new();
    for (name, schema) in components.schemas {
        let schema: RefOr<Schema> = schema;
        map.insert(
            name,
            serde_json::to_value(schema).unwrap_or_else(|_| json!({})),
        );
    }
    map
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// An operation: its summary, the key it takes, its parameters, body and success answer;
/// every other status is an error in the API's shape (`default`).
fn operation(
    summary: &str,
    security: Option<&str>,
    parameters: Vec<Value>,
    body: Option<Value>,
    success: (&str, Value),
) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), summary.into());
    if let Some(scheme) = security {
        let mut requirement = vec![json!({ scheme: [] })];
        if scheme == "inference" {
            requirement.push(json!({"inference_x_api_key": []}));
        }
        op.insert("security".into(), Value::Array(requirement));
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(body) = body {
        op.insert("requestBody".into(), body);
    }
    op.insert(
        "responses".into(),
        json!({
            success.0: success.1,
            "default": {"description": "An error, in the API's shape", "content": json_content(reference("Error"))},
        }),
    );
    Value::Object(op)
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": json_content(schema)})
}

fn path_id(description: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": description, "schema": {"type": "integer"}})
}

fn path_name(description: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn json_body(schema: Value, required: bool) -> Value {
    json!({"required": required, "content": json_content(schema)})
}

fn model_operations(paths: &mut Map<String, Value>) {
    for endpoint in Endpoint::ALL {
        let body = if endpoint.is_upload() {
            json!({"required": true, "content": {"multipart/form-data": {"schema": {"type": "object"}}}})
        } else {
            json_body(
                json!({"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}}),
                true,
            )
        };
        let mut content = Map::new();
        content.insert(
            "application/json".into(),
            json!({"schema": {"type": "object"}}),
        );
        content.insert(
            "text/event-stream".into(),
            json!({"schema": {"type": "string"}}),
        );
        if endpoint == Endpoint::AudioSpeech {
            content.insert(
                "audio/*".into(),
                json!({"schema": {"type": "string", "format": "binary"}}),
            );
            content.insert(
                "application/octet-stream".into(),
                json!({"schema": {"type": "string", "format": "binary"}}),
            );
        }
        let success = json!({
            "description": "The provider's answer (a stream of events with \"stream\": true); x-tollgate-cost carries the exact cost",
            "content": content,
        });
        paths.insert(
            format!("/v1{}", endpoint.path()),
            json!({"post": operation(
                &format!("Model endpoint {}", endpoint.name()),
                Some("inference"),
                vec![],
                Some(body),
                ("200", success),
            )}),
        );
    }
    paths.insert(
        "/v1/messages/count_tokens".into(),
        json!({"post": operation(
            "Count a Messages request's input tokens (free)",
            Some("inference"),
            vec![],
            Some(json_body(json!({"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}}), true)),
            ("200", ok_json("The count", json!({"type": "object", "required": ["input_tokens"], "properties": {"input_tokens": {"type": "integer"}}}))),
        )}),
    );
}

fn public_operations(paths: &mut Map<String, Value>) {
    let object = json!({"type": "object"});
    for (path, summary) in [
        ("/v1/models", "The model catalog with prices"),
        ("/v1/startups", "Operator-configured public metadata"),
        ("/healthz", "Liveness"),
    ] {
        paths.insert(
            path.into(),
            json!({"get": operation(summary, None, vec![], None, ("200", ok_json(summary, object.clone())))}),
        );
    }
    paths.insert(
        "/v1/models/{id}".into(),
        json!({"get": operation("One model of the catalog", None, vec![path_name("The model id (may hold '/')")], None, ("200", ok_json("The model", object.clone())))}),
    );
    let ready = json!({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}});
    paths.insert(
        "/readyz".into(),
        json!({"get": {
            "summary": "Readiness: the usage writer takes records and the database answers",
            "responses": {
                "200": ok_json("Ready", ready.clone()),
                "503": ok_json("Not ready, and why", ready),
            },
        }}),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {"summary": "This document", "responses": {"200": ok_json("OpenAPI 3.1", object)}}}),
    );
}

fn account_operations(paths: &mut Map<String, Value>) {
    let prov = Some("provisioning");
    let key_fields = json!({
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "credit_limit": {"type": ["number", "null"], "minimum": 0},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "rate_limit_rpm": {"type": ["integer", "null"], "minimum": 1},
        "clamp_max_tokens": {"type": "boolean"},
        "limit_reset": {"enum": ["daily", "weekly", "monthly", null], "description": "When credit_limit starts again: 00:00 UTC, Mondays, the first of the month; null: never"},
        "allowed_models": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 1000, "description": "The model ids the key may use; null: all"},
    });
    let mut patch_fields = key_fields.clone();
    if let Some(map) = patch_fields.as_object_mut() {
        map.insert("is_enabled".into(), json!({"type": "boolean"}));
    }
    let key_id = path_id("The key's integer id");
    paths.insert(
        "/v1/key".into(),
        json!({"get": operation("The calling inference key", Some("inference"), vec![], None, ("200", ok_json("The key", reference("KeyView"))))}),
    );
    paths.insert(
        "/v1/account/keys".into(),
        json!({
            "get": operation("The account's inference keys", prov, vec![], None, ("200", ok_json("The keys", reference("KeyList")))),
            "post": operation(
                "Create an inference key (the plaintext is in this answer only)",
                prov,
                vec![],
                Some(json_body(json!({"type": "object", "required": ["name"], "properties": key_fields, "additionalProperties": false}), true)),
                ("201", ok_json("The key with its plaintext", reference("KeyView"))),
            ),
        }),
    );
    paths.insert(
        "/v1/account/keys/{id}".into(),
        json!({
            "get": operation("One inference key", prov, vec![key_id.clone()], None, ("200", ok_json("The key", reference("KeyView")))),
            "patch": operation(
                "Change a key: absent fields stay, null clears",
                prov,
                vec![key_id.clone()],
                Some(json_body(json!({"type": "object", "properties": patch_fields, "additionalProperties": false}), true)),
                ("200", ok_json("The key", reference("KeyView"))),
            ),
            "delete": operation("Delete a key", prov, vec![key_id], None, ("204", json!({"description": "Deleted"}))),
        }),
    );
    paths.insert(
        "/v1/account/balance".into(),
        json!({"get": operation("The account's balance", prov, vec![], None, ("200", ok_json("The balance", json!({"type": "object", "required": ["balance"], "properties": {"balance": {"type": "string"}}}))))}),
    );
    paths.insert(
        "/v1/account/activity".into(),
        json!({"get": operation(
            "Usage per day, model and key",
            prov,
            vec![query("days", "Days back, today included (1 to 30, default 30)", json!({"type": "integer", "minimum": 1, "maximum": 30}))],
            None,
            ("200", ok_json("The activity", json!({"type": "object", "required": ["period_days", "total_stats", "daily_stats", "top_models", "api_key_usage"]}))),
        )}),
    );
    let mut success = ok_json("A page of the request log", reference("RequestPage"));
    if let Some(content) = success["content"].as_object_mut() {
        content.insert("text/csv".into(), json!({"schema": {"type": "string"}}));
    }
    paths.insert(
        "/v1/account/requests".into(),
        json!({"get": operation(
            "The request log, newest first (CSV with format=csv or Accept: text/csv)",
            prov,
            vec![
                query("limit", "Rows per page", json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})),
                query("cursor", "next_cursor of the previous page", json!({"type": "string"})),
                query("key_id", "Only this key's requests", json!({"type": "integer"})),
                query("model", "Only requests served by this model", json!({"type": "string", "minLength": 1})),
                query("status", "An HTTP status, success (< 400) or error (>= 400)", json!({"type": "string"})),
                query("from", "From this date or RFC 3339 time on", json!({"type": "string"})),
                query("to", "Up to this date (included) or RFC 3339 time (excluded)", json!({"type": "string"})),
                query("format", "json (default) or csv", json!({"type": "string", "enum": ["json", "csv"]})),
            ],
            None,
            ("200", success),
        )}),
    );
}

fn admin_operations(paths: &mut Map<String, Value>) {
    let op = Some("operator");
    let account_id = path_id("The account's integer id");
    let name = json!({"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 255}}, "additionalProperties": false});
    let mut required_name = name.clone();
    required_name["required"] = json!(["name"]);
    paths.insert(
        "/v1/admin/accounts".into(),
        json!({
            "get": operation("Every account with its balance", op, vec![], None, ("200", ok_json("The accounts", reference("AccountList")))),
            "post": operation("Create an account", op, vec![], Some(json_body(required_name, true)), ("201", ok_json("The account", reference("AccountView")))),
        }),
    );
    paths.insert(
        "/v1/admin/accounts/{id}".into(),
        json!({"get": operation("One account with its balance", op, vec![account_id.clone()], None, ("200", ok_json("The account", reference("AccountView"))))}),
    );
    paths.insert(
        "/v1/admin/accounts/{id}/grants".into(),
        json!({
            "get": operation("The account's grants, oldest first", op, vec![account_id.clone()], None, ("200", ok_json("The grants", reference("GrantList")))),
            "post": operation(
                "Grant credits",
                op,
                vec![account_id.clone()],
                Some(json_body(json!({"type": "object", "required": ["amount"], "properties": {
                    "amount": {"type": ["string", "number"], "description": "Credits (USD), exact decimal, more than zero"},
                    "note": {"type": ["string", "null"], "maxLength": 1000},
                }, "additionalProperties": false}), true)),
                ("201", ok_json("The grant and the balance after it", reference("GrantCreated"))),
            ),
        }),
    );
    paths.insert(
        "/v1/admin/accounts/{id}/provisioning-keys".into(),
        json!({"post": operation(
            "Create a provisioning key (the plaintext is in this answer only)",
            op,
            vec![account_id],
            Some(json_body(name, false)),
            ("201", ok_json("The key with its plaintext", reference("ProvisioningKeyView"))),
        )}),
    );
    paths.insert(
        "/v1/admin/provisioning-keys/{id}".into(),
        json!({"delete": operation("Revoke a provisioning key", op, vec![path_id("The key's integer id")], None, ("204", json!({"description": "Revoked"})))}),
    );
}

/// The error bodies: OpenAI's shape everywhere, Anthropic's under `/v1/messages`.
fn error_schema() -> Value {
    json!({"anyOf": [
        {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }}},
        {"type": "object", "required": ["type", "error"], "properties": {
            "type": {"const": "error"},
            "error": {"type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string"}, "message": {"type": "string"},
            }},
        }},
    ]})
}

/// Key rotation, credits and webhooks (the budgets of docs/credits.md and docs/webhooks.md).
fn budget_operations(paths: &mut Map<String, Value>) {
    let prov = Some("provisioning");
    let id = |what: &str| path_id(what);
    let object = |properties: Value| json!({"type": "object", "properties": properties});
    paths.insert(
        "/v1/account/keys/{id}/rotate".into(),
        json!({"post": operation(
            "A new secret for the key (in this answer only); the old one works for grace_seconds more",
            prov,
            vec![id("The key's integer id")],
            Some(json_body(json!({"type": "object", "properties": {"grace_seconds": {"type": "integer", "minimum": 0, "maximum": 2_592_000}}, "additionalProperties": false}), false)),
            ("200", ok_json("The key with its new plaintext", reference("KeyView"))),
        )}),
    );
    let grant = object(json!({
        "id": {"type": "integer"}, "amount": {"type": "string"}, "remaining": {"type": "string"},
        "expired": {"type": "string"}, "note": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "status": {"enum": ["active", "used", "expiring", "expired", "correction"]},
    }));
    paths.insert(
        "/v1/account/credits".into(),
        json!({"get": operation("The balance and every credit grant, newest first", prov, vec![], None, ("200", ok_json("The credits", json!({
            "type": "object",
            "required": ["balance", "expired", "credits"],
            "properties": {"balance": {"type": "string"}, "expired": {"type": "string"},
                "next_expiry": {"type": ["string", "null"], "format": "date-time"},
                "credits": {"type": "array", "items": grant}},
        }))))}),
    );
    let hook = object(json!({
        "id": {"type": "integer"}, "url": {"type": "string"},
        "low_balance": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "events": {"type": "array", "items": {"type": "string"}},
    }));
    paths.insert(
        "/v1/account/webhooks".into(),
        json!({
            "get": operation("The account's webhooks (never their secrets)", prov, vec![], None, ("200", ok_json("The webhooks", json!({"type": "object", "required": ["webhooks"], "properties": {"webhooks": {"type": "array", "items": hook}}})))),
            "post": operation(
                "Add a webhook: signed deliveries of the account's events",
                prov,
                vec![],
                Some(json_body(json!({"type": "object", "required": ["url", "secret"], "properties": {
                    "url": {"type": "string", "maxLength": 2048},
                    "secret": {"type": "string", "minLength": 16, "maxLength": 256},
                    "low_balance": {"type": ["string", "number", "null"]},
                }, "additionalProperties": false}), true)),
                ("201", ok_json("The webhook", hook)),
            ),
        }),
    );
    paths.insert(
        "/v1/account/webhooks/{id}".into(),
        json!({"delete": operation("Delete a webhook", prov, vec![id("The webhook's integer id")], None, ("204", json!({"description": "Deleted"})))}),
    );
    paths.insert(
        "/v1/account/webhooks/{id}/deliveries".into(),
        json!({"get": operation("The webhook's last 100 deliveries, newest first", prov, vec![id("The webhook's integer id")], None, ("200", ok_json("The deliveries", json!({"type": "object", "required": ["deliveries"], "properties": {"deliveries": {"type": "array", "items": {"type": "object"}}}}))))}),
    );
}

/// The whole document.
pub fn build() -> Value {
    let mut paths = Map::new();
    model_operations(&mut paths);
    public_operations(&mut paths);
    account_operations(&mut paths);
    budget_operations(&mut paths);
    admin_operations(&mut paths);
    let mut schemas = derived_schemas();
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A self-hosted AI API gateway: OpenAI- and Anthropic-compatible model endpoints, account management with provisioning keys, and the operator API.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "inference": {"type": "http", "scheme": "bearer", "description": "An inference key (tg-inf-...)"},
                "inference_x_api_key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An inference key (tg-inf-...)"},
                "provisioning": {"type": "http", "scheme": "bearer", "description": "A provisioning key (tg-prov-...)"},
                "operator": {"type": "http", "scheme": "bearer", "description": "An operator key (tg-op-...)"},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_type_has_its_schema_and_every_reference_resolves() {
        let doc = build();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = doc.to_string();
        for name in text
            .split("#/components/schemas/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
        {
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
        let key = &schemas["KeyView"];
        assert!(key["properties"]["credit_limit"].is_object(), "{key}");
        let required = key["required"].as_array().expect("required");
        assert!(
            !required.contains(&json!("key")),
            "the plaintext is optional"
        );
        assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
        for path in [
            "/v1/account/keys/{id}/rotate",
            "/v1/account/credits",
            "/v1/account/webhooks",
            "/v1/account/webhooks/{id}",
            "/v1/account/webhooks/{id}/deliveries",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is documented");
        }
        let create = &doc["paths"]["/v1/account/keys"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"];
        for field in ["limit_reset", "allowed_models", "clamp_max_tokens"] {
            assert!(create[field].is_object(), "{field} in {create}");
        }
        // The key bodies name exactly the fields the handlers take.
        let body_fields = |method: &str, path: &str| -> Vec<String> {
            let mut names: Vec<String> = doc["paths"][path][method]["requestBody"]["content"]
                ["application/json"]["schema"]["properties"]
                .as_object()
                .expect("properties")
                .keys()
                .cloned()
                .collect();
            names.sort();
            names
        };
        let sorted = |fields: &[&str]| -> Vec<String> {
            let mut names: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(
            body_fields("post", "/v1/account/keys"),
            sorted(super::super::account::CREATE_FIELDS)
        );
        assert_eq!(
            body_fields("patch", "/v1/account/keys/{id}"),
            sorted(super::super::account::PATCH_FIELDS)
        );
        assert!(
            doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
                ["multipart/form-data"]
                .is_object()
        );
    }
}
