//! No usage can break an account: usage records with a cost near `i64::MAX` and 10^18
//! tokens and more, written through the usage writer, leave every account endpoint
//! answering 200 with the counters held at the 64-bit limit, also after a restart on the
//! same database, on SQLite and on PostgreSQL; a counter an older version let overflow
//! into a REAL is read and then mended.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use tokio::sync::oneshot;
use tollgate::billing::Credits;
use tollgate::config::{Config, Overrides};
use tollgate::http::AppState;
use tollgate::server::Server;
use tollgate::store::{AccountId, KeyId, UsageRecord};

/// The largest amount of credits the ledger holds, as shown.
const MAX_SHOWN: &str = "9223372036.854775807";

/// A server on a database of our choosing, which a test can stop and start again.
struct Running {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    state: AppState,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(database_url: &str, dir: &Path, upstream: &str) -> Running {
        let toml = format!(
            r#"listen = "127.0.0.1:0"
database_url = "{database_url}"
data_dir = "{}"

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream}"
api_key_env = "UP_KEY"

[[models]]
id = "m"
provider = "up"
endpoints = ["chat.completions"]
max_output_tokens = 100
pricing = {{ input = "1", output = "1" }}
"#,
            dir.display()
        );
        let env = |name: &str| (name == "UP_KEY").then(|| "up-secret".to_string());
        let config = Config::from_toml(&toml, &Overrides::default(), &env).expect("config");
        let server = Server::bind(config).await.expect("bind");
        server.bootstrap().await.expect("bootstrap");
        let addr = server.local_addr().expect("addr");
        let state = server.state.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            client: reqwest::Client::new(),
            state,
            stop,
            task,
        }
    }

    /// Stops the server and waits until it has let go of the database.
    async fn stop(self) {
        let Running {
            state, stop, task, ..
        } = self;
        drop(state);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the server stopped")
            .expect("server task")
            .expect("served");
    }

    async fn get(&self, path: &str, key: &str) -> Value {
        let response = self
            .client
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    async fn chat(&self, key: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .bearer_auth(key)
            .json(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }
}

/// What a test knows of its account.
struct Fixture {
    prov: String,
    /// The key the absurd usage goes to (credit limit 10), and a calm one.
    limited: (i64, String),
    calm: (i64, String),
}

async fn create_key(server: &Running, prov: &str, body: Value) -> (i64, String) {
    let response = server
        .client
        .post(format!("http://{}/v1/account/keys", server.addr))
        .bearer_auth(prov)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    (
        body["id"].as_i64().expect("id"),
        body["key"].as_str().expect("key").to_string(),
    )
}

async fn set_up(server: &Running, dir: &Path) -> (Fixture, AccountId) {
    let prov = std::fs::read_to_string(dir.join("provisioning-key.txt"))
        .expect("provisioning key")
        .trim()
        .to_string();
    let account = server
        .state
        .accounts
        .find_account("default")
        .await
        .expect("store")
        .expect("default account")
        .id;
    server
        .state
        .accounts
        .grant_credits(account, "100".parse().expect("amount"), None)
        .await
        .expect("grant");
    let limited = create_key(
        server,
        &prov,
        json!({"name": "limited", "credit_limit": 10}),
    )
    .await;
    let calm = create_key(server, &prov, json!({"name": "calm"})).await;
    (
        Fixture {
            prov,
            limited,
            calm,
        },
        account,
    )
}

fn usage(
    request_id: &str,
    account: AccountId,
    key: i64,
    model: &str,
    cost: i64,
    tokens: i64,
) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_string(),
        account_id: account,
        key_id: KeyId(key),
        model: model.to_string(),
        endpoint: "chat.completions".to_string(),
        input_tokens: tokens,
        cached_input_tokens: tokens,
        output_tokens: tokens,
        cost: Credits::from_nanos(cost),
        status: 200,
        latency_ms: 1,
        created_at: tollgate::now(),
        detail: Default::default(),
    }
}

