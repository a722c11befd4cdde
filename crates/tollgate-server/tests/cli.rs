//! The `tollgate` binary as an operator uses it: the first start (the commands are in
//! `cli/operator.rs`, kill -9 during failover in `cli/failover.rs`),
//! configuration errors, logs that never contain a key, and kill -9 of the
//! single-machine (SQLite) server: a response is answered once its charge is in the usage
//! journal, before the ledger commits it, so the next start must put it in the ledger.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, Row};

#[path = "cli/failover.rs"]
mod failover;
#[path = "cli/operator.rs"]
mod operator;

fn tollgate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_LISTEN")
        .output()
        .expect("run tollgate")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tollgate.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nmax_bodee = 3\n").expect("write");
    let out = tollgate(
        dir.path(),
        &["serve", "--config", file.to_str().expect("path")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_bodee") && err.contains("tollgate.toml"),
        "{err}"
    );

    std::fs::write(&file, "[limits]\nmax_body_bytes = -5\n").expect("write");
    let out = tollgate(
        dir.path(),
        &["migrate", "--config", file.to_str().expect("path")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_body_bytes"),
        "{err}"
    );

    let out = tollgate(dir.path(), &["serve", "--listen", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("listen"), "{err}");
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// The provider key the fake upstream wants: it must never reach a log.
const UPSTREAM_SECRET: &str = "up-provider-secret-4242";

/// A fake upstream and a `tollgate.toml` in `dir` with one model on it.
async fn upstream_and_config(dir: &Path) -> (fake_upstream::FakeUpstream, std::path::PathBuf) {
    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some(UPSTREAM_SECRET.into()),
        ..fake_upstream::Options::default()
    })
    .await
    .expect("fake upstream");
    let config = dir.join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"UP_KEY\"\n\n[[models]]\nid = \"m\"\nprovider = \"up\"\npricing = {{ input = \"1\", output = \"1\" }}\n",
            upstream.base_url()
        ),
    )
    .expect("config");
    (upstream, config)
}

/// `tollgate serve` in `dir` with its `tollgate.toml`, logging to `dir/log_name`, once
/// it answers `/readyz`.
async fn serve(dir: &Path, port: u16, log_name: &str, rust_log: &str) -> Running {
    let log_path = dir.join(log_name);
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env("TOLLGATE_CONFIG", dir.join("tollgate.toml"))
        .env("UP_KEY", UPSTREAM_SECRET)
        .env("RUST_LOG", rust_log)
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

/// A `RUST_LOG` that cannot be read is not ignored in silence: the server logs at `info`
/// and says why.
#[tokio::test]
async fn an_unreadable_rust_log_is_reported_and_info_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_upstream, _config) = upstream_and_config(dir.path()).await;
    let port = free_port();
    let running = serve(dir.path(), port, "log.txt", "warn,tollgate=loud").await;
    let log_path = dir.path().join("log.txt");
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("tollgate listening") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(running);
    assert!(
        log.contains("RUST_LOG cannot be read; logging at info")
            && log.contains("rust_log=warn,tollgate=loud"),
        "{log}"
    );
    assert!(
        log.contains("INFO tollgate::cli: tollgate listening"),
        "{log}"
    );
}

