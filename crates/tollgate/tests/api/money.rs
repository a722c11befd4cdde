//! Exact money in and out of the account API (`credit_limit` read from the JSON text,
//! never through a float, and written back digit for digit), and accounts that absurd
//! usage cannot break: every account endpoint keeps answering, also after a restart, on
//! SQLite and on PostgreSQL.

use reqwest::Response;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};

const EXACT: &str = "12345678.123456789";

async fn send_raw(app: &TestApp, method: reqwest::Method, path: &str, body: String) -> Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(&app.prov_key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// The JSON text of a response, and the raw number text of its first `credit_limit`.
async fn credit_limit_text(response: Response) -> String {
    assert_eq!(response.status().as_u16() / 100, 2, "status");
    let text = response.text().await.expect("body");
    let start = text.find("\"credit_limit\":").expect("credit_limit") + 15;
    let end = start + text[start..].find([',', '}']).expect("end of the number");
    text[start..end].to_string()
}

#[tokio::test]
async fn credit_limit_is_kept_and_shown_to_the_last_digit() {
    let app = spawn_app().await;
    let created = send_raw(
        &app,
        reqwest::Method::POST,
        "/v1/account/keys",
        format!(r#"{{"name": "exact", "credit_limit": {EXACT}}}"#),
    )
    .await;
    assert_eq!(created.status(), 201);
    let text = created.text().await.expect("body");
    assert!(
        text.contains(&format!("\"credit_limit\":{EXACT},")),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["limit_remaining"], EXACT);
    let id = body["id"].as_i64().expect("id");
    let key = body["key"].as_str().expect("key").to_string();
    let stored = app
        .state
        .accounts
        .get_key(app.account_id, tollgate::store::KeyId(id))
        .await
        .expect("read")
        .expect("key");
    assert_eq!(
        stored.credit_limit.map(|c| c.nanos()),
        Some(12_345_678_123_456_789)
    );

    // Every answer that shows the key writes the same digits.
    let one = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await;
    assert_eq!(credit_limit_text(one).await, EXACT);
    let list = app.get("/v1/account/keys", &app.prov_key).await;
    assert_eq!(credit_limit_text(list).await, EXACT);
    let own = app.get("/v1/key", &key).await;
    assert_eq!(credit_limit_text(own).await, EXACT);

    // Exponents and needless zeros are exact too.
    let path = format!("/v1/account/keys/{id}");
    for (sent, shown) in [
        ("1E-9", "0.000000001"),
        ("0.5000000000000000000000", "0.5"),
        ("1e9", "1000000000.0"),
        ("25", "25.0"),
        ("-0", "0.0"),
        ("0.000000001e9", "1.0"),
    ] {
        let patched = send_raw(
            &app,
            reqwest::Method::PATCH,
            &path,
            format!(r#"{{"credit_limit": {sent}}}"#),
        )
        .await;
        assert_eq!(credit_limit_text(patched).await, shown, "sent {sent}");
    }

    // A repeated member counts once, the last one, as for every other field.
    let repeated = send_raw(
        &app,
        reqwest::Method::PATCH,
        &path,
        r#"{"credit_limit": 1, "credit_limit": 2.000000003}"#.to_string(),
    )
    .await;
    assert_eq!(credit_limit_text(repeated).await, "2.000000003");
}

#[tokio::test]
async fn credit_limit_finer_than_the_unit_negative_or_too_large_is_refused() {
    let app = spawn_app().await;
    let (id, _) = app
        .create_key(json!({"name": "k", "credit_limit": 3}))
        .await;
    let path = format!("/v1/account/keys/{id}");
    for (number, says) in [
        ("0.0000000001", "9 decimal places"),
        ("12345678.1234567891", "9 decimal places"),
        ("1e-10", "9 decimal places"),
        ("1.5e-300", "9 decimal places"),
        ("-0.000000001", "0 or more"),
        ("-5", "0 or more"),
        ("1000000000.000000001", "too large"),
        ("9223372036.854775807", "too large"),
        ("1e19", "too large"),
        // Past a float's range: the body as a whole cannot be parsed, the field is named.
        ("1e400", "too large"),
        ("-1e400", "too large"),
        ("\"5\"", "a string"),
        ("true", "a boolean"),
        ("[1]", "an array"),
    ] {
        for (method, target, body) in [
            (
                reqwest::Method::POST,
                "/v1/account/keys",
                format!(r#"{{"name": "n", "credit_limit": {number}}}"#),
            ),
            (
                reqwest::Method::PATCH,
                path.as_str(),
                format!(r#"{{"credit_limit": {number}}}"#),
            ),
        ] {
            let response = send_raw(&app, method.clone(), target, body).await;
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            assert_eq!(status, 400, "{method} {number}: {body}");
            assert_eq!(body["error"]["code"], "invalid_field", "{number}: {body}");
            assert_eq!(body["error"]["param"], "credit_limit", "{number}: {body}");
            let message = body["error"]["message"].as_str().expect("message");
            assert!(message.contains(says), "{number}: {message}");
        }
    }
    // Nothing refused was written, and no key was created.
    let key: Value = app
        .get(&path, &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(key["credit_limit"], 3.0);
    let list: Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["keys"].as_array().expect("keys").len(), 1);
}

#[tokio::test]
async fn the_largest_credit_limit_is_accepted_and_shown() {
    let app = spawn_app().await;
    let response = send_raw(
        &app,
        reqwest::Method::POST,
        "/v1/account/keys",
        r#"{"name": "most", "credit_limit": 1000000000.000000000}"#.to_string(),
    )
    .await;
    assert_eq!(credit_limit_text(response).await, "1000000000.0");
    let refused = send_raw(
        &app,
        reqwest::Method::POST,
        "/v1/account/keys",
        r#"{"name": "more", "credit_limit": 1000000000.000000001}"#.to_string(),
    )
    .await;
    let message = assert_error(refused, 400, "invalid_request_error", "invalid_field").await;
    assert!(message.contains("1000000000 credits"), "{message}");
}
