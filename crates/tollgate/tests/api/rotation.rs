//! Key rotation: a new secret for the same key id (same limits, usage and settings), the
//! old secret working for the grace period and then refused, however it was cached.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{chat, setup};
use crate::helpers::{assert_error, TestApp};

async fn rotate(app: &TestApp, id: i64, body: Option<Value>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(&format!("/v1/account/keys/{id}/rotate")))
        .bearer_auth(&app.prov_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

async fn status(app: &TestApp, key: &str) -> u16 {
    app.post("/v1/chat/completions", key, &chat("gpt-test", "hi"))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_rotated_key_keeps_its_id_and_the_old_secret_works_for_the_grace_period() {
    let (app, _up, _) = setup().await;
    let (id, old) = app
        .create_key(json!({"name": "ci", "credit_limit": 1, "limit_reset": "daily", "allowed_models": ["gpt-test"]}))
        .await;
    assert_eq!(
        status(&app, &old).await,
        200,
        "the old secret is cached now"
    );
    let before: Value = app.get("/v1/key", &old).await.json().await.expect("json");

    let response = rotate(&app, id, Some(json!({"grace_seconds": 2}))).await;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.expect("json");
    let new = rotated["key"].as_str().expect("new plaintext").to_string();
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id);
    assert!(rotated["message"]
        .as_str()
        .expect("message")
        .contains("not be shown again"));
    assert!(rotated["previous_key_expires_at"].is_string(), "{rotated}");
    assert_eq!(
        rotated["hint"],
        format!("tg-inf-...{}", &new[new.len() - 4..])
    );
    for field in [
        "name",
        "credit_limit",
        "limit_reset",
        "allowed_models",
        "usage",
        "created_at",
    ] {
        assert_eq!(rotated[field], before[field], "{field} is the same key's");
    }
    // Both secrets work during the grace period, as the same key.
    assert_eq!(status(&app, &new).await, 200);
    assert_eq!(status(&app, &old).await, 200);
    let seen: Value = app.get("/v1/key", &old).await.json().await.expect("json");
    assert_eq!(seen["id"], id);
    // Then the old one stops (it is cached, and still refused), the new one goes on.
    let rotated_at = Instant::now();
    loop {
        let s = status(&app, &old).await;
        if s == 401 {
            break;
        }
        assert_eq!(s, 200);
        assert!(
            rotated_at.elapsed() < Duration::from_secs(4),
            "the old secret outlived its grace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = app
        .post("/v1/chat/completions", &old, &chat("gpt-test", "hi"))
        .await;
    let message = assert_error(refused, 401, "authentication_error", "key_rotated").await;
    assert!(message.contains("rotation"), "{message}");
    assert_eq!(status(&app, &new).await, 200);
    // The key list never shows a secret.
    let list = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .text()
        .await
        .expect("text");
    assert!(!list.contains(&new) && !list.contains(&old));
}

#[tokio::test]
async fn a_rotation_without_grace_stops_the_old_secret_at_once_and_is_validated() {
    let (app, _up, _) = setup().await;
    let (id, old) = app.create_key(json!({"name": "k"})).await;
    assert_eq!(status(&app, &old).await, 200);
    let rotated: Value = rotate(&app, id, Some(json!({"grace_seconds": 0})))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rotated["previous_key_expires_at"], Value::Null);
    let second = rotated["key"].as_str().expect("key").to_string();
    assert_eq!(status(&app, &old).await, 401);
    assert_eq!(status(&app, &second).await, 200);
    // Default grace (a day); rotating again ends the grace of the one before.
    let third: Value = rotate(&app, id, None).await.json().await.expect("json");
    let third = third["key"].as_str().expect("key").to_string();
    assert_eq!(
        status(&app, &second).await,
        200,
        "a day of grace by default"
    );
    let fourth: Value = rotate(&app, id, None).await.json().await.expect("json");
    assert_eq!(status(&app, &second).await, 401, "two rotations ago");
    assert_eq!(status(&app, &third).await, 200);
    assert_eq!(
        status(&app, fourth["key"].as_str().expect("key")).await,
        200
    );

    for bad in [
        json!({"grace_seconds": -1}),
        json!({"grace_seconds": 2_592_001}),
        json!({"grace_seconds": "1"}),
        json!({"grace": 1}),
    ] {
        let response = rotate(&app, id, Some(bad.clone())).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    let max = rotate(&app, id, Some(json!({"grace_seconds": 2_592_000}))).await;
    assert_eq!(max.status(), 200);
    assert_error(
        rotate(&app, 9999, None).await,
        404,
        "not_found_error",
        "key_not_found",
    )
    .await;
    // Another account's key is not found either; an inference key cannot rotate.
    let (_, other_prov) = app.new_account("other").await;
    let foreign = app
        .client
        .post(app.url(&format!("/v1/account/keys/{id}/rotate")))
        .bearer_auth(&other_prov)
        .send()
        .await
        .expect("request");
    assert_error(foreign, 404, "not_found_error", "key_not_found").await;
    let by_inference = app
        .client
        .post(app.url(&format!("/v1/account/keys/{id}/rotate")))
        .bearer_auth(&third)
        .send()
        .await
        .expect("request");
    assert_eq!(by_inference.status(), 401);
    // A deleted key cannot be rotated back to life.
    assert_eq!(
        app.delete(&format!("/v1/account/keys/{id}"), &app.prov_key)
            .await
            .status(),
        204
    );
    assert_eq!(rotate(&app, id, None).await.status(), 404);
    assert_eq!(status(&app, &third).await, 401);
}
