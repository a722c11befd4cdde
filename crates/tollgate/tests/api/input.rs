//! Bad input: every case is a clear error in the API's shape, never a 500 or a dropped connection.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_bodies_are_400() {
    let app = spawn_app().await;
    for body in [
        "{",
        "not json",
        "[1,2]",
        "\"name\"",
        "",
        "{\"name\": \"x\",}",
    ] {
        let response = app.post_raw("/v1/account/keys", &app.prov_key, body).await;
        let message = assert_error(response, 400, "invalid_request_error", "invalid_json").await;
        assert!(message.contains("JSON"), "{message}");
    }
}

#[tokio::test]
async fn wrong_types_and_values_name_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": "k", "credit_limit": -1}), "credit_limit"),
        (json!({"name": "k", "credit_limit": "25"}), "credit_limit"),
        (
            json!({"name": "k", "credit_limit": 0.0000000001}),
            "credit_limit",
        ),
        (json!({"name": "k", "credit_limit": 1e300}), "credit_limit"),
        (
            json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"name": "k", "expires_at": "tomorrow"}), "expires_at"),
        (json!({"name": "k", "expires_at": 12345}), "expires_at"),
        (json!({"name": "k", "rate_limit_rpm": 0}), "rate_limit_rpm"),
        (json!({"name": "k", "credit_limt": 5}), "credit_limt"),
    ];
    for (body, field) in cases {
        let response = app.post("/v1/account/keys", &app.prov_key, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], field, "{body} -> {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    // 255 characters (not bytes) is fine, and so is a zero limit.
    let name = "é".repeat(255);
    let response = app
        .post(
            "/v1/account/keys",
            &app.prov_key,
            &json!({"name": name, "credit_limit": 0}),
        )
        .await;
    assert_eq!(response.status(), 201);

    let (id, _) = app.create_key(json!({"name": "k"})).await;
    let path = format!("/v1/account/keys/{id}");
    for (body, field) in [
        (json!({"is_enabled": "yes"}), "is_enabled"),
        (json!({"is_enabled": null}), "is_enabled"),
        (json!({"name": null}), "name"),
        (json!({"credit_limit": -0.01}), "credit_limit"),
        (json!({"expires_at": "1999-12-31T23:59:59Z"}), "expires_at"),
        (json!({"key": "tg-inf-x"}), "key"),
    ] {
        let response = app.patch(&path, &app.prov_key, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], field, "{body} -> {error}");
    }
}

#[tokio::test]
async fn non_integer_ids_are_400_and_unknown_ids_404() {
    let app = spawn_app().await;
    for id in ["abc", "1.5", "99999999999999999999999", "%20"] {
        let response = app
            .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
            .await;
        let message = assert_error(response, 400, "invalid_request_error", "invalid_field").await;
        assert!(message.contains("integer"), "{message}");
    }
    assert_error(
        app.get("/v1/account/keys/424242", &app.prov_key).await,
        404,
        "not_found_error",
        "key_not_found",
    )
    .await;
    // The provisioning key's own id is not an inference key of the account.
    assert_error(
        app.get("/v1/account/keys/1", &app.prov_key).await,
        404,
        "not_found_error",
        "key_not_found",
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let app = spawn_app().await;
    assert_error(
        app.get("/v1/nope", &app.prov_key).await,
        404,
        "not_found_error",
        "route_not_found",
    )
    .await;
    // `/` is the console's; any other unknown path is the API's JSON 404.
    assert_error(
        app.get("/nope", "x").await,
        404,
        "not_found_error",
        "route_not_found",
    )
    .await;
    let response = app
        .client
        .put(app.url("/v1/account/keys"))
        .send()
        .await
        .expect("request");
    assert_error(response, 405, "invalid_request_error", "method_not_allowed").await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = spawn_app_with("[limits]\nmax_body_bytes = 1024\n").await;
    let big = json!({"name": "x".repeat(2000)});
    let message = assert_error(
        app.post("/v1/account/keys", &app.prov_key, &big).await,
        413,
        "request_too_large",
        "body_too_large",
    )
    .await;
    assert!(message.contains("1024"), "{message}");
    // Also without a content-length (chunked).
    let stream = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 100]))),
    );
    let response = app
        .client
        .post(app.url("/v1/account/keys"))
        .bearer_auth(&app.prov_key)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("request");
    assert_error(response, 413, "request_too_large", "body_too_large").await;
    // The server is still fine.
    assert_eq!(
        app.get("/v1/account/keys", &app.prov_key).await.status(),
        200
    );
}

#[tokio::test]
async fn huge_headers_and_odd_bytes_do_not_break_the_server() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/v1/account/keys"))
        .header("authorization", format!("Bearer {}", "a".repeat(60_000)))
        .send()
        .await;
    // hyper refuses oversized header sections before routing; either way no crash.
    if let Ok(response) = response {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let response = app
        .client
        .post(app.url("/v1/account/keys"))
        .bearer_auth(&app.prov_key)
        .body(vec![0xff, 0xfe, 0x00, 0x7b])
        .send()
        .await
        .expect("request");
    assert_error(response, 400, "invalid_request_error", "invalid_json").await;
    assert_eq!(
        app.get("/v1/account/keys", &app.prov_key).await.status(),
        200
    );
}
