//! Budget windows on one replica, with the gateway's clock moved by the test (no sleeping
//! until midnight): a key's `limit_reset` starts its credit limit again at 00:00 UTC each
//! day, on Mondays, or on the first of the month; a request is charged to the window it
//! was reserved in, also when it ends in the next one.

use serde_json::{json, Value};

use crate::gateway::{chat, ledger, nanos, setup};
use crate::helpers::{assert_error, TestApp};

/// The worst case of `chat("gpt-test", "hi")` with max_tokens 100 is about 0.0002; a limit
/// of 0.001 holds a handful of requests.
const LIMIT: &str = "0.001";

fn at(text: &str) -> i64 {
    tollgate::parse_rfc3339(text).expect("time")
}

fn set_clock(app: &TestApp, text: &str) {
    app.state.config.clock.set(at(text));
}

async fn call(app: &TestApp, key: &str) -> u16 {
    let response = app
        .post("/v1/chat/completions", key, &chat("gpt-test", "hi"))
        .await;
    let status = response.status().as_u16();
    assert!(matches!(status, 200 | 402), "status {status}");
    status
}

/// Spends until the key is refused; answers how many requests were served.
async fn spend_until_refused(app: &TestApp, key: &str) -> usize {
    for served in 0..60 {
        if call(app, key).await == 402 {
            return served;
        }
    }
    panic!("a limit of {LIMIT} never refused");
}

