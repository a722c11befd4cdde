//! What the cluster tests share: a fresh PostgreSQL database per test, a private
//! `redis-server` per test (never the machine's shared one: tests restart, pause and
//! flush theirs), three `tollgate` replicas, and readers of the ledger and of the shared
//! budgets in Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_upstream::{FakeUpstream, Options};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| PG_ADMIN.to_string())
}

/// A fresh database on the test server; dropped at the end.
pub struct Database {
    name: String,
    pub url: String,
}

impl Database {
    pub async fn create() -> Database {
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see .ci/run)");
        let name = format!("tollgate_cluster_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(b, _)| b)
            .to_string();
        Database {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("connect")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = pg_admin_url();
        // Best effort, in a thread of its own: the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A `redis-server` of this test alone, without persistence, on a free port: it can be
/// killed, restarted empty, paused and flushed without touching anyone else's.
pub struct PrivateRedis {
    child: Option<Child>,
    pub url: String,
    port: u16,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = free_port();
        let mut redis = PrivateRedis {
            child: None,
            url: format!("redis://127.0.0.1:{port}"),
            port,
        };
        redis.restart().await;
        redis
    }

    /// Starts the server (empty) on its port, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(
            Command::new("redis-server")
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut conn) = self.try_conn().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the server and everything it held are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal}");
        }
    }

    /// SIGSTOP: the server stops answering, its connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the server runs again and executes what waited.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    async fn try_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        self.try_conn().await.expect("private redis")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

