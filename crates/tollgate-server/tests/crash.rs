//! kill -9 of the single-machine server (SQLite): a response is answered once its
//! charge is in the usage journal, before the ledger commits it, so a crash in between
//! must leave the charge in the journal and the next start must put it in the ledger.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, Row};

struct Running(Child);

impl Running {
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

async fn serve(dir: &Path, port: u16, log_name: &str) -> Running {
    let log_path = dir.join(log_name);
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env("TOLLGATE_CONFIG", dir.join("tollgate.toml"))
        .env("UP_KEY", "up-secret")
        .env("RUST_LOG", "info")
        .env_remove("TOLLGATE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let running = Running(child);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return running;
            }
        }
        assert!(
            Instant::now() < deadline,
            "server did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nanos(text: &str) -> i64 {
    text.parse::<tollgate::billing::Credits>()
        .expect("decimal")
        .nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_the_ledger_commits_loses_no_delivered_charge() {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-secret".into()),
        ..fake_upstream::Options::default()
    })
    .await
    .expect("fake upstream");
    std::fs::write(
        dir.path().join("tollgate.toml"),
        format!(
            "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"UP_KEY\"\n\n[[models]]\nid = \"m\"\nprovider = \"up\"\npricing = {{ input = \"1\", output = \"2\" }}\n",
            upstream.base_url()
        ),
    )
    .expect("config");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(dir.path(), port, "first.log").await;
    let grant = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["credits", "grant", "default", "100"])
        .current_dir(dir.path())
        .env("TOLLGATE_CONFIG", dir.path().join("tollgate.toml"))
        .env_remove("TOLLGATE_DATABASE_URL")
        .output()
        .expect("grant");
    assert!(grant.status.success(), "{grant:?}");
    let prov = std::fs::read_to_string(dir.path().join("tollgate-data/provisioning-key.txt"))
        .expect("provisioning key");
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/v1/account/keys"))
        .bearer_auth(prov.trim())
        .json(&json!({"name": "load"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let key = created["key"].as_str().expect("key").to_string();

    // Another connection takes the database's write lock, as a stalled disk would hold
    // up commits: from now on the ledger can commit nothing.
    let db = dir.path().join("tollgate-data/tollgate.db");
    let url = format!("sqlite://{}", db.display());
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.expect("open");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .expect("lock");
    let requests = (0..40).map(|i| {
        let (client, key, base) = (client.clone(), key.clone(), base.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": format!("request {i} [[fake:words=8]]")}]}))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200);
            let header = |name| r.headers()[name].to_str().expect("header").to_string();
            let (id, cost) = (header("x-request-id"), header("x-tollgate-cost"));
            let body: Value = r.json().await.expect("body");
            assert!(body["choices"][0]["message"]["content"].is_string());
            (id, nanos(&cost))
        }
    });
    let delivered = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(requests),
    )
    .await
    .expect("answered without waiting for the ledger");
    server.kill9();
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("unlock");
    const IN_LEDGER: &str = "SELECT request_id, cost FROM usage_records";
    let before = sqlx::query(IN_LEDGER)
        .fetch_all(&mut blocker)
        .await
        .expect("read");
    assert!(before.is_empty(), "nothing was committed before the kill");

    // The next start writes the journal's records to the ledger, each once.
    let _server = serve(dir.path(), port, "second.log").await;
    let after = sqlx::query(IN_LEDGER)
        .fetch_all(&mut blocker)
        .await
        .expect("read");
    let mut charged: Vec<(String, i64)> = after
        .iter()
        .map(|row| (row.get("request_id"), row.get("cost")))
        .collect();
    let mut expected = delivered.clone();
    charged.sort();
    expected.sort();
    assert_eq!(charged, expected);
    let total: i64 = expected.iter().map(|(_, cost)| cost).sum();
    assert!(total > 0);
    let row = sqlx::query(
        "SELECT (SELECT charged FROM accounts WHERE name = 'default') AS account, \
         (SELECT usage FROM api_keys WHERE name = 'load') AS key",
    )
    .fetch_one(&mut blocker)
    .await
    .expect("read");
    assert_eq!(row.get::<i64, _>("account"), total);
    assert_eq!(row.get::<i64, _>("key"), total);
    let log = std::fs::read_to_string(dir.path().join("second.log")).expect("log");
    assert!(log.contains("left in the journal"), "{log}");
    // And the balance the API shows agrees.
    let balance: Value = client
        .get(format!("{base}/v1/account/balance"))
        .bearer_auth(prov.trim())
        .send()
        .await
        .expect("balance")
        .json()
        .await
        .expect("json");
    assert_eq!(
        nanos(balance["balance"].as_str().expect("balance")),
        100_000_000_000 - total,
        "{balance}"
    );
}
