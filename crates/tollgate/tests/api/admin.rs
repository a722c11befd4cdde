//! `/v1/admin/*`, the operator API: what it does, and that operator keys work there only
//! and no other key does.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app, TestApp};

async fn operator_key(app: &TestApp) -> String {
    app.state
        .accounts
        .create_operator_key("ops")
        .await
        .expect("operator key")
        .1
}

#[tokio::test]
async fn the_operator_creates_an_account_grants_credits_and_mints_a_key_that_works() {
    let app = spawn_app().await;
    let op = operator_key(&app).await;
    assert!(op.starts_with("tg-op-"));

    let created = app
        .post("/v1/admin/accounts", &op, &json!({"name": "acme"}))
        .await;
    assert_eq!(created.status(), 201);
    let account: Value = created.json().await.expect("json");
    assert_eq!(account["name"], "acme");
    assert_eq!(account["balance"], "0.00");
    let id = account["id"].as_i64().expect("id");

    let duplicate = app
        .post("/v1/admin/accounts", &op, &json!({"name": "acme"}))
        .await;
    assert_error(duplicate, 409, "invalid_request_error", "account_exists").await;

    // Amounts are exact: a string or a number, to the last of nine decimals.
    let granted = app
        .post(
            &format!("/v1/admin/accounts/{id}/grants"),
            &op,
            &json!({"amount": "12.50", "note": "first credits"}),
        )
        .await;
    assert_eq!(granted.status(), 201);
    let grant: Value = granted.json().await.expect("json");
    assert_eq!(grant["amount"], "12.50");
    assert_eq!(grant["note"], "first credits");
    assert_eq!(grant["balance"], "12.50");
    let second = app
        .post_raw(
            &format!("/v1/admin/accounts/{id}/grants"),
            &op,
            r#"{"amount": 0.000000001}"#,
        )
        .await;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["balance"], "12.500000001");
    assert_eq!(second["note"], Value::Null);

    let grants: Value = app
        .get(&format!("/v1/admin/accounts/{id}/grants"), &op)
        .await
        .json()
        .await
        .expect("json");
    let grants = grants["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0]["amount"], "12.50");
    assert_eq!(grants[1]["amount"], "0.000000001");

    let one: Value = app
        .get(&format!("/v1/admin/accounts/{id}"), &op)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(one["balance"], "12.500000001");
    let all: Value = app
        .get("/v1/admin/accounts", &op)
        .await
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = all["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["default", "acme"]);

    // The provisioning key: plaintext once, then it works on the account's own data.
    let minted = app
        .post(
            &format!("/v1/admin/accounts/{id}/provisioning-keys"),
            &op,
            &json!({"name": "acme admin"}),
        )
        .await;
    assert_eq!(minted.status(), 201);
    let minted: Value = minted.json().await.expect("json");
    let prov = minted["key"].as_str().expect("key").to_string();
    assert!(prov.starts_with("tg-prov-"));
    assert_eq!(minted["account_id"], id);
    let balance: Value = app
        .get("/v1/account/balance", &prov)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(balance["balance"], "12.500000001");

    let key_id = minted["id"].as_i64().expect("id");
    let revoked = app
        .delete(&format!("/v1/admin/provisioning-keys/{key_id}"), &op)
        .await;
    assert_eq!(revoked.status(), 204);
    let refused = app.get("/v1/account/balance", &prov).await;
    assert_error(refused, 401, "authentication_error", "key_deleted").await;
    let again = app
        .delete(&format!("/v1/admin/provisioning-keys/{key_id}"), &op)
        .await;
    assert_error(again, 404, "not_found_error", "key_not_found").await;
}

#[tokio::test]
async fn no_other_key_works_on_the_operator_api_and_operator_keys_work_nowhere_else() {
    let app = spawn_app().await;
    let op = operator_key(&app).await;
    let inference = app.inference_key().await;
    let paths = [
        "/v1/admin/accounts",
        "/v1/admin/accounts/1",
        "/v1/admin/accounts/1/grants",
    ];
    for path in paths {
        for (key, code) in [
            (app.prov_key.as_str(), "wrong_key_kind"),
            (inference.as_str(), "wrong_key_kind"),
            (
                "tg-op-000000000000000000000000000000000000000000000000",
                "invalid_api_key",
            ),
            ("something-else", "invalid_api_key"),
        ] {
            let message =
                assert_error(app.get(path, key).await, 401, "authentication_error", code).await;
            assert!(message.contains("operator key"), "{message}");
        }
        let bare = app.client.get(app.url(path)).send().await.expect("request");
        let message = assert_error(bare, 401, "authentication_error", "missing_api_key").await;
        assert!(
            message.contains("Authorization: Bearer YOUR_OPERATOR_KEY"),
            "{message}"
        );
        let header = app
            .client
            .get(app.url(path))
            .header("x-api-key", &op)
            .send()
            .await
            .expect("request");
        assert_error(
            header,
            401,
            "authentication_error",
            "malformed_authorization",
        )
        .await;
    }
    // Writes are refused as well, and change nothing.
    let write = app
        .post(
            "/v1/admin/accounts/1/grants",
            &app.prov_key,
            &json!({"amount": "5"}),
        )
        .await;
    assert_error(write, 401, "authentication_error", "wrong_key_kind").await;
    let mint = app
        .post(
            "/v1/admin/accounts/1/provisioning-keys",
            &inference,
            &json!({}),
        )
        .await;
    assert_error(mint, 401, "authentication_error", "wrong_key_kind").await;
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(balance["balance"], "0.00");

    // The operator key on the account and model surfaces.
    for path in ["/v1/account/keys", "/v1/account/balance", "/v1/key"] {
        let message = assert_error(
            app.get(path, &op).await,
            401,
            "authentication_error",
            "wrong_key_kind",
        )
        .await;
        assert!(message.contains("operator key"), "{message}");
    }
    let chat = app
        .post(
            "/v1/chat/completions",
            &op,
            &json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_error(chat, 401, "authentication_error", "wrong_key_kind").await;

    // A revoked operator key stops working at once.
    let (key, _) = app
        .state
        .accounts
        .list_operator_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| (k.id, k.name))
        .next()
        .expect("one key");
    assert!(app
        .state
        .accounts
        .revoke_operator_key(key)
        .await
        .expect("revoke"));
    let revoked = app.get("/v1/admin/accounts", &op).await;
    assert_error(revoked, 401, "authentication_error", "key_deleted").await;
}

#[tokio::test]
async fn bad_operator_requests_are_clear_errors() {
    let app = spawn_app().await;
    let op = operator_key(&app).await;
    let path = format!("/v1/admin/accounts/{}/grants", app.account_id.0);
    for (body, param) in [
        (json!({"amount": "0"}), "amount"),
        (json!({"amount": "-5"}), "amount"),
        (json!({"amount": "1.0000000001"}), "amount"),
        (json!({"amount": "ten"}), "amount"),
        (json!({"amount": true}), "amount"),
        (json!({"note": "no amount"}), "amount"),
        (json!({"amount": "1", "note": 5}), "note"),
        (json!({"amount": "1", "extra": 1}), "extra"),
        (json!({"amount": "100000000000"}), "amount"),
    ] {
        let response = app.post(&path, &op, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let grants: Value = app.get(&path, &op).await.json().await.expect("json");
    assert_eq!(grants["grants"], json!([]));

    for (path, code) in [
        ("/v1/admin/accounts/999", "account_not_found"),
        ("/v1/admin/accounts/999/grants", "account_not_found"),
    ] {
        assert_error(app.get(path, &op).await, 404, "not_found_error", code).await;
    }
    let minted = app
        .post("/v1/admin/accounts/999/provisioning-keys", &op, &json!({}))
        .await;
    assert_error(minted, 404, "not_found_error", "account_not_found").await;
    assert_error(
        app.get("/v1/admin/accounts/abc", &op).await,
        400,
        "invalid_request_error",
        "invalid_field",
    )
    .await;
    for body in [json!({}), json!({"name": ""}), json!({"name": 3})] {
        let response = app.post("/v1/admin/accounts", &op, &body).await;
        assert_error(response, 400, "invalid_request_error", "invalid_field").await;
    }
    let revoke_inference = app
        .delete(
            &format!(
                "/v1/admin/provisioning-keys/{}",
                app.create_key(json!({"name": "i"})).await.0
            ),
            &op,
        )
        .await;
    assert_error(revoke_inference, 404, "not_found_error", "key_not_found").await;
}

#[tokio::test]
async fn the_minted_plaintext_appears_in_one_response_and_never_in_the_database() {
    let app = spawn_app().await;
    let op = operator_key(&app).await;
    let minted: Value = app
        .post(
            &format!("/v1/admin/accounts/{}/provisioning-keys", app.account_id.0),
            &op,
            &json!({}),
        )
        .await
        .json()
        .await
        .expect("json");
    let plaintext = minted["key"].as_str().expect("key");
    assert_eq!(minted["name"], "provisioning");
    let secret = &plaintext["tg-prov-".len()..];
    for path in [
        "/v1/admin/accounts".to_string(),
        format!("/v1/admin/accounts/{}", app.account_id.0),
        format!("/v1/admin/accounts/{}/grants", app.account_id.0),
    ] {
        let text = app.get(&path, &op).await.text().await.expect("text");
        assert!(!text.contains(secret), "{path}");
    }
    app.state.writer.flushed().await;
    let db = std::fs::read(app.dir.path().join("tollgate.db")).expect("db");
    let wal = std::fs::read(app.dir.path().join("tollgate.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        for secret in [secret, &op["tg-op-".len()..]] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }
}
