//! `spawn_app()`: a real server on 127.0.0.1:0 over a fresh SQLite file, per test.

use std::net::SocketAddr;

use reqwest::{Client, Response};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tollgate::config::{Config, Overrides};
use tollgate::http::AppState;
use tollgate::server::Server;
use tollgate::store::AccountId;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    /// The bootstrap provisioning key of the `default` account.
    pub prov_key: String,
    pub account_id: AccountId,
    pub state: AppState,
    pub dir: TempDir,
    /// `/metrics`'s own listener, when `[observability] metrics_listen` gives it one.
    pub metrics_addr: Option<SocketAddr>,
    _shutdown: oneshot::Sender<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Spawns a server whose config file is `extra` (TOML), on a fresh database.
pub async fn spawn_app_with(extra: &str) -> TestApp {
    spawn_app_env(extra, &|_| None).await
}

pub async fn spawn_app_env(extra: &str, env: &dyn Fn(&str) -> Option<String>) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    spawn_app_on(dir, &url, extra, env).await
}

/// Spawns a server on the database at `database_url` (fresh), with `dir` as its data
/// folder.
pub async fn spawn_app_on(
    dir: TempDir,
    database_url: &str,
    extra: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> TestApp {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\ndata_dir = \"{}\"\n{extra}",
        dir.path().display()
    );
    let config = Config::from_toml(&toml, &Overrides::default(), env).expect("config");
    let server = Server::bind(config).await.expect("bind");
    let boot = server
        .bootstrap()
        .await
        .expect("bootstrap")
        .expect("fresh db");
    let prov_key = std::fs::read_to_string(&boot.key_file)
        .expect("key file")
        .trim()
        .to_string();
    let addr = server.local_addr().expect("addr");
    let metrics_addr = server.metrics_addr();
    let state = server.state.clone();
    let account_id = state
        .accounts
        .find_account("default")
        .await
        .expect("store")
        .expect("default account")
        .id;
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: Client::new(),
        prov_key,
        account_id,
        state,
        dir,
        metrics_addr,
        _shutdown: tx,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str, bearer: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, bearer: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_raw(&self, path: &str, bearer: &str, body: &'static str) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn patch(&self, path: &str, bearer: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, bearer: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("request")
    }

    /// Creates an inference key through the API; returns (id, plaintext).
    pub async fn create_key(&self, body: Value) -> (i64, String) {
        let response = self.post("/v1/account/keys", &self.prov_key, &body).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        (
            body["id"].as_i64().expect("id"),
            body["key"].as_str().expect("key").to_string(),
        )
    }

    pub async fn inference_key(&self) -> String {
        self.create_key(json!({"name": "test"})).await.1
    }

    /// Grants credits to the default account.
    pub async fn grant(&self, amount: &str) {
        self.state
            .accounts
            .grant_credits(self.account_id, amount.parse().expect("amount"), None)
            .await
            .expect("grant");
    }

    /// Creates another account with its own provisioning key.
    pub async fn new_account(&self, name: &str) -> (AccountId, String) {
        let account = self
            .state
            .accounts
            .create_account(name)
            .await
            .expect("account");
        let (_, key) = self
            .state
            .accounts
            .create_provisioning_key(account.id, "p")
            .await
            .expect("key");
        (account.id, key)
    }
}

/// Asserts an OpenAI-shaped error and returns its message.
pub async fn assert_error(response: Response, status: u16, kind: &str, code: &str) -> String {
    assert_eq!(response.status(), status, "status");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["type"], kind, "type in {body}");
    assert_eq!(body["error"]["code"], code, "code in {body}");
    let message = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(!message.is_empty());
    message
}
