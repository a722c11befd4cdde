//! `/openapi.json`: served without a key, and every operation it lists is a real route.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for required in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/models/{id}",
        "/v1/account/keys/{id}",
        "/v1/account/requests",
        "/v1/admin/accounts/{id}/grants",
        "/v1/admin/provisioning-keys/{id}",
    ] {
        assert!(paths.contains_key(required), "{required} is missing");
    }
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().expect("item").keys() {
            let url = app.url(&path.replace("{id}", "1"));
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = app
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .expect("request");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("");
            assert!(
                status != 405 && code != "route_not_found",
                "{method} {path} is documented but not routed: {status} {body}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 30, "{operations} operations");
}
