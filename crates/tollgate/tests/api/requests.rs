//! `GET /v1/account/requests`: the request log, its pages, filters and CSV, and that an
//! account sees only its own requests.

use serde_json::{json, Value};
use tollgate::billing::Credits;
use tollgate::store::{AccountId, KeyId, UsageDetail, UsageRecord};

use crate::gateway::{chat, setup};
use crate::helpers::{assert_error, spawn_app, TestApp};

/// A synthetic ledger record (as the usage writer would append it).
fn record(
    account: AccountId,
    key: i64,
    n: usize,
    at: i64,
    model: &str,
    status: i64,
) -> UsageRecord {
    UsageRecord {
        request_id: format!("req_synthetic_{account:?}_{n}"),
        account_id: account,
        key_id: KeyId(key),
        model: model.to_string(),
        endpoint: "chat.completions".into(),
        input_tokens: n as i64,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost: Credits::from_nanos(1_000 + n as i64),
        status,
        latency_ms: 7,
        created_at: at,
        detail: UsageDetail {
            provider: Some("up".into()),
            attempts: 1,
            ..UsageDetail::default()
        },
    }
}

async fn page(app: &TestApp, key: &str, query: &str) -> Value {
    let response = app.get(&format!("/v1/account/requests{query}"), key).await;
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.expect("json")
}