/// Writes the absurd records (and one ordinary one) through the usage writer.
async fn write_absurd_usage(server: &Running, account: AccountId, fixture: &Fixture) {
    let writer = &server.state.writer;
    let key = fixture.limited.0;
    // 10^18 tokens and a cost near the limit, twice on one model and once on another:
    // every counter and every sum of them goes past i64::MAX. Each record is committed
    // before the next is sent, so each one adds to the stored counters.
    for (id, model, tokens) in [
        ("absurd-1", "m", 1_000_000_000_000_000_000),
        ("absurd-2", "m", i64::MAX),
        ("absurd-3", "other", i64::MAX),
    ] {
        writer
            .record(usage(id, account, key, model, i64::MAX - 1, tokens))
            .await
            .expect("recorded");
        writer.flushed().await;
    }
    writer
        .record(usage("calm-1", account, fixture.calm.0, "m", 7, 3))
        .await
        .expect("recorded");
    writer.flushed().await;
    // The ledger kept them all, and the writer still writes.
    for id in ["absurd-1", "absurd-2", "absurd-3", "calm-1"] {
        let record = server.state.store.usage_record(id).await.expect("read");
        assert!(record.is_some(), "{id} is in the ledger");
    }
}

/// Every account endpoint answers 200 with the counters held at the limit.
async fn assert_endpoints_answer(server: &Running, fixture: &Fixture) {
    let prov = &fixture.prov;
    let balance = server.get("/v1/account/balance", prov).await;
    // 100 granted minus the charges held at the limit.
    assert_eq!(balance["balance"], "-9223371936.854775807");

    let keys = server.get("/v1/account/keys", prov).await;
    let keys = keys["keys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 2);
    let limited = server
        .get(&format!("/v1/account/keys/{}", fixture.limited.0), prov)
        .await;
    assert_eq!(keys[0], limited);
    assert_eq!(limited["usage"], MAX_SHOWN);
    assert_eq!(limited["limit_remaining"], "0.00");
    assert_eq!(limited["credit_limit"], 10.0);
    let calm = server
        .get(&format!("/v1/account/keys/{}", fixture.calm.0), prov)
        .await;
    assert_eq!(keys[1], calm);
    assert_eq!(calm["usage"], "0.000000007");

    let own = server.get("/v1/key", &fixture.limited.1).await;
    assert_eq!(own["usage"], MAX_SHOWN);
    assert_eq!(own["limit_remaining"], "0.00");

    let activity = server.get("/v1/account/activity?days=7", prov).await;
    let max = json!(i64::MAX);
    let total = &activity["total_stats"];
    assert_eq!(total["total_requests"], 4);
    assert_eq!(total["total_cost"], MAX_SHOWN);
    assert_eq!(total["total_input_tokens"], max);
    assert_eq!(total["total_output_tokens"], max);
    let models = activity["top_models"].as_array().expect("models");
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["model_name"], "m");
    assert_eq!(models[0]["request_count"], 3);
    assert_eq!(models[0]["total_cost"], MAX_SHOWN);
    assert_eq!(models[1]["total_cost"], "9223372036.854775806");
    let keys = activity["api_key_usage"].as_array().expect("keys");
    assert_eq!(keys[0]["api_key_id"], fixture.limited.0);
    assert_eq!(keys[0]["request_count"], 3);
    assert_eq!(keys[0]["total_cost"], MAX_SHOWN);
    assert_eq!(keys[1]["api_key_id"], fixture.calm.0);
    assert_eq!(keys[1]["total_cost"], "0.000000007");
    assert_eq!(keys[1]["total_input_tokens"], 3);

    // The keys are refused with the meter's 402s, not an error.
    let (status, body) = server.chat(&fixture.limited.1).await;
    assert_eq!(status, 402, "{body}");
    let (status, body) = server.chat(&fixture.calm.1).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_balance");
}

async fn absurd_usage_then_restart(database_url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-secret".into()),
        ..fake_upstream::Options::default()
    })
    .await
    .expect("fake upstream");
    let server = Running::start(database_url, dir.path(), &upstream.base_url()).await;
    let (fixture, account) = set_up(&server, dir.path()).await;
    write_absurd_usage(&server, account, &fixture).await;
    assert_endpoints_answer(&server, &fixture).await;
    server.stop().await;

    let server = Running::start(database_url, dir.path(), &upstream.base_url()).await;
    assert_endpoints_answer(&server, &fixture).await;
    server.stop().await;
}

