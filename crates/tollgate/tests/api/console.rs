//! The web console's security: no page without a session, cookie flags, CSRF, one account
//! never reaching another's keys, the plaintext key in exactly one response, expiry and
//! sign-out (its flows are in `console_flows.rs`; the browser tests in tests/browser/
//! drive them in Chromium).

use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::{redirect, Client, Response};
use serde_json::json;
use tollgate::billing::Credits;
use tollgate::store::{KeyId, UsageDetail, UsageRecord};

use crate::helpers::{spawn_app, TestApp};

/// A browser: keeps the session cookie, follows no redirect (so tests see them).
pub(crate) struct Browser<'a> {
    app: &'a TestApp,
    pub client: Client,
    pub cookie: Option<String>,
}

pub(crate) struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub body: String,
}

impl Page {
    async fn of(response: Response) -> Page {
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header(LOCATION);
        let set_cookie = header(SET_COOKIE);
        Page {
            status: response.status().as_u16(),
            location,
            set_cookie,
            body: response.text().await.expect("body"),
        }
    }

    /// The CSRF token of the page's forms.
    pub(crate) fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a csrf field");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').expect("end")].to_string()
    }

    /// The secret shown once, if the page shows one.
    pub(crate) fn secret(&self) -> Option<String> {
        let at = self.body.find("data-secret>")?;
        let rest = &self.body[at + 12..];
        Some(rest[..rest.find('<')?].to_string())
    }

    pub(crate) fn redirects_to(&self, path: &str) -> bool {
        self.status == 303 && self.location.as_deref() == Some(path)
    }
}