async fn own(app: &TestApp, key: &str) -> Value {
    let response = app.get("/v1/key", key).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// The sum of the ledger's charges.
async fn charged(app: &TestApp) -> i64 {
    ledger(app).await.iter().map(|r| r.4).sum()
}

fn decimal(v: &Value) -> i64 {
    nanos(
        v.as_str()
            .unwrap_or_else(|| panic!("decimal string, not {v}")),
    )
}

async fn windowed_key(app: &TestApp, reset: &str) -> (i64, String) {
    app.create_key(json!({"name": "w", "credit_limit": 0.001, "limit_reset": reset}))
        .await
}

#[tokio::test]
async fn a_daily_limit_starts_again_at_midnight_utc() {
    let (app, _up, _) = setup().await;
    set_clock(&app, "2026-12-01T23:59:00Z");
    let (_, key) = windowed_key(&app, "daily").await;
    let served = spend_until_refused(&app, &key).await;
    assert!(served >= 2, "the limit held {served} requests");
    let spent = charged(&app).await;
    let view = own(&app, &key).await;
    assert_eq!(view["limit_reset"], "daily");
    assert_eq!(decimal(&view["usage_daily"]), spent);
    assert_eq!(decimal(&view["usage_weekly"]), spent);
    assert_eq!(decimal(&view["usage_monthly"]), spent);
    assert_eq!(decimal(&view["limit_remaining"]), nanos(LIMIT) - spent);
    assert_eq!(view["limit_resets_at"], "2026-12-02T00:00:00Z");

    // Still the same day, one second before midnight: refused.
    set_clock(&app, "2026-12-01T23:59:59Z");
    let refused = app
        .post("/v1/chat/completions", &key, &chat("gpt-test", "hi"))
        .await;
    let message = assert_error(refused, 402, "insufficient_quota", "credit_limit_exceeded").await;
    assert!(
        message.contains("resets at 2026-12-02T00:00:00Z"),
        "{message}"
    );

    // Midnight: a new window, the whole limit again.
    set_clock(&app, "2026-12-02T00:00:00Z");
    let view = own(&app, &key).await;
    assert_eq!(decimal(&view["usage_daily"]), 0);
    assert_eq!(decimal(&view["limit_remaining"]), nanos(LIMIT));
    assert_eq!(decimal(&view["usage_weekly"]), spent, "the week goes on");
    assert_eq!(view["limit_resets_at"], "2026-12-03T00:00:00Z");
    let again = spend_until_refused(&app, &key).await;
    assert_eq!(again, served, "the same requests fit into the new day");
    let total = charged(&app).await;
    let view = own(&app, &key).await;
    assert_eq!(decimal(&view["usage_daily"]), total - spent);
    assert_eq!(decimal(&view["usage"]), total, "usage counts every window");
    assert!(total - spent <= nanos(LIMIT));
}

#[tokio::test]
async fn a_weekly_limit_starts_again_on_monday_not_at_midnight() {
    let (app, _up, _) = setup().await;
    set_clock(&app, "2026-12-02T12:00:00Z"); // a Wednesday
    let (id, key) = windowed_key(&app, "weekly").await;
    let served = spend_until_refused(&app, &key).await;
    assert!(served >= 2);
    // Sunday 23:59: the days changed, the week did not.
    set_clock(&app, "2026-12-06T23:59:00Z");
    assert_eq!(call(&app, &key).await, 402);
    let listed: Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    let listed = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(decimal(&listed["usage_daily"]), 0);
    assert_eq!(decimal(&listed["usage_weekly"]), charged(&app).await);
    assert_eq!(listed["limit_resets_at"], "2026-12-07T00:00:00Z");
    // Monday 00:00: a new week.
    set_clock(&app, "2026-12-07T00:00:00Z");
    assert_eq!(call(&app, &key).await, 200);
    let view = own(&app, &key).await;
    assert_eq!(view["limit_resets_at"], "2026-12-14T00:00:00Z");
    assert!(decimal(&view["usage_weekly"]) > 0);
    assert!(decimal(&view["usage_weekly"]) < nanos(LIMIT));
}

#[tokio::test]
async fn a_monthly_limit_follows_calendar_months_and_leap_years() {
    let (app, _up, _) = setup().await;
    set_clock(&app, "2028-01-15T08:00:00Z");
    let (id, key) = windowed_key(&app, "monthly").await;
    let served = spend_until_refused(&app, &key).await;
    set_clock(&app, "2028-01-31T23:59:59Z");
    assert_eq!(call(&app, &key).await, 402, "January is not over");
    set_clock(&app, "2028-02-01T00:00:00Z");
    let view = own(&app, &key).await;
    assert_eq!(decimal(&view["usage_monthly"]), 0);
    assert_eq!(view["limit_resets_at"], "2028-03-01T00:00:00Z");
    assert_eq!(spend_until_refused(&app, &key).await, served);
    // 2028 is a leap year: February 29 is still February.
    set_clock(&app, "2028-02-29T23:59:59Z");
    assert_eq!(call(&app, &key).await, 402);
    set_clock(&app, "2028-03-01T00:00:00Z");
    assert_eq!(call(&app, &key).await, 200);
    // A PATCH to a lifetime limit counts everything spent.
    let patched: Value = app
        .patch(
            &format!("/v1/account/keys/{id}"),
            &app.prov_key,
            &json!({"limit_reset": null}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(patched["limit_reset"], Value::Null);
    assert_eq!(patched["limit_resets_at"], Value::Null);
    assert_eq!(
        decimal(&patched["limit_remaining"]),
        0.max(nanos(LIMIT) - charged(&app).await)
    );
    assert_eq!(call(&app, &key).await, 402, "the lifetime limit is spent");
}

#[tokio::test]
async fn a_request_straddling_midnight_is_charged_to_the_day_it_was_reserved_in() {
    let (app, _up, _) = setup().await;
    set_clock(&app, "2026-12-01T23:59:59Z");
    let (_, key) = windowed_key(&app, "daily").await;
    let slow = {
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        let key = key.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&chat("gpt-test", "late [[fake:first_byte_ms=600]]"))
                .send()
                .await
                .expect("request")
                .status()
        })
    };
    // The request is reserved before the clock moves (its first byte takes 600 ms).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    set_clock(&app, "2026-12-02T00:00:00Z");
    assert_eq!(slow.await.expect("task"), 200);
    let records = ledger(&app).await;
    assert_eq!(records.len(), 1);
    let cost = records[0].4;
    assert!(cost > 0);
    let view = own(&app, &key).await;
    assert_eq!(decimal(&view["usage_daily"]), 0, "charged to December 1st");
    assert_eq!(decimal(&view["usage_weekly"]), cost);
    assert_eq!(decimal(&view["limit_remaining"]), nanos(LIMIT));
    // The new day's whole limit can be spent, exactly as a fresh key's.
    let served = spend_until_refused(&app, &key).await;
    let today = charged(&app).await - cost;
    assert!(served >= 2 && today <= nanos(LIMIT));
    assert_eq!(decimal(&own(&app, &key).await["usage_daily"]), today);
}

#[tokio::test]
async fn limit_reset_is_validated_and_patched() {
    let (app, _up, _) = setup().await;
    for bad in [json!("hourly"), json!(1), json!(["daily"]), json!("Daily")] {
        let response = app
            .post(
                "/v1/account/keys",
                &app.prov_key,
                &json!({"name": "k", "limit_reset": bad}),
            )
            .await;
        let message = assert_error(response, 400, "invalid_request_error", "invalid_field").await;
        assert!(message.contains("limit_reset"), "{message}");
    }
    set_clock(&app, "2026-12-31T10:00:00Z");
    let (id, _) = app.create_key(json!({"name": "k"})).await;
    let created: Value = app
        .get(&format!("/v1/account/keys/{id}"), &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(created["limit_reset"], Value::Null);
    assert_eq!(created["usage_daily"], "0.00");
    let patched: Value = app
        .patch(
            &format!("/v1/account/keys/{id}"),
            &app.prov_key,
            &json!({"limit_reset": "monthly"}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(patched["limit_reset"], "monthly");
    assert_eq!(patched["limit_resets_at"], "2027-01-01T00:00:00Z");
    assert_eq!(patched["limit_remaining"], Value::Null, "no credit_limit");
}