/// The types SQLite holds the counters in, as `typeof` names them.
const COUNTER_TYPES: &str = "\
    SELECT group_concat(t, ' ') FROM (\
      SELECT DISTINCT t FROM (\
        SELECT typeof(charged) AS t FROM accounts \
        UNION ALL SELECT typeof(usage) FROM api_keys \
        UNION ALL SELECT typeof(requests) FROM usage_daily \
        UNION ALL SELECT typeof(cost) FROM usage_daily \
        UNION ALL SELECT typeof(input_tokens) FROM usage_daily \
        UNION ALL SELECT typeof(output_tokens) FROM usage_daily))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_breaks_no_account_endpoint_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    absurd_usage_then_restart(&url).await;
    // Held at the limit, never turned into REALs (which SQLite makes of an integer sum
    // past i64::MAX).
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let types: String = sqlx::query_scalar(COUNTER_TYPES)
        .fetch_one(&mut conn)
        .await
        .expect("types");
    assert_eq!(types, "integer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_breaks_no_account_endpoint_on_postgres() {
    with_postgres_database(|url| async move { absurd_usage_then_restart(&url).await }).await;
}

/// Counters an older version let overflow into REALs (as SQLite does to an integer sum
/// past i64::MAX) are read as the nearest integer, and the next charge mends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_that_became_reals_are_read_and_mended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tollgate.db");
    let url = format!("sqlite://{}", db.display());
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-secret".into()),
        ..fake_upstream::Options::default()
    })
    .await
    .expect("fake upstream");
    let server = Running::start(&url, dir.path(), &upstream.base_url()).await;
    let (fixture, account) = set_up(&server, dir.path()).await;
    write_absurd_usage(&server, account, &fixture).await;
    server.stop().await;

    // What the old writer left: REALs where the integer sums overflowed.
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
    for sql in [
        "UPDATE accounts SET charged = 2.0e19".to_string(),
        format!(
            "UPDATE api_keys SET usage = 1.5e19 WHERE id = {}",
            fixture.limited.0
        ),
        format!(
            "UPDATE usage_daily SET cost = 1.0e19, input_tokens = 3.0e30, output_tokens = 2.0e19, \
             requests = 2.0 WHERE key_id = {} AND model = 'm'",
            fixture.limited.0
        ),
    ] {
        conn.execute(sql.as_str())
            .await
            .expect("corrupt the counters");
    }
    let types = "SELECT (SELECT typeof(charged) FROM accounts WHERE id = 1) || ' ' || \
                 (SELECT typeof(usage) FROM api_keys WHERE id = $1)";
    let found: String = sqlx::query_scalar(types)
        .bind(fixture.limited.0)
        .fetch_one(&mut conn)
        .await
        .expect("types");
    assert_eq!(found, "real real");

    let server = Running::start(&url, dir.path(), &upstream.base_url()).await;
    assert_endpoints_answer(&server, &fixture).await;
    // The next charge of the key writes integers again.
    server
        .state
        .writer
        .record(usage("after", account, fixture.limited.0, "m", 1, 1))
        .await
        .expect("recorded");
    server.state.writer.flushed().await;
    let found: String = sqlx::query_scalar(types)
        .bind(fixture.limited.0)
        .fetch_one(&mut conn)
        .await
        .expect("types");
    assert_eq!(found, "integer integer");
    let all: String = sqlx::query_scalar(COUNTER_TYPES)
        .fetch_one(&mut conn)
        .await
        .expect("types");
    assert_eq!(all, "integer");
    server.stop().await;
}

/// Runs `case` with the URL of a new PostgreSQL database, dropped afterwards.
pub(crate) async fn with_postgres_database<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let base = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
    let name = format!("tollgate_overflow_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("no database in {base}"),
    };
    let outcome = AssertUnwindSafe(case(url)).catch_unwind().await;
    let dropped = admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("drop database");
}