/// First start on an empty database: a working provisioning key in a private file,
/// and (at the most verbose log level) no key in the logs.
#[tokio::test]
async fn first_start_leaves_a_working_key_and_logs_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_upstream, config) = upstream_and_config(dir.path()).await;
    let port = free_port();
    let log_path = dir.path().join("log.txt");
    let _running = serve(dir.path(), port, "log.txt", "trace").await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let key_file = dir.path().join("tollgate-data/provisioning-key.txt");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let prov = std::fs::read_to_string(&key_file)
        .expect("key")
        .trim()
        .to_string();
    let created: Value = client
        .post(format!("{base}/v1/account/keys"))
        .bearer_auth(&prov)
        .json(&serde_json::json!({"name": "from the quick start"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let inference = created["key"].as_str().expect("key").to_string();
    let me = client
        .get(format!("{base}/v1/key"))
        .header("x-api-key", &inference)
        .send()
        .await
        .expect("key");
    assert_eq!(me.status(), 200);
    let wrong = client
        .get(format!("{base}/v1/account/balance"))
        .bearer_auth(&inference)
        .send()
        .await
        .expect("balance");
    assert_eq!(wrong.status(), 401);
    // A model call (refused for want of credits, then served) and a provider failure.
    let chat = |text: &str| serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]});
    let refused = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&inference)
        .json(&chat("hi"))
        .send()
        .await
        .expect("chat");
    assert_eq!(refused.status(), 402);
    let granted = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "credits",
            "grant",
            "default",
            "5",
            "--config",
            config.to_str().expect("path"),
        ])
        .current_dir(dir.path())
        .output()
        .expect("grant");
    assert!(granted.status.success());
    let mut served = 0;
    for _ in 0..40 {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&inference)
            .json(&chat("hi"))
            .send()
            .await
            .expect("chat");
        if r.status() == 200 {
            served += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, 1);
    let failed = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&inference)
        .json(&chat("[[fake:status=401]]"))
        .send()
        .await
        .expect("chat");
    assert_eq!(failed.status(), 502);
    drop(_running);

    let logs = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        logs.contains("provisioning-key.txt"),
        "the log says where the key is"
    );
    assert!(
        logs.contains(&format!("sign in to the console at {base}/console")),
        "the log names the console next to the key file"
    );
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "logs were verbose"
    );
    for secret in [&prov, &inference] {
        let random = &secret[secret.rfind('-').expect("prefix") + 1..];
        assert!(!logs.contains(random), "a key leaked into the logs");
    }
    assert!(
        !logs.contains(UPSTREAM_SECRET),
        "a provider secret leaked into the logs"
    );
}

/// Grants the `default` account 100 credits, then creates an inference key named `name`
/// through the account API of the server at `base`; returns its plaintext.
async fn funded_key(dir: &Path, config: &str, base: &str, name: &str) -> String {
    stdout(&tollgate(
        dir,
        &["credits", "grant", "default", "100", "--config", config],
    ));
    let prov = std::fs::read_to_string(dir.join("tollgate-data/provisioning-key.txt"))
        .expect("provisioning key");
    let created: Value = reqwest::Client::new()
        .post(format!("{base}/v1/account/keys"))
        .bearer_auth(prov.trim())
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    created["key"].as_str().expect("key").to_string()
}