impl<'a> Browser<'a> {
    pub(crate) fn new(app: &'a TestApp) -> Self {
        Browser {
            app,
            client: Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    pub(crate) fn with_cookie(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => request.header("cookie", format!("tollgate_session={c}")),
            None => request,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Page {
        let request = self.with_cookie(self.client.get(self.app.url(path)));
        Page::of(request.send().await.expect("get")).await
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.with_cookie(self.client.post(self.app.url(path)).form(form));
        Page::of(request.send().await.expect("post")).await
    }

    /// Signs in; the cookie is kept when it worked.
    pub(crate) async fn sign_in(&mut self, key: &str) -> Page {
        let page = self.post("/console/sign-in", &[("key", key)]).await;
        if let Some(cookie) = &page.set_cookie {
            let value = cookie
                .strip_prefix("tollgate_session=")
                .and_then(|c| c.split(';').next())
                .expect("session cookie");
            self.cookie = Some(value.to_string());
        }
        page
    }

    pub(crate) async fn signed_in(app: &'a TestApp, key: &str) -> Browser<'a> {
        let mut browser = Browser::new(app);
        let page = browser.sign_in(key).await;
        assert!(
            page.redirects_to("/console"),
            "{} {}",
            page.status,
            page.body
        );
        browser
    }

    /// A form token of this session.
    pub(crate) async fn csrf(&self) -> String {
        self.get("/console/keys").await.csrf()
    }
}

const ACCOUNT_PAGES: &[&str] = &[
    "/console",
    "/console/keys",
    "/console/keys/1",
    "/console/keys/1/delete",
    "/console/credits",
    "/console/requests",
    "/console/requests/export",
    "/console/requests/req_1",
    "/console/models",
    "/console/reference",
    "/console/accounts",
    "/console/accounts/1",
];

#[tokio::test]
async fn no_page_answers_without_a_valid_session() {
    let app = spawn_app().await;
    let mut anonymous = Browser::new(&app);
    assert!(anonymous.get("/").await.redirects_to("/console"));
    for path in ACCOUNT_PAGES {
        let page = anonymous.get(path).await;
        assert!(
            page.redirects_to("/console/sign-in"),
            "{path}: {}",
            page.status
        );
    }
    anonymous.cookie = Some("f".repeat(64));
    for path in ACCOUNT_PAGES {
        assert!(
            anonymous.get(path).await.redirects_to("/console/sign-in"),
            "{path}"
        );
    }
    let page = anonymous
        .post("/console/keys", &[("name", "sneaky"), ("csrf", "x")])
        .await;
    assert!(page.redirects_to("/console/sign-in"));
    let keys: serde_json::Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(keys["keys"], json!([]), "no key was created");
    // The sign-in page itself is public, and says what key to use.
    let page = Browser::new(&app).get("/console/sign-in").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("provisioning key"));
}

#[tokio::test]
async fn signing_in_gives_a_strict_http_only_cookie_and_keeps_no_key() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    let page = browser.sign_in(&app.prov_key).await;
    assert!(page.redirects_to("/console"));
    let cookie = page.set_cookie.expect("set-cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(!cookie.contains(&app.prov_key));
    // Behind a TLS front door the cookie is Secure.
    let response = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .expect("client")
        .post(app.url("/console/sign-in"))
        .header("x-forwarded-proto", "https")
        .form(&[("key", app.prov_key.as_str())])
        .send()
        .await
        .expect("post");
    let secure = response.headers()[SET_COOKIE].to_str().expect("ascii");
    assert!(secure.ends_with("; Secure"), "{secure}");
    // The database holds the token's hash, never the token or the key.
    let token = browser.cookie.clone().expect("cookie");
    let url = format!("sqlite://{}", app.dir.path().join("tollgate.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("db");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT token_hash, csrf_token FROM console_sessions")
            .fetch_all(&pool)
            .await
            .expect("sessions");
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .any(|(hash, _)| *hash == tollgate::auth::hash_key(&token)));
    for (hash, csrf) in &rows {
        assert!(!hash.contains(&token) && !csrf.contains(&token));
        assert!(!hash.contains(&app.prov_key) && !csrf.contains(&app.prov_key));
    }
    // A gateway without models says how to add a provider.
    let overview = browser.get("/console").await;
    assert!(overview.body.contains("No models yet"));
    assert!(overview.body.contains("[[providers]]"));
    // Pages never carry the key.
    for path in ["/console", "/console/keys", "/console/credits"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains(&app.prov_key), "{path}");
    }
    // A wrong key: the authenticator's own message, no cookie.
    let mut other = Browser::new(&app);
    let page = other.sign_in("tg-prov-0000").await;
    assert_eq!(page.status, 401);
    assert!(page.set_cookie.is_none());
    assert!(
        page.body.contains("Invalid provisioning key"),
        "{}",
        page.body
    );
    let inference = app.inference_key().await;
    let page = other.sign_in(&inference).await;
    assert_eq!(page.status, 401);
    assert!(
        page.body.contains("This is an inference key"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_is_refused() {
    let app = spawn_app().await;
    let browser = Browser::signed_in(&app, &app.prov_key).await;
    let token = browser.csrf().await;
    for form in [
        vec![("name", "no token")],
        vec![("name", "wrong token"), ("csrf", "0000")],
        vec![("name", "empty token"), ("csrf", "")],
    ] {
        let page = browser.post("/console/keys", &form).await;
        assert_eq!(page.status, 403, "{form:?}");
    }
    // The right token from another site.
    let response = browser
        .with_cookie(browser.client.post(app.url("/console/keys")))
        .header("origin", "https://evil.example")
        .form(&[("name", "cross-site"), ("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 403);
    // Another session's token.
    let other = Browser::signed_in(&app, &app.prov_key).await;
    let page = browser
        .post(
            "/console/keys",
            &[("name", "x"), ("csrf", &other.csrf().await)],
        )
        .await;
    assert_eq!(page.status, 403);
    let keys: serde_json::Value = app
        .get("/v1/account/keys", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(keys["keys"], json!([]), "none of them created a key");
    // Sign-out needs it too: the session stays.
    assert_eq!(browser.post("/console/sign-out", &[]).await.status, 403);
    assert_eq!(browser.get("/console").await.status, 200);
    let page = browser
        .post("/console/keys", &[("name", "good"), ("csrf", &token)])
        .await;
    assert_eq!(page.status, 200);
    assert!(page.secret().is_some());
}

#[tokio::test]
async fn the_plaintext_key_appears_in_exactly_one_response() {
    let app = spawn_app().await;
    let browser = Browser::signed_in(&app, &app.prov_key).await;
    let token = browser.csrf().await;
    let created = browser
        .post(
            "/console/keys",
            &[
                ("name", "CI worker"),
                ("credit_limit", "25.50"),
                ("csrf", &token),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(created.body.contains("Store it now."));
    let secret = created.secret().expect("secret shown");
    assert!(secret.starts_with("tg-inf-"));
    assert_eq!(created.body.matches(&secret).count(), 1);
    // It works, with the limit typed in the form.
    let me: serde_json::Value = app
        .get("/v1/key", &secret)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["name"], "CI worker");
    assert_eq!(me["credit_limit"], json!(25.5));
    let id = me["id"].as_i64().expect("id");
    for path in [
        "/console".to_string(),
        "/console/keys".to_string(),
        format!("/console/keys/{id}"),
        format!("/console/keys/{id}/delete"),
        "/console/requests".to_string(),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(
            !page.body.contains(&secret),
            "{path} shows the secret again"
        );
        assert!(page.secret().is_none(), "{path}");
    }
}

#[tokio::test]
async fn a_session_of_one_account_never_reaches_another_accounts_keys() {
    let app = spawn_app().await;
    let (b_account, b_prov) = app.new_account("b").await;
    let response = app
        .post(
            "/v1/account/keys",
            &b_prov,
            &json!({"name": "B's secret key"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let b_key: serde_json::Value = response.json().await.expect("json");
    let b_id = b_key["id"].as_i64().expect("id");
    app.state
        .store
        .record_usage(&[UsageRecord {
            request_id: "req_of_b".into(),
            account_id: b_account,
            key_id: KeyId(b_id),
            model: "m".into(),
            endpoint: "chat.completions".into(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost: Credits::from_nanos(5),
            status: 200,
            latency_ms: 1,
            created_at: tollgate::now(),
            detail: UsageDetail::default(),
        }])
        .await
        .expect("usage");

    let a = Browser::signed_in(&app, &app.prov_key).await;
    let token = a.csrf().await;
    for path in [
        format!("/console/keys/{b_id}"),
        format!("/console/keys/{b_id}/delete"),
        "/console/requests/req_of_b".to_string(),
        "/console/accounts".to_string(),
        format!("/console/accounts/{}", b_account.0),
    ] {
        let page = a.get(&path).await;
        assert_eq!(page.status, 404, "{path}");
        assert!(!page.body.contains("B&#39;s secret key") && !page.body.contains("B's secret key"));
    }
    let edits: [(String, Vec<(&str, &str)>); 4] = [
        (format!("/console/keys/{b_id}"), vec![("toggle", "disable")]),
        (
            format!("/console/keys/{b_id}"),
            vec![("name", "taken"), ("is_enabled", "on")],
        ),
        (format!("/console/keys/{b_id}/delete"), vec![]),
        (
            format!("/console/accounts/{}/grants", b_account.0),
            vec![("amount", "5")],
        ),
    ];
    for (path, mut form) in edits {
        form.push(("csrf", &token));
        let page = a.post(&path, &form).await;
        assert_eq!(page.status, 404, "{path}");
    }
    let listed = a.get("/console/keys").await;
    assert!(!listed.body.contains("secret key"));
    let export = a.get("/console/requests/export").await;
    assert!(!export.body.contains("req_of_b"));
    // B's key is as it was.
    let after: serde_json::Value = app
        .get(&format!("/v1/account/keys/{b_id}"), &b_prov)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(after["name"], "B's secret key");
    assert_eq!(after["is_enabled"], true);
    let balance: serde_json::Value = app
        .get("/v1/account/balance", &b_prov)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(balance["balance"], "-0.000000005");
}

#[tokio::test]
async fn sessions_end_at_expiry_at_sign_out_and_when_their_key_is_revoked() {
    let app = spawn_app().await;
    // Sign-out ends the session on the server, not only in the browser.
    let browser = Browser::signed_in(&app, &app.prov_key).await;
    let token = browser.csrf().await;
    let out = browser.post("/console/sign-out", &[("csrf", &token)]).await;
    assert!(out.redirects_to("/console/sign-in"));
    assert!(out
        .set_cookie
        .as_deref()
        .is_some_and(|c| c.starts_with("tollgate_session=;") && c.contains("Max-Age=0")));
    assert!(browser
        .get("/console")
        .await
        .redirects_to("/console/sign-in"));

    // Expiry: twelve hours.
    let browser = Browser::signed_in(&app, &app.prov_key).await;
    assert_eq!(browser.get("/console/keys").await.status, 200);
    app.state.config.clock.set(tollgate::now() + 12 * 3600 - 60);
    assert_eq!(browser.get("/console/keys").await.status, 200);
    app.state.config.clock.set(tollgate::now() + 12 * 3600 + 1);
    assert!(browser
        .get("/console/keys")
        .await
        .redirects_to("/console/sign-in"));
    app.state.config.clock.set(tollgate::now());

    // Revoking the provisioning key ends its sessions at once.
    let (account, prov) = app.new_account("revoked").await;
    let browser = Browser::signed_in(&app, &prov).await;
    assert_eq!(browser.get("/console").await.status, 200);
    let keys = app
        .state
        .accounts
        .list_keys(account, tollgate::store::KeyKind::Provisioning)
        .await
        .expect("keys");
    assert!(app
        .state
        .accounts
        .revoke_provisioning_key(keys[0].id)
        .await
        .expect("revoke"));
    assert!(browser
        .get("/console")
        .await
        .redirects_to("/console/sign-in"));
}