/// Every request id of the log under `query`, following `next_cursor` to the end.
async fn all_ids(app: &TestApp, key: &str, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let sep = if query.is_empty() { "?" } else { "&" };
        let q = match &cursor {
            Some(c) => format!("{query}{sep}cursor={c}"),
            None => query.to_string(),
        };
        let body = page(app, key, &q).await;
        for r in body["requests"].as_array().expect("requests") {
            ids.push(r["request_id"].as_str().expect("id").to_string());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
    panic!("pages never ended");
}

#[tokio::test]
async fn a_served_request_is_in_the_log_with_its_details_and_in_the_csv() {
    let (app, _upstream, key) = setup().await;
    let response = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "Say hello to the gateway"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let cost = response.headers()["x-tollgate-cost"]
        .to_str()
        .expect("cost")
        .to_string();
    let failed = app
        .post(
            "/v1/chat/completions",
            &key,
            &chat("gpt-test", "[[fake:status=401]]"),
        )
        .await;
    assert_eq!(failed.status(), 502);

    let body = page(&app, &app.prov_key, "").await;
    let rows = body["requests"].as_array().expect("requests");
    let served = rows
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .expect("the served request is listed");
    assert_eq!(served["model"], "gpt-test");
    assert_eq!(served["status"], 200);
    assert_eq!(served["input_tokens"], 9);
    assert_eq!(served["output_tokens"], 12);
    assert_eq!(served["cost"], cost.as_str());
    assert_eq!(served["key_name"], "test");
    assert_eq!(served["endpoint"], "chat.completions");
    assert!(served["provider"].is_string(), "{served}");
    assert!(served["latency_ms"].as_i64().expect("latency") >= 0);
    assert_eq!(served["estimated"], false);
    assert_eq!(served["requested_model"], Value::Null);
    assert_eq!(body["next_cursor"], Value::Null);

    let errors = page(&app, &app.prov_key, "?status=error").await;
    assert!(errors["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .all(|r| r["status"].as_i64().expect("status") >= 400));
    let ok = page(&app, &app.prov_key, "?status=200").await;
    assert_eq!(ok["requests"].as_array().expect("rows").len(), 1);

    for accept in [None, Some("text/csv")] {
        let request = app.client.get(app.url(match accept {
            None => "/v1/account/requests?format=csv",
            Some(_) => "/v1/account/requests",
        }));
        let request = match accept {
            Some(a) => request.header("accept", a),
            None => request,
        };
        let response = request
            .bearer_auth(&app.prov_key)
            .send()
            .await
            .expect("csv");
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv"));
        assert!(response.headers()["content-disposition"]
            .to_str()
            .expect("cd")
            .contains("requests.csv"));
        let text = response.text().await.expect("text");
        let mut lines = text.lines();
        assert!(lines
            .next()
            .expect("header")
            .starts_with("request_id,created_at,key_id"));
        let line = text
            .lines()
            .find(|l| l.starts_with(&request_id))
            .expect("row");
        assert!(line.contains(&format!(",{cost},")), "{line}");
        assert_eq!(text.lines().count(), 1 + rows.len());
    }
}

#[tokio::test]
async fn pages_follow_the_cursor_without_gaps_or_repeats_and_filters_narrow() {
    let app = spawn_app().await;
    let (a, b) = (
        app.create_key(json!({"name": "a"})).await.0,
        app.create_key(json!({"name": "b"})).await.0,
    );
    // 60 records; many share a second, so the cursor must break ties by id.
    let records: Vec<UsageRecord> = (0..60)
        .map(|n| {
            let key = if n % 3 == 0 { b } else { a };
            let model = if n % 2 == 0 { "m-even" } else { "m-odd" };
            let status = if n % 10 == 0 { 502 } else { 200 };
            record(
                app.account_id,
                key,
                n,
                1_700_000_000 + (n as i64 / 4),
                model,
                status,
            )
        })
        .collect();
    app.state
        .store
        .record_usage(&records)
        .await
        .expect("record");

    let ids = all_ids(&app, &app.prov_key, "?limit=7").await;
    let mut expected: Vec<&UsageRecord> = records.iter().collect();
    expected.reverse(); // newest first: later seconds, then later ids
    let expected: Vec<String> = expected.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(ids, expected);

    let by_key = all_ids(&app, &app.prov_key, &format!("?limit=4&key_id={b}")).await;
    let want: Vec<String> = expected
        .iter()
        .filter(|id| {
            records
                .iter()
                .any(|r| &r.request_id == *id && r.key_id == KeyId(b))
        })
        .cloned()
        .collect();
    assert_eq!(by_key, want);
    assert_eq!(by_key.len(), 20);

    let odd_errors = all_ids(&app, &app.prov_key, "?model=m-odd&status=502").await;
    assert!(
        odd_errors.is_empty(),
        "statuses 502 are all on even n: {odd_errors:?}"
    );
    let even_errors = all_ids(&app, &app.prov_key, "?limit=2&model=m-even&status=error").await;
    assert_eq!(even_errors.len(), 6);

    // [from, to): seconds 1_700_000_002 .. 1_700_000_004 hold n = 8..16.
    let window = all_ids(
        &app,
        &app.prov_key,
        "?limit=3&from=2023-11-14T22:13:22Z&to=2023-11-14T22:13:24Z",
    )
    .await;
    let want: Vec<String> = (8..16)
        .rev()
        .map(|n| records[n].request_id.clone())
        .collect();
    assert_eq!(window, want);
    let day = all_ids(&app, &app.prov_key, "?from=2023-11-14&to=2023-11-14").await;
    assert_eq!(day.len(), 60);
    let other_day = all_ids(&app, &app.prov_key, "?from=2023-11-15").await;
    assert!(other_day.is_empty());

    let csv = app
        .get(
            "/v1/account/requests?format=csv&key_id="
                .to_string()
                .as_str(),
            &app.prov_key,
        )
        .await;
    assert_error(csv, 400, "invalid_request_error", "invalid_field").await;
    let csv = app
        .get(
            &format!("/v1/account/requests?format=csv&key_id={a}"),
            &app.prov_key,
        )
        .await
        .text()
        .await
        .expect("csv");
    assert_eq!(csv.lines().count(), 1 + 40);
}

#[tokio::test]
async fn an_account_never_sees_another_accounts_requests() {
    let app = spawn_app().await;
    let (other, other_prov) = app.new_account("other").await;
    let mine = app.create_key(json!({"name": "mine"})).await.0;
    let theirs = app
        .state
        .accounts
        .create_inference_key(other, Default::default())
        .await
        .expect("key")
        .0
        .id
        .0;
    let records = vec![
        record(app.account_id, mine, 1, 1_700_000_000, "m", 200),
        record(other, theirs, 2, 1_700_000_001, "m", 200),
    ];
    app.state
        .store
        .record_usage(&records)
        .await
        .expect("record");

    let ids = all_ids(&app, &app.prov_key, "").await;
    assert_eq!(ids, [records[0].request_id.clone()]);
    let ids = all_ids(&app, &other_prov, "").await;
    assert_eq!(ids, [records[1].request_id.clone()]);
    // Naming the other account's key finds nothing, in JSON and in CSV.
    assert!(all_ids(&app, &app.prov_key, &format!("?key_id={theirs}"))
        .await
        .is_empty());
    let csv = app
        .get(
            &format!("/v1/account/requests?format=csv&key_id={theirs}"),
            &app.prov_key,
        )
        .await
        .text()
        .await
        .expect("csv");
    assert_eq!(csv.lines().count(), 1);
    // A cursor is only a position: one pointing into the other account's rows shows
    // nothing of theirs.
    let ids = all_ids(&app, &app.prov_key, "?cursor=1800000000_999999").await;
    assert_eq!(ids, [records[0].request_id.clone()]);
}

#[tokio::test]
async fn the_request_log_needs_a_provisioning_key_and_says_what_is_wrong() {
    let app = spawn_app().await;
    let inference = app.inference_key().await;
    let op = app
        .state
        .accounts
        .create_operator_key("ops")
        .await
        .expect("key")
        .1;
    for key in [inference.as_str(), op.as_str()] {
        let response = app.get("/v1/account/requests", key).await;
        assert_error(response, 401, "authentication_error", "wrong_key_kind").await;
    }
    let bare = app
        .client
        .get(app.url("/v1/account/requests?format=csv"))
        .send()
        .await
        .expect("request");
    assert_error(bare, 401, "authentication_error", "missing_api_key").await;
    for query in [
        "?limit=0",
        "?limit=abc",
        "?status=teapot",
        "?from=soon",
        "?cursor=x",
        "?sort=asc",
    ] {
        let response = app
            .get(&format!("/v1/account/requests{query}"), &app.prov_key)
            .await;
        assert_error(response, 400, "invalid_request_error", "invalid_field").await;
    }
}