fn nanos(text: &str) -> i64 {
    text.parse::<tollgate::billing::Credits>()
        .expect("decimal")
        .nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_the_ledger_commits_loses_no_delivered_charge() {
    let dir = tempfile::tempdir().expect("dir");
    let (_upstream, config) = upstream_and_config(dir.path()).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = serve(dir.path(), port, "first.log", "info").await;
    let config = config.to_str().expect("path");
    let key = funded_key(dir.path(), config, &base, "load").await;
    let client = reqwest::Client::new();

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
    // Dropping the server kills it with SIGKILL: it gets no chance to finish anything.
    drop(server);
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
    let _server = serve(dir.path(), port, "second.log", "info").await;
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
    let prov = std::fs::read_to_string(dir.path().join("tollgate-data/provisioning-key.txt"))
        .expect("provisioning key");
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

/// A tmpfs mounted for one test and unmounted when dropped. Mounting needs root: the
/// test fails (never skips) without it.
struct Volume(std::path::PathBuf);

impl Volume {
    fn mount(path: &Path) -> Volume {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts an 8 MB tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Volume(path.to_path_buf())
    }

    /// Fills the volume to its last byte; returns the file that does.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        for size in [1 << 20, 4 << 10, 1] {
            while file.write(&vec![0x5a; size]).is_ok_and(|n| n > 0) {}
        }
        path
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `tollgate serve` that must fail: its stderr, once it has exited (60 s at most).
fn serve_fails(dir: &Path, port: u16) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env("TOLLGATE_CONFIG", dir.join("tollgate.toml"))
        .env("UP_KEY", UPSTREAM_SECRET)
        .env_remove("TOLLGATE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate serve on a full disk did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "started on a full disk");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Start-up on a full disk: with records left in the usage journal by a crash, the
/// replay gives up after a few attempts; with none, opening the database or the
/// journal's probe fails. Either way the server exits with an error naming the file and
/// the full disk, instead of hanging before it listens. Once there is room again, it
/// starts and charges the journal's records once. And a server stopped while the disk
/// is full exits, keeping the journal for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_full_disk_fails_clearly_and_in_time() {
    let dir = tempfile::tempdir().expect("dir");
    let volume = Volume::mount(&dir.path().join("tollgate-data"));
    let (_upstream, config) = upstream_and_config(dir.path()).await;
    let mut toml = std::fs::read_to_string(&config).expect("config");
    toml.push_str("\n[limits]\nledger_wait_ms = 1000\n");
    std::fs::write(&config, toml).expect("config");
    let config = config.to_str().expect("path");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = serve(dir.path(), port, "first.log", "info").await;
    let key = funded_key(dir.path(), config, &base, "disk").await;
    let client = reqwest::Client::new();

    // Answers whose records are only in the journal (the ledger's write lock is held
    // elsewhere), then kill -9: the next start must write them to the ledger.
    let db = dir.path().join("tollgate-data/tollgate.db");
    let url = format!("sqlite://{}", db.display());
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.expect("open");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .expect("lock");
    let mut delivered = Vec::new();
    for i in 0..5 {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": format!("call {i}")}]}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        let header = |name| r.headers()[name].to_str().expect("header").to_string();
        delivered.push((header("x-request-id"), nanos(&header("x-tollgate-cost"))));
    }
    drop(server);
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("unlock");

    // The disk fills. Which step finds it full depends on what SQLite can reuse of its
    // files: opening the database, the replay of the journal (where a start used to
    // retry for ever; `tests/api/outage.rs` makes it fail there for sure) or the
    // journal's probe. Each names its file and the cause.
    let filler = volume.fill();
    // (The server runs in `dir`: it names its files relative to it.)
    let full = |err: &str| {
        err.contains("tollgate-data/tollgate.db")
            && err.to_lowercase().contains("no space left on device")
    };
    let err = serve_fails(dir.path(), port);
    eprintln!("start on a full disk, records in the journal: {err}");
    assert!(full(&err), "{err}");
    blocker.close().await.expect("close");

    // Room again: the start writes the journal's records, each once.
    std::fs::remove_file(&filler).expect("free");
    let server = serve(dir.path(), port, "second.log", "info").await;
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let mut charged: Vec<(String, i64)> = sqlx::query("SELECT request_id, cost FROM usage_records")
        .fetch_all(&mut blocker)
        .await
        .expect("read")
        .iter()
        .map(|row| (row.get("request_id"), row.get("cost")))
        .collect();
    blocker.close().await.expect("close");
    charged.sort();
    delivered.sort();
    assert_eq!(charged, delivered);

    // The disk fills under a running server, which is then stopped (SIGTERM): it
    // exits instead of retrying for ever, and keeps the journal's records, which the
    // next start charges. Answers withheld with 503 are not charged: their records were
    // only in memory.
    let filler = volume.fill();
    let calls = (0..12).map(|i| {
        let (client, key, base) = (client.clone(), key.clone(), base.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": format!("late {i}")}]}))
                .send()
                .await
                .expect("request");
            let header = |name| r.headers()[name].to_str().expect("header").to_string();
            match r.status().as_u16() {
                200 => Some((header("x-request-id"), nanos(&header("x-tollgate-cost")))),
                503 => None,
                other => panic!("status {other} on a full disk"),
            }
        }
    });
    let answered = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("answered on a full disk");
    delivered.extend(answered.into_iter().flatten());
    let mut server = server;
    let term = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.0.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the server did not stop on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&filler).expect("free");
    let server = serve(dir.path(), port, "third.log", "info").await;
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let mut charged: Vec<(String, i64)> = sqlx::query("SELECT request_id, cost FROM usage_records")
        .fetch_all(&mut blocker)
        .await
        .expect("read")
        .iter()
        .map(|row| (row.get("request_id"), row.get("cost")))
        .collect();
    blocker.close().await.expect("close");
    charged.sort();
    delivered.sort();
    assert_eq!(charged, delivered);

    // Nothing left in the journal, and the disk full again: opening the database or
    // the journal's probe stops the start, naming a file on the volume.
    drop(server);
    let filler = volume.fill();
    let err = serve_fails(dir.path(), port);
    eprintln!("start on a full disk, nothing in the journal: {err}");
    assert!(full(&err), "{err}");
    std::fs::remove_file(&filler).expect("free");
}
