//! The web console's flows over the HTTP it serves: the operator's, an account holder's
//! key through a real model call into the chart, the log and the CSV, the console on
//! PostgreSQL, and the `[console]` section.

use tollgate::billing::Credits;
use tollgate::store::{KeyId, UsageDetail, UsageRecord};

use crate::console::Browser;
use crate::gateway::{chat, setup};
use crate::helpers::spawn_app;

#[tokio::test]
async fn the_operator_creates_an_account_grants_credits_and_mints_a_key_from_the_console() {
    let app = spawn_app().await;
    let (_, op_key) = app
        .state
        .accounts
        .create_operator_key("console")
        .await
        .expect("operator key");
    let op = Browser::signed_in(&app, &op_key).await;
    let home = op.get("/console").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("Create an account"));
    assert!(home.body.contains(">default<"));
    // Account pages are not the operator's.
    assert_eq!(op.get("/console/keys").await.status, 404);
    let token = home.csrf();
    let created = op
        .post("/console/accounts", &[("name", "acme"), ("csrf", &token)])
        .await;
    let location = created.location.clone().expect("redirect");
    assert!(location.starts_with("/console/accounts/"), "{location}");
    let id = location
        .trim_start_matches("/console/accounts/")
        .split('?')
        .next()
        .expect("id")
        .to_string();
    let dup = op
        .post("/console/accounts", &[("name", "acme"), ("csrf", &token)])
        .await;
    assert_eq!(dup.status, 409);
    assert!(dup.body.contains("already exists"));
    let bad = op
        .post(
            &format!("/console/accounts/{id}/grants"),
            &[("amount", "-3"), ("csrf", &token)],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("more than zero"), "{}", bad.body);
    let granted = op
        .post(
            &format!("/console/accounts/{id}/grants"),
            &[
                ("amount", "12.50"),
                ("note", "Invoice 31"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(granted.status, 303);
    let page = op.get(&format!("/console/accounts/{id}")).await;
    assert!(
        page.body.contains("data-balance=\"12.50\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("Invoice 31"));
    let minted = op
        .post(
            &format!("/console/accounts/{id}/provisioning-keys"),
            &[("name", "acme admin"), ("csrf", &token)],
        )
        .await;
    assert_eq!(minted.status, 200);
    let prov = minted.secret().expect("plaintext once");
    assert!(prov.starts_with("tg-prov-"));
    assert!(!op
        .get(&format!("/console/accounts/{id}"))
        .await
        .body
        .contains(&prov));
    // The account holder signs in with it and sees the balance.
    let holder = Browser::signed_in(&app, &prov).await;
    let overview = holder.get("/console").await;
    assert!(overview.body.contains("Account · acme"));
    assert!(overview.body.contains("data-balance=\"12.50\""));
    // Revoking it from the console ends the holder's session.
    let page = op.get(&format!("/console/accounts/{id}")).await;
    let at = page
        .body
        .find("/console/provisioning-keys/")
        .expect("revoke form");
    let key_id: String = page.body[at + 27..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let revoked = op
        .post(
            &format!("/console/provisioning-keys/{key_id}/revoke"),
            &[("account_id", &id), ("csrf", &token)],
        )
        .await;
    assert_eq!(revoked.status, 303);
    assert!(holder
        .get("/console")
        .await
        .redirects_to("/console/sign-in"));
}

#[tokio::test]
async fn a_model_call_shows_in_the_chart_the_log_and_the_csv() {
    let (app, _upstream, _) = setup().await;
    let browser = Browser::signed_in(&app, &app.prov_key).await;
    let token = browser.csrf().await;
    let created = browser
        .post("/console/keys", &[("name", "chart key"), ("csrf", &token)])
        .await;
    let secret = created.secret().expect("secret");
    let id = app
        .get("/v1/key", &secret)
        .await
        .json::<serde_json::Value>()
        .await
        .expect("json")["id"]
        .as_i64()
        .expect("id");
    // Edit the limit, then call a model with the key.
    let edited = browser
        .post(
            &format!("/console/keys/{id}"),
            &[
                ("name", "chart key"),
                ("is_enabled", "on"),
                ("credit_limit", "5"),
                ("limit_reset", "daily"),
                ("csrf", &token),
            ],
        )
        .await;
    assert!(
        edited.redirects_to("/console/keys?done=saved"),
        "{}",
        edited.body
    );
    let bad = browser
        .post(
            &format!("/console/keys/{id}"),
            &[
                ("name", "chart key"),
                ("credit_limit", "lots"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("credit_limit"), "{}", bad.body);
    let response = app
        .post("/v1/chat/completions", &secret, &chat("gpt-test", "hello"))
        .await;
    assert_eq!(response.status(), 200);
    let cost = response.headers()["x-tollgate-cost"]
        .to_str()
        .expect("cost")
        .to_string();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let overview = browser.get("/console").await;
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let credits: Credits = cost.parse().expect("decimal");
    assert!(
        overview
            .body
            .contains(&format!("data-day=\"{today}\" data-total=\"{credits}\"")),
        "{cost} on {today}: {}",
        overview.body
    );
    assert!(overview.body.contains("data-model=\"gpt-test\""));
    assert!(!overview.body.contains("No models yet"));
    let keys = browser.get("/console/keys").await;
    assert!(keys.body.contains("$5.00 daily"), "{}", keys.body);
    let log = browser
        .get(&format!("/console/requests?key_id={id}&status=success"))
        .await;
    assert!(log.body.contains(&request_id), "{}", log.body);
    let none = browser.get("/console/requests?status=error").await;
    assert!(!none.body.contains(&request_id));
    let detail = browser
        .get(&format!("/console/requests/{request_id}"))
        .await;
    assert_eq!(detail.status, 200);
    assert!(detail.body.contains("gpt-test"));
    let csv = browser
        .get(&format!("/console/requests/export?key_id={id}"))
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("request_id,created_at"));
    assert!(csv.body.contains(&request_id));
    // Deleted from the console: it stops working.
    let deleted = browser
        .post(&format!("/console/keys/{id}/delete"), &[("csrf", &token)])
        .await;
    assert!(deleted.redirects_to("/console/keys?done=deleted"));
    assert_eq!(app.get("/v1/key", &secret).await.status(), 401);
}

#[tokio::test]
async fn the_console_works_on_postgresql() {
    crate::overflow::with_postgres_database(|url| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = crate::helpers::spawn_app_on(dir, &url, "", &|_| None).await;
        app.grant("3").await;
        let browser = Browser::signed_in(&app, &app.prov_key).await;
        let token = browser.csrf().await;
        let created = browser
            .post("/console/keys", &[("name", "pg key"), ("csrf", &token)])
            .await;
        let secret = created.secret().expect("secret");
        let me: serde_json::Value = app
            .get("/v1/key", &secret)
            .await
            .json()
            .await
            .expect("json");
        let id = me["id"].as_i64().expect("id");
        app.state
            .store
            .record_usage(&[UsageRecord {
                request_id: "req_pg_console".into(),
                account_id: app.account_id,
                key_id: KeyId(id),
                model: "pg-model".into(),
                endpoint: "chat.completions".into(),
                input_tokens: 3,
                cached_input_tokens: 0,
                output_tokens: 4,
                cost: Credits::from_nanos(1_250_000_000),
                status: 200,
                latency_ms: 9,
                created_at: tollgate::now(),
                detail: UsageDetail::default(),
            }])
            .await
            .expect("usage");
        let overview = browser.get("/console").await;
        let today = time::OffsetDateTime::now_utc().date().to_string();
        assert!(
            overview
                .body
                .contains(&format!("data-day=\"{today}\" data-total=\"1.25\"")),
            "{}",
            overview.body
        );
        assert!(overview.body.contains("data-balance=\"1.75\""));
        assert!(browser
            .get("/console/requests")
            .await
            .body
            .contains("req_pg_console"));
        let (_, op_key) = app
            .state
            .accounts
            .create_operator_key("pg")
            .await
            .expect("operator key");
        let op = Browser::signed_in(&app, &op_key).await;
        let accounts = op.get("/console").await;
        assert!(accounts.body.contains("$1.25"), "{}", accounts.body);
        let out = browser.post("/console/sign-out", &[("csrf", &token)]).await;
        assert!(out.redirects_to("/console/sign-in"));
        assert!(browser
            .get("/console")
            .await
            .redirects_to("/console/sign-in"));
    })
    .await;
}

#[tokio::test]
async fn the_console_section_sets_the_session_length_and_secure_cookies() {
    let app =
        crate::helpers::spawn_app_with("[console]\nsession_hours = 1\nsecure_cookie = true\n")
            .await;
    let mut browser = Browser::new(&app);
    let cookie = browser
        .sign_in(&app.prov_key)
        .await
        .set_cookie
        .expect("cookie");
    assert!(cookie.contains("Max-Age=3600"), "{cookie}");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    app.state.config.clock.set(tollgate::now() + 3601);
    assert!(browser
        .get("/console")
        .await
        .redirects_to("/console/sign-in"));
    for (bad, says) in [
        ("session_hours = 0", "console.session_hours"),
        ("session_hours = 721", "console.session_hours"),
        ("lifetime = 3", "unknown field `lifetime`"),
    ] {
        let toml = format!("[console]\n{bad}\n");
        let e = tollgate::config::Config::from_toml(&toml, &Default::default(), &|_| None)
            .expect_err(bad)
            .to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[tokio::test]
async fn the_edit_form_changes_every_field_the_api_can_and_clears_them_again() {
    let (app, _upstream, _) = setup().await;
    let browser = Browser::signed_in(&app, &app.prov_key).await;
    let token = browser.csrf().await;
    let (id, _) = app.create_key(serde_json::json!({"name": "edited"})).await;
    let path = format!("/console/keys/{id}");
    let saved = browser
        .post(
            &path,
            &[
                ("name", "renamed"),
                ("credit_limit", "12345678.123456789"),
                ("limit_reset", "weekly"),
                ("expires_at", "2099-12-31T23:30"),
                ("rate_limit_rpm", "60"),
                ("allowed_models", "gpt-test, gpt-renamed"),
                ("clamp_max_tokens", "on"),
                ("csrf", &token),
            ],
        )
        .await;
    assert!(
        saved.redirects_to("/console/keys?done=saved"),
        "{}",
        saved.body
    );
    let key: serde_json::Value = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(key["name"], "renamed");
    assert_eq!(key["is_enabled"], false, "the box was not ticked");
    assert_eq!(key["limit_reset"], "weekly");
    assert_eq!(key["expires_at"], "2099-12-31T23:30:00Z");
    assert_eq!(key["rate_limit_rpm"], 60);
    assert_eq!(
        key["allowed_models"],
        serde_json::json!(["gpt-test", "gpt-renamed"])
    );
    assert_eq!(key["clamp_max_tokens"], true);
    let raw = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await
        .text()
        .await
        .expect("text");
    assert!(
        raw.contains("\"credit_limit\":12345678.123456789"),
        "exact: {raw}"
    );
    // The edit page shows what is set; an unknown model is the API's refusal.
    let page = browser.get(&path).await;
    assert!(page.body.contains("value=\"2099-12-31T23:30\""));
    assert!(page.body.contains("value=\"gpt-test, gpt-renamed\""));
    let refused = browser
        .post(
            &path,
            &[
                ("name", "renamed"),
                ("allowed_models", "nope"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("not a model of this gateway"),
        "{}",
        refused.body
    );
    // Empty fields clear what they can.
    let cleared = browser
        .post(
            &path,
            &[("name", "renamed"), ("is_enabled", "on"), ("csrf", &token)],
        )
        .await;
    assert!(cleared.redirects_to("/console/keys?done=saved"));
    let key: serde_json::Value = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    for field in [
        "credit_limit",
        "limit_reset",
        "expires_at",
        "rate_limit_rpm",
        "allowed_models",
    ] {
        assert!(key[field].is_null(), "{field} in {key}");
    }
    assert_eq!(key["is_enabled"], true);
    assert_eq!(key["clamp_max_tokens"], false);
}