pub struct Replica {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Replica {
    pub fn kill9(&mut self) {
        // SIGKILL: the process gets no chance to finish anything.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn wait_ready(base: &str, log: &Path) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "replica at {base} did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn start_replica(dir: &Path, config: &Path, index: usize) -> Replica {
    let port = free_port();
    let home = dir.join(format!("replica-{index}"));
    std::fs::create_dir_all(&home).expect("dir");
    let log = home.join("log.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "serve",
            "--config",
            config.to_str().expect("path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(&home)
        .env("RUST_LOG", "warn")
        .env("UP_KEY", "up-secret")
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn replica");
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// How a test's cluster is set up.
pub struct Setup {
    pub lease_ms: u64,
    pub upstream_latency_ms: u64,
    /// `[cluster] budget_check_interval_ms`.
    pub check_ms: u64,
    /// Credits granted to the `default` account (a decimal).
    pub grant: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            lease_ms: 30_000,
            upstream_latency_ms: 0,
            check_ms: 30_000,
            grant: "100".into(),
        }
    }
}

pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub client: reqwest::Client,
    pub prov_key: String,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
    pub redis: PrivateRedis,
    pub db: Database,
    _upstream: FakeUpstream,
}

pub async fn start_cluster(lease_ms: u64, upstream_latency_ms: u64) -> Cluster {
    start_cluster_with(Setup {
        lease_ms,
        upstream_latency_ms,
        ..Setup::default()
    })
    .await
}

pub async fn start_cluster_with(setup: Setup) -> Cluster {
    let upstream = fake_upstream::start(Options {
        latency: Duration::from_millis(setup.upstream_latency_ms),
        openai_api_key: Some("up-secret".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream");
    let db = Database::create().await;
    let redis = PrivateRedis::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
database_url = "{db}"
redis_url = "{redis_url}"

[cluster]
reservation_lease_ms = {lease_ms}
budget_check_interval_ms = {check_ms}

[[providers]]
name = "up"
kind = "openai"
base_url = "{base}"
api_key_env = "UP_KEY"

[[models]]
id = "gpt-test"
provider = "up"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = {{ input = "0.40", cached_input = "0.10", output = "1.60" }}
"#,
            db = db.url,
            redis_url = redis.url,
            lease_ms = setup.lease_ms,
            check_ms = setup.check_ms,
            base = upstream.base_url()
        ),
    )
    .expect("config");
    // The first replica bootstraps the empty database; the others start on it.
    let first = start_replica(dir.path(), &config, 0);
    wait_ready(&first.base, &first.log).await;
    let mut replicas = vec![first];
    for i in 1..3 {
        replicas.push(start_replica(dir.path(), &config, i));
    }
    for r in &replicas[1..] {
        wait_ready(&r.base, &r.log).await;
    }
    let prov_key = std::fs::read_to_string(
        dir.path()
            .join("replica-0/tollgate-data/provisioning-key.txt"),
    )
    .expect("bootstrap key")
    .trim()
    .to_string();
    let granted = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "credits",
            "grant",
            "default",
            &setup.grant,
            "--config",
            config.to_str().expect("path"),
        ])
        .output()
        .expect("grant");
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    wait_epoch_open(&redis).await;
    Cluster {
        replicas,
        client: reqwest::Client::new(),
        prov_key,
        config,
        dir,
        redis,
        db,
        _upstream: upstream,
    }
}

/// Waits until the shared budgets' epoch (started by the replicas' first heartbeat on
/// an empty Redis) is past its grace window, so reservations are admitted at once.
pub async fn wait_epoch_open(redis: &PrivateRedis) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = redis.conn().await;
    loop {
        let ready: Option<i64> = redis::cmd("HGET")
            .arg(tollgate::cluster::EPOCH_KEY)
            .arg("ready")
            .query_async(&mut conn)
            .await
            .expect("hget");
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("time");
        if ready.is_some_and(|r| r <= secs * 1000 + micros / 1000) {
            return;
        }
        assert!(Instant::now() < deadline, "the shared budgets never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What Redis holds for an account or a key: (charged or usage, reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    pub spent: i64,
    pub reserved: i64,
}

impl Cluster {
    pub async fn create_key(&self, replica: usize, body: Value) -> (i64, String) {
        let response = self
            .client
            .post(format!("{}/v1/account/keys", self.replicas[replica].base))
            .bearer_auth(&self.prov_key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        (
            body["id"].as_i64().expect("id"),
            body["key"].as_str().expect("key").to_string(),
        )
    }

    /// Sum of the ledger's charges, per the database.
    pub async fn ledger(&self) -> (i64, i64, Vec<(String, i64, i64)>) {
        let pool = self.db.pool().await;
        let rows = sqlx::query("SELECT request_id, cost, status FROM usage_records ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("ledger");
        let records: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    r.get::<i64, _>(1),
                    r.get::<i64, _>(2),
                )
            })
            .collect();
        let total = records.iter().map(|r| r.1).sum();
        let charged: i64 = sqlx::query("SELECT charged FROM accounts WHERE name = 'default'")
            .fetch_one(&pool)
            .await
            .expect("account")
            .get(0);
        (total, charged, records)
    }

    /// A key's (sum of its ledger records, its `usage` column).
    pub async fn ledger_key(&self, key: i64) -> (i64, i64) {
        let pool = self.db.pool().await;
        let sum: i64 = sqlx::query(
            "SELECT COALESCE(SUM(cost), 0)::BIGINT FROM usage_records WHERE key_id = $1",
        )
        .bind(key)
        .fetch_one(&pool)
        .await
        .expect("sum")
        .get(0);
        let usage: i64 = sqlx::query("SELECT usage FROM api_keys WHERE id = $1")
            .bind(key)
            .fetch_one(&pool)
            .await
            .expect("usage")
            .get(0);
        (sum, usage)
    }

    /// The epoch of the shared budgets' data in Redis.
    pub async fn epoch(&self) -> String {
        let mut conn = self.redis.conn().await;
        redis::cmd("HGET")
            .arg(tollgate::cluster::EPOCH_KEY)
            .arg("id")
            .query_async::<Option<String>>(&mut conn)
            .await
            .expect("hget")
            .expect("an epoch")
    }

    /// A field of a budget hash (`a` account, `k` key) in the current epoch.
    pub async fn shared_field(&self, kind: &str, id: i64, field: &str) -> Option<i64> {
        let key = tollgate::cluster::budget_key(&self.epoch().await, kind, id);
        let mut conn = self.redis.conn().await;
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async::<Option<i64>>(&mut conn)
            .await
            .expect("hget")
    }

    /// The account's budget in Redis.
    pub async fn shared_account(&self, account: i64) -> Shared {
        Shared {
            spent: self
                .shared_field("a", account, "charged")
                .await
                .unwrap_or(0),
            reserved: self
                .shared_field("a", account, "reserved")
                .await
                .unwrap_or(0),
        }
    }

    /// A key's budget in Redis.
    pub async fn shared_key(&self, key: i64) -> Shared {
        Shared {
            spent: self.shared_field("k", key, "usage").await.unwrap_or(0),
            reserved: self.shared_field("k", key, "reserved").await.unwrap_or(0),
        }
    }

    /// Every replica's log so far.
    pub fn logs(&self) -> String {
        self.replicas.iter().map(Replica::log_text).collect()
    }
}

pub fn chat(text: &str) -> Value {
    json!({"model": "gpt-test", "max_tokens": 100, "messages": [{"role": "user", "content": text}]})
}

pub fn nanos(text: &str) -> i64 {
    text.parse::<tollgate::billing::Credits>()
        .expect("decimal")
        .nanos()
}

/// An upper bound of the gateway's worst case for `body` (every body byte an input
/// token, `max_tokens` output tokens), in nanos, at the test model's prices.
pub fn worst_case(body: &Value, max_tokens: i128) -> i64 {
    let body_len = serde_json::to_vec(body).expect("json").len() as i128;
    ((body_len * 400_000_000 + max_tokens * 1_600_000_000 + 999_999) / 1_000_000) as i64
}

/// Credits text of a nano amount.
pub fn credits(nanos: i64) -> String {
    tollgate::billing::Credits::from_nanos(nanos).to_decimal_string(1)
}
