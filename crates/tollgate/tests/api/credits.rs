//! Expiring credits through the running server: `GET /v1/account/credits`, the balance
//! dropping at an expiry, and a request reserved before an expiry paid from the grant it
//! was reserved against (never taking the balance below zero).

use std::time::Duration;

use serde_json::{json, Value};

use crate::gateway::{chat, ledger, nanos, setup};
use crate::helpers::TestApp;

async fn credits(app: &TestApp, prov: &str) -> Value {
    let response = app.get("/v1/account/credits", prov).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

async fn balance(app: &TestApp, prov: &str) -> i64 {
    let response = app.get("/v1/account/balance", prov).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    nanos(body["balance"].as_str().expect("a decimal string"))
}

#[tokio::test]
async fn credits_lists_grants_newest_first_with_decimal_strings() {
    let app = crate::helpers::spawn_app().await;
    let empty = credits(&app, &app.prov_key).await;
    assert_eq!(
        empty,
        json!({"balance": "0.00", "expired": "0.00", "next_expiry": null, "credits": []})
    );
    let expiry = tollgate::now() + 86_400;
    app.state
        .accounts
        .grant(
            app.account_id,
            "10".parse().expect("amount"),
            Some("monthly"),
            Some(expiry),
        )
        .await
        .expect("grant");
    app.grant("2.5").await;
    let listed = credits(&app, &app.prov_key).await;
    assert_eq!(listed["balance"], "12.50");
    assert_eq!(listed["next_expiry"], tollgate::rfc3339(expiry));
    let list = listed["credits"].as_array().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["amount"], "2.50");
    assert_eq!(list[0]["expires_at"], Value::Null);
    assert_eq!(list[0]["note"], Value::Null);
    assert_eq!(list[1]["amount"], "10.00");
    assert_eq!(list[1]["remaining"], "10.00");
    assert_eq!(list[1]["expired"], "0.00");
    assert_eq!(list[1]["note"], "monthly");
    assert_eq!(list[1]["status"], "active");
    assert_eq!(list[1]["expires_at"], tollgate::rfc3339(expiry));
    assert!(list[1]["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Another account sees only its own grants; an inference key is refused.
    let (_, other) = app.new_account("other").await;
    assert_eq!(credits(&app, &other).await["credits"], json!([]));
    let key = app.inference_key().await;
    assert_eq!(app.get("/v1/account/credits", &key).await.status(), 401);

    // A grant that expires in the past is refused before anything is written.
    let refused = app
        .state
        .accounts
        .grant(
            app.account_id,
            "1".parse().expect("amount"),
            None,
            Some(tollgate::now() - 1),
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(
        credits(&app, &app.prov_key).await["credits"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

/// One grant, expiring while a request reserved before it is still running: the balance
/// drops at the expiry to what that request holds, the request is paid from the grant,
/// and the rest of the grant expires once it is done. The balance never goes below zero.
#[tokio::test]
async fn a_grant_expires_and_a_request_across_the_expiry_is_paid_from_it() {
    let (app, _upstream, _) = setup().await;
    let (account, prov) = app.new_account("expiring").await;
    let expiry = tollgate::now() + 3;
    app.state
        .accounts
        .grant(account, "1".parse().expect("amount"), None, Some(expiry))
        .await
        .expect("grant");
    let response = app
        .post("/v1/account/keys", &prov, &json!({"name": "k"}))
        .await;
    assert_eq!(response.status(), 201);
    let key: Value = response.json().await.expect("json");
    let key = key["key"].as_str().expect("plaintext").to_string();

    let first = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "before the expiry"),
        )
        .await;
    assert_eq!(first.status(), 200);
    let c1 = nanos(first.headers()["x-tollgate-cost"].to_str().expect("cost"));

    // Reserved now, answered after the expiry.
    let slow = {
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        let key = key.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&chat("gpt-test", "across [[fake:first_byte_ms=5000]]"))
                .send()
                .await
                .expect("send")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tollgate::now() <= expiry {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the expiry, with the slow request in flight: only what it holds is left.
    let held = balance(&app, &prov).await;
    assert!(held > 0 && held < nanos("0.01"), "held {held}");
    assert!(
        !slow.is_finished(),
        "the slow request must still be in flight"
    );
    let refused = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "after the expiry"),
        )
        .await;
    assert_eq!(
        refused.status(),
        402,
        "what the request in flight holds is not spendable"
    );

    let slow = slow.await.expect("task");
    assert_eq!(slow.status(), 200);
    let c2 = nanos(slow.headers()["x-tollgate-cost"].to_str().expect("cost"));
    assert!(c2 > 0 && c2 <= held);

    // Its charge came from the grant; what was left of the grant is gone.
    let listed = credits(&app, &prov).await;
    assert_eq!(listed["balance"], "0.00");
    let grant = &listed["credits"][0];
    assert_eq!(grant["remaining"], "0.00");
    assert_eq!(grant["status"], "expired");
    assert_eq!(
        nanos(grant["expired"].as_str().expect("expired")),
        nanos("1") - c1 - c2
    );
    assert_eq!(
        nanos(listed["expired"].as_str().expect("expired")),
        nanos("1") - c1 - c2
    );
    // The ledger agrees: grants − charges − expired = balance = 0.
    let charged: i64 = ledger(&app)
        .await
        .iter()
        .filter(|r| r.4 == c1 || r.4 == c2)
        .map(|r| r.4)
        .sum();
    assert!(charged >= c1 + c2);
    let account = app
        .state
        .accounts
        .account(account)
        .await
        .expect("store")
        .expect("account");
    assert_eq!(account.charged.nanos(), c1 + c2);
    assert_eq!(account.balance().nanos(), 0);
    assert_eq!(
        account.granted.nanos() - account.charged.nanos() - account.expired.nanos(),
        0
    );
}

/// An account nobody uses: its expiry is processed by the server within a second or two,
/// without a request or a read of its balance.
#[tokio::test]
async fn an_idle_accounts_expiry_is_processed_on_time() {
    let app = crate::helpers::spawn_app().await;
    let (account, _) = app.new_account("idle").await;
    let expiry = tollgate::now() + 2;
    app.state
        .accounts
        .grant(account, "3".parse().expect("amount"), None, Some(expiry))
        .await
        .expect("grant");
    app.state
        .accounts
        .grant(account, "1".parse().expect("amount"), None, None)
        .await
        .expect("grant");
    let mut seen = None;
    for _ in 0..80 {
        let a = app
            .state
            .accounts
            .account(account)
            .await
            .expect("store")
            .expect("account");
        if a.expired.nanos() > 0 {
            seen = Some((tollgate::now(), a));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (at, a) = seen.expect("the expiry was never processed");
    assert!(at >= expiry, "expired early");
    assert!(
        at <= expiry + 3,
        "processed {}s after the expiry",
        at - expiry
    );
    assert_eq!(a.expired.nanos(), nanos("3"));
    assert_eq!(a.balance().nanos(), nanos("1"));
    assert_eq!(a.next_expiry, None);
}
