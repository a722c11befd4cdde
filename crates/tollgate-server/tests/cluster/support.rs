//! What the cluster tests share: three `tollgate` replicas on a test's own database and
//! Redis (`services.rs`), and readers of the ledger and of the shared budgets in Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_upstream::{FakeUpstream, Options};
use serde_json::{json, Value};
use sqlx::Row;

pub use crate::services::*;

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
    start_replica_logging(dir, config, index, "warn")
}

/// `start_replica` with its log filtered by `rust_log` (`RUST_LOG`).
pub fn start_replica_logging(dir: &Path, config: &Path, index: usize, rust_log: &str) -> Replica {
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
        .env("RUST_LOG", rust_log)
        .env("UP_KEY", "up-secret")
        // The replicas' shared test clock (the system's while the file does not exist).
        .env(tollgate::clock::CLOCK_FILE_ENV, clock_file(dir))
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

/// The file every replica of the test reads its budget clock from.
pub fn clock_file(dir: &Path) -> PathBuf {
    dir.join("clock")
}

/// How a test's cluster is set up.
pub struct Setup {
    pub lease_ms: u64,
    pub upstream_latency_ms: u64,
    /// `[cluster] budget_check_interval_ms`.
    pub check_ms: u64,
    /// Credits granted to the `default` account (a decimal).
    pub grant: String,
    /// More of the config file (TOML appended to it).
    pub extra_config: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            lease_ms: 30_000,
            upstream_latency_ms: 0,
            check_ms: 30_000,
            grant: "100".into(),
            extra_config: String::new(),
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
{extra}
"#,
            db = db.url,
            redis_url = redis.url,
            lease_ms = setup.lease_ms,
            check_ms = setup.check_ms,
            base = upstream.base_url(),
            extra = setup.extra_config,
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
        let epoch: Option<String> = redis::cmd("GET")
            .arg(tollgate::cluster::EPOCH_KEY)
            .query_async(&mut conn)
            .await
            .expect("get");
        if let Some(epoch) = epoch {
            let grace: bool = redis::cmd("EXISTS")
                .arg(tollgate::cluster::grace_key(&epoch))
                .query_async(&mut conn)
                .await
                .expect("exists");
            if !grace {
                return;
            }
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
        // The base and the writers' slots (migration 0015).
        let charged: i64 = sqlx::query(
            "SELECT a.charged + COALESCE((SELECT SUM(c.charged) FROM account_charges c \
             WHERE c.account_id = a.id), 0)::BIGINT FROM accounts a WHERE a.name = 'default'",
        )
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
        let usage: i64 = sqlx::query(
            "SELECT k.usage + COALESCE((SELECT SUM(u.usage) FROM key_usage u \
             WHERE u.key_id = k.id), 0)::BIGINT FROM api_keys k WHERE k.id = $1",
        )
        .bind(key)
        .fetch_one(&pool)
        .await
        .expect("usage")
        .get(0);
        (sum, usage)
    }

    /// The epoch of the shared budgets' data in Redis.
    pub async fn epoch(&self) -> String {
        self.redis.epoch().await
    }

    /// A field of a budget hash (`a` account, `k` key) in the current epoch.
    pub async fn shared_field(&self, kind: &str, id: i64, field: &str) -> Option<i64> {
        let key = tollgate::cluster::budget_key(&self.epoch().await, kind, id);
        self.redis.field(&key, field).await
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

/// An inference key of `account` named `name` (hash `hash-<name>`), for tests that open
/// the store themselves.
pub fn new_key(
    account: tollgate::store::AccountId,
    name: &str,
    credit_limit: Option<tollgate::billing::Credits>,
    now: i64,
) -> tollgate::store::NewKey {
    tollgate::store::NewKey {
        account_id: account,
        kind: tollgate::store::KeyKind::Inference,
        name: name.into(),
        key_hash: format!("hash-{name}"),
        hint: "hint".into(),
        created_at: now,
        expires_at: None,
        credit_limit,
        rate_limit_rpm: None,
        limit_reset: None,
        allowed_models: None,
        clamp_max_tokens: false,
    }
}

/// One request's status on replica `replica`.
pub async fn status(cluster: &Cluster, replica: usize, key: &str) -> u16 {
    cluster
        .client
        .post(format!(
            "{}/v1/chat/completions",
            cluster.replicas[replica].base
        ))
        .bearer_auth(key)
        .json(&chat("hi"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
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

/// A usage record of `cost` for key `key` of account `account`.
pub fn record(id: &str, account: i64, key: i64, cost: i64) -> tollgate::store::UsageRecord {
    tollgate::store::UsageRecord {
        request_id: id.into(),
        account_id: tollgate::store::AccountId(account),
        key_id: tollgate::store::KeyId(key),
        model: "gpt-test".into(),
        endpoint: "/v1/chat/completions".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost: tollgate::billing::Credits::from_nanos(cost),
        status: 200,
        latency_ms: 1,
        created_at: tollgate::now(),
        detail: Default::default(),
    }
}
