//! Authentication: the two kinds of key, every refusal with its own message,
//! and secrets stored only as hashes.

use serde_json::json;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn account_endpoints_refuse_everything_but_a_bearer_provisioning_key() {
    let app = spawn_app().await;
    let inference = app.inference_key().await;
    let endpoints = [
        "/v1/account/keys",
        "/v1/account/keys/1",
        "/v1/account/balance",
        "/v1/account/activity",
    ];
    for path in endpoints {
        // Missing.
        let response = app.client.get(app.url(path)).send().await.expect("request");
        let message = assert_error(response, 401, "authentication_error", "missing_api_key").await;
        assert!(message.contains("provisioning key"), "{message}");
        // An inference key instead of a provisioning key.
        let message = assert_error(
            app.get(path, &inference).await,
            401,
            "authentication_error",
            "wrong_key_kind",
        )
        .await;
        assert!(
            message.contains("inference key") && message.contains("provisioning key"),
            "{message}"
        );
        // Unknown.
        let message = assert_error(
            app.get(
                path,
                "tg-prov-000000000000000000000000000000000000000000000000",
            )
            .await,
            401,
            "authentication_error",
            "invalid_api_key",
        )
        .await;
        assert!(message.contains("no key matches"), "{message}");
        // The provisioning key in x-api-key is not accepted.
        let response = app
            .client
            .get(app.url(path))
            .header("x-api-key", &app.prov_key)
            .send()
            .await
            .expect("request");
        let message = assert_error(
            response,
            401,
            "authentication_error",
            "malformed_authorization",
        )
        .await;
        assert!(message.contains("Bearer"), "{message}");
        // Not a bearer scheme.
        let response = app
            .client
            .get(app.url(path))
            .header("authorization", format!("Basic {}", app.prov_key))
            .send()
            .await
            .expect("request");
        assert_error(
            response,
            401,
            "authentication_error",
            "malformed_authorization",
        )
        .await;
    }
    // No message echoes a secret.
    let response = app.get("/v1/account/keys", &inference).await;
    let text = response.text().await.expect("text");
    assert!(!text.contains(&inference[7..]));
}

#[tokio::test]
async fn inference_endpoints_take_bearer_or_x_api_key_and_refuse_provisioning_keys() {
    let app = spawn_app().await;
    let key = app.inference_key().await;
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    let response = app
        .client
        .get(app.url("/v1/key"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let message = assert_error(
        app.get("/v1/key", &app.prov_key).await,
        401,
        "authentication_error",
        "wrong_key_kind",
    )
    .await;
    assert!(message.contains("provisioning key"), "{message}");
    let response = app
        .client
        .get(app.url("/v1/key"))
        .send()
        .await
        .expect("request");
    let message = assert_error(response, 401, "authentication_error", "missing_api_key").await;
    assert!(message.contains("x-api-key"), "{message}");
    let message = assert_error(
        app.get("/v1/key", "tg-inf-nope").await,
        401,
        "authentication_error",
        "invalid_api_key",
    )
    .await;
    assert!(!message.contains("tg-inf-nope"));
}

#[tokio::test]
async fn revoked_provisioning_keys_stop_at_once() {
    let app = spawn_app().await;
    let (account, key) = app.new_account("ops").await;
    assert_eq!(app.get("/v1/account/balance", &key).await.status(), 200);
    let keys = app
        .state
        .accounts
        .list_keys(account, tollgate::store::KeyKind::Provisioning)
        .await
        .expect("list");
    assert!(app
        .state
        .accounts
        .revoke_provisioning_key(keys[0].id)
        .await
        .expect("revoke"));
    let message = assert_error(
        app.get("/v1/account/balance", &key).await,
        401,
        "authentication_error",
        "key_deleted",
    )
    .await;
    assert!(message.contains("revoked"), "{message}");
}

#[tokio::test]
async fn the_database_holds_only_hashes() {
    let app = spawn_app().await;
    let (_, key) = app.create_key(json!({"name": "secret holder"})).await;
    // Read every byte of the database files: no plaintext, only the hash.
    let mut everything = Vec::new();
    for entry in std::fs::read_dir(app.dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "txt") {
            continue; // the bootstrap key file is the one place the plaintext is meant to be
        }
        everything.extend(std::fs::read(&path).expect("read"));
    }
    let haystack = String::from_utf8_lossy(&everything);
    for secret in [&key, &app.prov_key] {
        let random_part = &secret[secret.rfind('-').expect("prefix") + 1..];
        assert!(
            !haystack.contains(random_part),
            "plaintext found in the database files"
        );
        assert!(
            haystack.contains(&tollgate::auth::hash_key(secret)),
            "hash not found"
        );
    }
}
