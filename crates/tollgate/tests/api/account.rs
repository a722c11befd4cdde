//! `/v1/account/*`: keys, balance, activity, and isolation between accounts.

use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn create_returns_the_plaintext_once_and_list_never_does() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/account/keys",
            &app.prov_key,
            &json!({"name": "CI worker", "credit_limit": 25.0}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("json");
    let plaintext = created["key"].as_str().expect("key").to_string();
    assert!(plaintext.starts_with("tg-inf-"));
    assert_eq!(created["name"], "CI worker");
    assert_eq!(created["credit_limit"], 25.0);
    assert_eq!(created["is_enabled"], true);
    assert_eq!(created["expires_at"], Value::Null);
    assert_eq!(created["usage"], "0.00");
    assert_eq!(created["limit_remaining"], "25.00");
    assert_eq!(
        created["message"],
        "Store this key securely. It will not be shown again."
    );
    assert!(created["hint"]
        .as_str()
        .expect("hint")
        .ends_with(&plaintext[plaintext.len() - 4..]));
    let id = created["id"].as_i64().expect("integer id");

    let list: Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    let keys = list["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id);
    assert!(keys[0].get("key").is_none());
    assert!(!list.to_string().contains(&plaintext[7..]));

    let one = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.expect("json");
    assert_eq!(one["name"], "CI worker");
    assert!(one.get("key").is_none());
}

#[tokio::test]
async fn patch_distinguishes_absent_from_null() {
    let app = spawn_app().await;
    let (id, _) = app
        .create_key(json!({"name": "k", "credit_limit": 10, "expires_at": "2099-01-01T00:00:00Z"}))
        .await;
    let path = format!("/v1/account/keys/{id}");

    // Absent fields stay as they were.
    let renamed: Value = app
        .patch(&path, &app.prov_key, &json!({"name": "renamed"}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(renamed["name"], "renamed");
    assert_eq!(renamed["credit_limit"], 10.0);
    assert_eq!(renamed["expires_at"], "2099-01-01T00:00:00Z");

    // null removes the limit and the expiry.
    let cleared: Value = app
        .patch(
            &path,
            &app.prov_key,
            &json!({"credit_limit": null, "expires_at": null}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cleared["credit_limit"], Value::Null);
    assert_eq!(cleared["limit_remaining"], Value::Null);
    assert_eq!(cleared["expires_at"], Value::Null);
    assert_eq!(cleared["name"], "renamed");

    let limited: Value = app
        .patch(
            &path,
            &app.prov_key,
            &json!({"credit_limit": 2.5, "is_enabled": false}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(limited["credit_limit"], 2.5);
    assert_eq!(limited["is_enabled"], false);

    // An empty patch changes nothing and answers the key.
    let same: Value = app
        .patch(&path, &app.prov_key, &json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(same["credit_limit"], 2.5);
    assert_eq!(same["name"], "renamed");
}

#[tokio::test]
async fn delete_is_204_and_irreversible() {
    let app = spawn_app().await;
    let (id, key) = app.create_key(json!({"name": "gone"})).await;
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    let path = format!("/v1/account/keys/{id}");
    let response = app.delete(&path, &app.prov_key).await;
    assert_eq!(response.status(), 204);
    assert_eq!(response.bytes().await.expect("body").len(), 0);
    // Stops working at once, with its own message.
    let message = assert_error(
        app.get("/v1/key", &key).await,
        401,
        "authentication_error",
        "key_deleted",
    )
    .await;
    assert!(message.contains("deleted"));
    assert_error(
        app.get(&path, &app.prov_key).await,
        404,
        "not_found_error",
        "key_not_found",
    )
    .await;
    assert_error(
        app.delete(&path, &app.prov_key).await,
        404,
        "not_found_error",
        "key_not_found",
    )
    .await;
    assert_error(
        app.patch(&path, &app.prov_key, &json!({"is_enabled": true}))
            .await,
        404,
        "not_found_error",
        "key_not_found",
    )
    .await;
    let list: Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["keys"], json!([]));
}

#[tokio::test]
async fn disabled_and_expired_keys_are_refused_at_once() {
    let app = spawn_app().await;
    let (id, key) = app.create_key(json!({"name": "k"})).await;
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    let path = format!("/v1/account/keys/{id}");
    app.patch(&path, &app.prov_key, &json!({"is_enabled": false}))
        .await;
    let message = assert_error(
        app.get("/v1/key", &key).await,
        401,
        "authentication_error",
        "key_disabled",
    )
    .await;
    assert!(message.contains("disabled"), "{message}");
    app.patch(&path, &app.prov_key, &json!({"is_enabled": true}))
        .await;
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);

    // Expiry: set a near future, then wait it out.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let response = app
        .patch(&path, &app.prov_key, &json!({"expires_at": soon}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let message = assert_error(
        app.get("/v1/key", &key).await,
        401,
        "authentication_error",
        "key_expired",
    )
    .await;
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn balance_is_grants_minus_charges_as_a_decimal_string() {
    let app = spawn_app().await;
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(balance, json!({"balance": "0.00"}));
    app.grant("100").await;
    app.grant("25.5").await;
    app.grant("0.000000001").await;
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(balance, json!({"balance": "125.500000001"}));
}

#[tokio::test]
async fn activity_with_no_usage_is_zero_and_days_are_checked() {
    let app = spawn_app().await;
    let activity: Value = app
        .get("/v1/account/activity?days=7", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        activity,
        json!({"period_days": 7,
               "total_stats": {"total_requests": 0, "total_cost": "0.00",
                               "total_input_tokens": 0, "total_output_tokens": 0,
                               "estimated_requests": 0, "fallback_requests": 0},
               "daily_stats": [], "top_models": [], "api_key_usage": []})
    );
    let default: Value = app
        .get("/v1/account/activity", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(default["period_days"], 30);
    for bad in ["0", "31", "-1", "abc", "7.5", ""] {
        let response = app
            .get(&format!("/v1/account/activity?days={bad}"), &app.prov_key)
            .await;
        let message = assert_error(response, 400, "invalid_request_error", "invalid_field").await;
        assert!(message.contains("1 to 30"), "{message}");
    }
}

#[tokio::test]
async fn activity_rolls_up_usage_records() {
    use tollgate::billing::Credits;
    use tollgate::store::{KeyId, UsageRecord};
    let app = spawn_app().await;
    let (a, _) = app.create_key(json!({"name": "alpha"})).await;
    let (b, _) = app.create_key(json!({"name": "beta"})).await;
    let now = tollgate::now();
    let record = |n: u32, key: i64, model: &str, cost: i64, at: i64| UsageRecord {
        request_id: format!("r{n}"),
        account_id: app.account_id,
        key_id: KeyId(key),
        model: model.to_string(),
        endpoint: "chat.completions".into(),
        input_tokens: 10,
        cached_input_tokens: 0,
        output_tokens: 5,
        cost: Credits::from_nanos(cost),
        status: 200,
        latency_ms: 3,
        created_at: at,
        detail: Default::default(),
    };
    let batch = vec![
        record(1, a, "m1", 1_000_000_000, now),
        record(2, a, "m2", 250_000_000, now),
        record(3, b, "m1", 10, now - 86_400),
        record(4, b, "m1", 7, now - 40 * 86_400), // outside 30 days
    ];
    let written = app.state.store.record_usage(&batch).await.expect("record");
    assert_eq!(written, vec![true; 4]);
    // A replayed record is not written (nor charged) twice.
    let again = app
        .state
        .store
        .record_usage(&batch[..1])
        .await
        .expect("record");
    assert_eq!(again, vec![false]);

    let activity: Value = app
        .get("/v1/account/activity?days=2", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(activity["total_stats"]["total_requests"], 3);
    assert_eq!(activity["total_stats"]["total_cost"], "1.25000001");
    assert_eq!(activity["total_stats"]["total_input_tokens"], 30);
    assert_eq!(activity["total_stats"]["total_output_tokens"], 15);
    assert_eq!(activity["daily_stats"].as_array().expect("days").len(), 2);
    assert_eq!(activity["top_models"][0]["model_name"], "m1");
    assert_eq!(activity["top_models"][0]["request_count"], 2);
    assert_eq!(activity["top_models"][0]["total_cost"], "1.00000001");
    assert_eq!(activity["api_key_usage"][0]["api_key_id"], a);
    assert_eq!(activity["api_key_usage"][0]["api_key_name"], "alpha");
    assert_eq!(activity["api_key_usage"][0]["total_cost"], "1.25");
    assert_eq!(activity["api_key_usage"][1]["request_count"], 1);

    let one_day: Value = app
        .get("/v1/account/activity?days=1", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(one_day["total_stats"]["total_requests"], 2);

    // The key's usage and the balance follow the ledger.
    let key: Value = app
        .get(&format!("/v1/account/keys/{a}"), &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(key["usage"], "1.25");
    assert!(key["last_used_at"].is_string());
    app.grant("10").await;
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(balance["balance"], "8.749999983");
}

#[tokio::test]
async fn accounts_cannot_see_change_or_delete_each_others_keys() {
    let app = spawn_app().await;
    let (_, other_prov) = app.new_account("other").await;
    let (mine, _) = app.create_key(json!({"name": "mine"})).await;
    let (theirs, _) = {
        let response = app
            .post("/v1/account/keys", &other_prov, &json!({"name": "theirs"}))
            .await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        (body["id"].as_i64().expect("id"), ())
    };
    for (key, foreign) in [(&app.prov_key, theirs), (&other_prov, mine)] {
        let path = format!("/v1/account/keys/{foreign}");
        assert_error(
            app.get(&path, key).await,
            404,
            "not_found_error",
            "key_not_found",
        )
        .await;
        assert_error(
            app.patch(&path, key, &json!({"name": "hijack"})).await,
            404,
            "not_found_error",
            "key_not_found",
        )
        .await;
        assert_error(
            app.delete(&path, key).await,
            404,
            "not_found_error",
            "key_not_found",
        )
        .await;
    }
    let mine_list: Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    let theirs_list: Value = app
        .get("/v1/account/keys", &other_prov)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(mine_list["keys"].as_array().expect("keys").len(), 1);
    assert_eq!(mine_list["keys"][0]["name"], "mine");
    assert_eq!(theirs_list["keys"].as_array().expect("keys").len(), 1);
    assert_eq!(theirs_list["keys"][0]["name"], "theirs");
    // Nothing was changed by the attempts.
    let still: Value = app
        .get(&format!("/v1/account/keys/{theirs}"), &other_prov)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(still["name"], "theirs");
}
