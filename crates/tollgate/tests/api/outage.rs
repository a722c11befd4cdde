//! The ledger cannot take records: a full disk under SQLite (a small tmpfs mounted by
//! the test) and PostgreSQL behind a proxy that is cut. Requests fail with 503 within
//! the bound instead of hanging, nothing reaches the provider while the writer is stuck,
//! `/readyz` names the writer, no answer is delivered as a success without its charge,
//! and service resumes by itself once the disk or the database is back.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_upstream::{FakeUpstream, Options};
use futures_util::FutureExt;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, Row};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::gateway::{catalog, nanos};
use crate::helpers::{spawn_app_on, TestApp};

/// The bound configured here: how long a request waits for its record.
const WAIT_MS: u64 = 1000;
/// No answer may take longer than this, whatever the ledger does (generous: a loaded
/// machine must not fail the test, a hang must).
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// How long "eventually" conditions may take.
const EVENTUALLY: Duration = Duration::from_secs(60);
/// What the test account is granted.
const GRANTED: i64 = 100_000_000_000;

/// A tmpfs mounted for one test and unmounted when dropped.
struct Volume {
    path: PathBuf,
}

impl Volume {
    fn mount(path: &Path, size: &str) -> Volume {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Volume {
                path: path.to_path_buf(),
            },
            Ok(out) => panic!(
                "this test mounts a {size} tmpfs and must run as root (or with CAP_SYS_ADMIN): mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("this test mounts a {size} tmpfs: cannot run mount: {e}"),
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the volume holding `dir` to its last byte with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let block = vec![0x5a_u8; size];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the volume: {e}"),
            }
        }
    }
    let full = file.write(b"x");
    assert!(
        full.as_ref().is_err_and(|e| e.raw_os_error() == Some(28)),
        "the volume is not full: {full:?}"
    );
    path
}

/// One request's outcome as the client saw it.
#[derive(Debug, Clone)]
struct Answer {
    /// The text that marks it in the provider's log.
    tag: String,
    id: String,
    status: u16,
    streamed: bool,
    /// A complete success: a JSON answer, or a stream that ended with `[DONE]`.
    delivered: bool,
    /// `x-tollgate-cost` of a non-streamed success.
    cost: Option<i64>,
    /// The error code (an error body or an in-stream error event).
    code: Option<String>,
    took: Duration,
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Sends one chat request; `slow` is a fake-upstream directive that keeps it in flight.
async fn call(app: &TestApp, key: &str, streamed: bool, slow: &str) -> Answer {
    let tag = format!("call-{}", CALLS.fetch_add(1, Ordering::Relaxed));
    let mut body = json!({"model": "gpt-test", "max_tokens": 50, "messages": [
        {"role": "user", "content": format!("{tag} {slow}")}]});
    if streamed {
        body["stream"] = json!(true);
    }
    let started = Instant::now();
    let answer = async {
        let response = app.post("/v1/chat/completions", key, &body).await;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let id = header("x-request-id").expect("x-request-id");
        let cost = header("x-tollgate-cost").map(|c| nanos(&c));
        // A body cut short is an error here: it was not delivered.
        let text = response.text().await.unwrap_or_default();
        let (delivered, code) = if streamed && status == 200 {
            let error = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find_map(|v| v["error"]["code"].as_str().map(str::to_string));
            (text.contains("data: [DONE]") && error.is_none(), error)
        } else {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().map(str::to_string);
            (
                status == 200 && v["choices"][0]["message"].is_object(),
                code,
            )
        };
        Answer {
            tag: tag.clone(),
            id,
            status,
            streamed,
            delivered,
            cost,
            code,
            took: started.elapsed(),
        }
    };
    tokio::time::timeout(ANSWER_LIMIT, answer)
        .await
        .unwrap_or_else(|_| panic!("{tag} got no answer within {ANSWER_LIMIT:?}: it hung"))
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let response = tokio::time::timeout(ANSWER_LIMIT, app.client.get(app.url("/readyz")).send())
        .await
        .expect("/readyz answers in time")
        .expect("/readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Polls `/readyz` until `done` accepts it.
async fn readyz_until(app: &TestApp, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (status, body) = readyz(app).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz still {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn upstream_env(name: &str) -> Option<String> {
    match name {
        "UP_OPENAI" => Some("up-openai-secret".to_string()),
        "UP_ANTHROPIC" => Some("up-anthropic-secret".to_string()),
        _ => None,
    }
}

async fn fake_upstream() -> FakeUpstream {
    fake_upstream::start(Options {
        openai_api_key: Some("up-openai-secret".into()),
        anthropic_api_key: Some("up-anthropic-secret".into()),
        ..Options::default()
    })
    .await
    .expect("fake upstream")
}

/// A server on `database_url` with the bound at `WAIT_MS`; returns it with an
/// inference key and that key's id.
async fn server(
    dir: tempfile::TempDir,
    database_url: &str,
    upstream: &FakeUpstream,
) -> (TestApp, String, i64) {
    let extra = format!(
        "[limits]\nledger_wait_ms = {WAIT_MS}\n{}",
        catalog(upstream)
    );
    let app = spawn_app_on(dir, database_url, &extra, &upstream_env).await;
    app.grant("100").await;
    let (id, key) = app.create_key(json!({"name": "outage"})).await;
    (app, key, id)
}

/// Checks every answer against the ledger (`rows`: request id → cost) and the key's
/// usage and the balance as the API and the meter show them:
/// - a delivered answer is in the ledger once, at the cost it was told;
/// - an answer withheld after the provider produced it is charged too (its record was
///   accepted before the wait ran out, and is never withdrawn);
/// - a request refused before it reached the provider is not in the ledger;
/// - the ledger holds nothing else, and its sum is the key's usage and the balance change.
async fn check_ledger(
    app: &TestApp,
    key: &str,
    key_id: i64,
    upstream: &FakeUpstream,
    answers: &[Answer],
    rows: &[(String, i64)],
) {
    let mut in_ledger: HashMap<&str, Vec<i64>> = HashMap::new();
    for (id, cost) in rows {
        in_ledger.entry(id.as_str()).or_default().push(*cost);
    }
    let seen: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    let reached = |tag: &str| {
        let marker = format!("\"{tag} ");
        seen.iter().any(|body| body.contains(&marker))
    };
    for a in answers {
        let charged = in_ledger.get(a.id.as_str());
        if a.delivered {
            let costs = charged.unwrap_or_else(|| panic!("delivered but not charged: {a:?}"));
            assert_eq!(costs.len(), 1, "charged more than once: {a:?}");
            assert!(costs[0] > 0, "delivered for free: {a:?}");
            if let Some(cost) = a.cost {
                assert_eq!(
                    costs[0], cost,
                    "charged another cost than it was told: {a:?}"
                );
            }
        } else if reached(&a.tag) {
            assert_eq!(a.code.as_deref(), Some("ledger_unavailable"), "{a:?}");
            assert!(a.status == 503 || a.streamed, "{a:?}");
            assert_eq!(
                charged.map(Vec::len),
                Some(1),
                "withheld, charged once: {a:?}"
            );
        } else {
            assert_eq!(a.status, 503, "{a:?}");
            assert!(
                matches!(
                    a.code.as_deref(),
                    Some("ledger_unavailable" | "database_unavailable")
                ),
                "{a:?}"
            );
            assert!(charged.is_none(), "refused at admission but charged: {a:?}");
        }
    }
    assert_eq!(rows.len(), in_ledger.len());
    let ids: Vec<&str> = answers.iter().map(|a| a.id.as_str()).collect();
    for id in in_ledger.keys() {
        assert!(ids.contains(id), "a ledger record of no request: {id}");
    }
    let total: i64 = rows.iter().map(|(_, cost)| cost).sum();
    assert!(total > 0);
    let key_view: Value = app.get("/v1/key", key).await.json().await.expect("json");
    assert_eq!(nanos(key_view["usage"].as_str().expect("usage")), total);
    let balance: Value = app
        .get("/v1/account/balance", &app.prov_key)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        nanos(balance["balance"].as_str().expect("balance")),
        GRANTED - total
    );
    let tollgate::billing::meter::Meter::Local(meter) = &*app.state.meter else {
        panic!("one machine: local budgets");
    };
    let (usage, reserved) = meter
        .key_state(app.account_id, tollgate::store::KeyId(key_id))
        .expect("the meter knows the key");
    assert_eq!(usage.nanos(), total, "the meter and the ledger disagree");
    assert_eq!(reserved.nanos(), 0, "a reservation was left behind");
}

fn sqlite_rows(db: &Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).expect("open the ledger");
    let mut query = conn
        .prepare("SELECT request_id, cost FROM usage_records")
        .expect("query");
    let rows = query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("rows");
    rows.map(|r| r.expect("row")).collect()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_requests_in_time_and_service_resumes_when_space_returns() {
    let dir = tempfile::tempdir().expect("dir");
    let volume = Volume::mount(&dir.path().join("volume"), "8m");
    let db = volume.path.join("tollgate.db");
    let upstream = fake_upstream().await;
    let data = tempfile::tempdir().expect("data dir");
    let url = format!("sqlite://{}", db.display());
    let (app, key, key_id) = server(data, &url, &upstream).await;
    let mut answers = Vec::new();
    for streamed in [false, true, false] {
        let answer = call(&app, &key, streamed, "").await;
        assert!(answer.delivered, "{answer:?}");
        answers.push(answer);
    }
    // Their charges are committed before the disk fills.
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    let filler = fill(&volume.path);

    // Requests in flight when the disk fills: the provider answers them after it is
    // full. The journal's last page has room for a few records; the others cannot be
    // made safe, so their answers are withheld, within the bound.
    let in_flight = (0..40).map(|i| call(&app, &key, i % 4 == 3, "[[fake:first_byte_ms=1500]]"));
    let wave = futures_util::future::join_all(in_flight).await;
    let withheld = wave.iter().filter(|a| !a.delivered).count();
    let slowest = wave.iter().map(|a| a.took).max().expect("answers");
    eprintln!("full disk: {withheld} of 40 answers in flight withheld; slowest {slowest:?}");
    assert!(withheld >= 20, "{withheld} of 40 withheld: {wave:#?}");
    for a in wave.iter().filter(|a| !a.delivered) {
        assert_eq!(a.code.as_deref(), Some("ledger_unavailable"), "{a:?}");
        assert!(a.status == 503 || a.streamed, "{a:?}");
    }
    answers.extend(wave);

    // The writer is stuck: /readyz names it, and new requests are refused before they
    // reach the provider, at once.
    let ready = readyz_until(&app, "the stuck writer", |status, body| {
        status == 503 && body["reason"] == "usage_writer"
    })
    .await;
    let writer = &ready["usage_writer"];
    assert_eq!(writer["stuck"], true, "{ready}");
    assert_eq!(writer["last_error"], "disk_full", "{ready}");
    assert!(writer["backlog"].as_u64().expect("backlog") >= 1, "{ready}");
    assert!(
        writer["failed_commits"].as_u64().expect("failures") >= 1,
        "{ready}"
    );
    let before = upstream.received().len();
    for i in 0..6 {
        let refused = call(&app, &key, i % 2 == 1, "").await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.code.as_deref(), Some("ledger_unavailable"));
        answers.push(refused);
    }
    assert_eq!(
        upstream.received().len(),
        before,
        "a refused request reached the provider"
    );
    // Reads of the ledger answer in time too.
    let key_view = tokio::time::timeout(ANSWER_LIMIT, app.get("/v1/key", &key))
        .await
        .expect("/v1/key hung");
    assert_eq!(key_view.status(), 503);

    // What the ledger's files hold on the full volume.
    let journal = tollgate::usage::Journal::paths(&db);
    let wal = volume.path.join("tollgate.db-wal");
    eprintln!(
        "full disk: WAL {} bytes, journal {} + {} bytes, database {} bytes",
        size(&wal),
        size(&journal[0]),
        size(&journal[1]),
        size(&db)
    );

    // Space returns: the held records are committed and service resumes, no restart.
    std::fs::remove_file(&filler).expect("free the volume");
    readyz_until(&app, "recovery", |status, _| status == 200).await;
    for streamed in [false, true, false, true] {
        let answer = call(&app, &key, streamed, "").await;
        assert!(answer.delivered, "{answer:?}");
        answers.push(answer);
    }
    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    check_ledger(&app, &key, key_id, &upstream, &answers, &sqlite_rows(&db)).await;

    // Idle again: the WAL is truncated (it does not keep its size on the volume), and
    // the journal's files stay under their bound.
    let deadline = Instant::now() + EVENTUALLY;
    while size(&wal) > 0 {
        assert!(
            Instant::now() < deadline,
            "the WAL stays at {} bytes",
            size(&wal)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for file in &journal {
        assert!(
            size(file) <= 8 << 20,
            "{}: {} bytes",
            file.display(),
            size(file)
        );
    }
    drop(app);
}

/// The records a crash left in the usage journal cannot be written at start-up because
/// the disk is full: the start fails after a few attempts, naming the journal and the
/// cause, where it used to retry for ever; the records stay in the journal, and the
/// next start with room charges each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_on_a_full_disk_gives_up_clearly_and_the_next_start_charges_once() {
    use tollgate::store::{KeyKind, NewKey, UsageRecord};
    use tollgate::usage::{Frame, Journal, UsageWriter};
    let dir = tempfile::tempdir().expect("dir");
    let volume = Volume::mount(&dir.path().join("volume"), "8m");
    let db = volume.path.join("tollgate.db");
    let store = tollgate::store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("store");
    let account = store.create_account("a", 0).await.expect("account");
    let key = store
        .create_key(NewKey {
            account_id: account.id,
            kind: KeyKind::Inference,
            name: "k".into(),
            key_hash: "h".into(),
            hint: "h".into(),
            created_at: 0,
            expires_at: None,
            credit_limit: None,
            rate_limit_rpm: None,
            clamp_max_tokens: false,
        })
        .await
        .expect("key");
    // What a crash left behind: 3,000 records in the journal, none in the ledger. One
    // batch of them needs far more WAL than SQLite can reuse of its file.
    const LEFT: i64 = 3_000;
    {
        let (journal, left) = Journal::open(&db).expect("journal");
        assert!(left.is_empty());
        for i in 0..LEFT {
            let record = UsageRecord {
                request_id: format!("left-{i}"),
                account_id: account.id,
                key_id: key.id,
                model: "m".into(),
                endpoint: "chat.completions".into(),
                input_tokens: 10,
                cached_input_tokens: 0,
                output_tokens: 10,
                cost: tollgate::billing::Credits::from_nanos(i + 1),
                status: 200,
                latency_ms: 1,
                created_at: 1_767_225_600,
                detail: Default::default(),
            };
            journal.append(&Frame::of(&record), |_| ()).expect("append");
        }
    }
    let filler = fill(&volume.path);
    let wait = Duration::from_millis(WAIT_MS);
    let started = tokio::time::timeout(ANSWER_LIMIT, UsageWriter::start(store.clone(), wait))
        .await
        .expect("the replay on a full disk gave up in time");
    let err = started.err().expect("no start on a full disk").to_string();
    let journal = Journal::paths(&db);
    assert!(
        err.contains(&journal[0].display().to_string())
            && err.contains("3000 usage records")
            && err.contains("no space left on device"),
        "{err}"
    );
    assert!(Journal::open(&db).expect("journal").1.len() == LEFT as usize);

    std::fs::remove_file(&filler).expect("free the volume");
    let (writer, task) = UsageWriter::start(store.clone(), wait)
        .await
        .expect("a start with room");
    drop(writer);
    task.await.expect("writer");
    let account = store
        .account(account.id)
        .await
        .expect("read")
        .expect("account");
    assert_eq!(account.charged.nanos(), LEFT * (LEFT + 1) / 2);
    assert_eq!(sqlite_rows(&db).len(), LEFT as usize);
}

/// A TCP proxy in front of PostgreSQL that can be cut: every connection closed and new
/// ones refused (its port closed), then restored on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = listen("127.0.0.1:0".parse().expect("addr"));
        let proxy = Proxy {
            addr: listener.local_addr().expect("addr"),
            upstream,
            accept: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, connections) = (self.upstream, self.connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut open = connections.lock().expect("lock");
                open.retain(|c| !c.is_finished());
                open.push(relay);
            }
        });
        *self.accept.lock().expect("lock") = Some(accept);
    }

    /// Closes the port and every connection through it.
    fn cut(&self) {
        if let Some(accept) = self.accept.lock().expect("lock").take() {
            accept.abort();
        }
        for relay in self.connections.lock().expect("lock").drain(..) {
            relay.abort();
        }
    }

    /// Opens the same port again.
    fn restore(&self) {
        self.serve(listen(self.addr));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn listen(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind the proxy's port");
    socket.listen(128).expect("listen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_under_load_fails_requests_in_time_and_service_resumes() {
    let base = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut admin =
        tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&base))
            .await
            .unwrap_or_else(|_| panic!("PostgreSQL at {base} did not answer within 10 s"))
            .unwrap_or_else(|e| panic!("this test needs PostgreSQL at {base}: {e}"));
    let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let direct = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let outcome = std::panic::AssertUnwindSafe(postgres_outage(&direct, &name))
        .catch_unwind()
        .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("drop database");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn postgres_outage(direct: &str, name: &str) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let upstream = fake_upstream().await;
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("postgres://postgres@{}/{name}", proxy.addr);
    let (app, key, key_id) = server(dir, &url, &upstream).await;
    let app = Arc::new(app);
    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Four clients, each one request after another, a quarter of them streamed.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (app, key, answers, stop) =
                (app.clone(), key.clone(), answers.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let slow = "[[fake:first_byte_ms=100]]";
                    let answer = call(&app, &key, (c + n) % 4 == 0, slow).await;
                    n += 1;
                    let refused = answer.status == 503;
                    answers.lock().expect("lock").push(answer);
                    if refused {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let delivered = |answers: &Mutex<Vec<Answer>>| {
        answers
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.delivered)
            .count()
    };
    let deadline = Instant::now() + EVENTUALLY;
    while delivered(&answers) < 20 {
        assert!(Instant::now() < deadline, "the load does not get through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The database goes away under load.
    proxy.cut();
    let cut_at = answers.lock().expect("lock").len();
    let ready = readyz_until(&app, "the stuck writer", |status, body| {
        status == 503 && body["reason"] == "usage_writer"
    })
    .await;
    assert_eq!(ready["usage_writer"]["stuck"], true, "{ready}");
    // Some requests are refused while it is away (within the bound: `call` checks).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let refused = answers.lock().expect("lock")[cut_at..]
            .iter()
            .filter(|a| a.status == 503)
            .count();
        if refused >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 while the database is away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It comes back: service resumes by itself.
    proxy.restore();
    readyz_until(&app, "recovery", |status, _| status == 200).await;
    let resumed = delivered(&answers);
    let deadline = Instant::now() + EVENTUALLY;
    while delivered(&answers) < resumed + 20 {
        assert!(
            Instant::now() < deadline,
            "the load does not get through again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    let answers = answers.lock().expect("lock").clone();
    let slowest = answers.iter().map(|a| a.took).max().expect("answers");
    eprintln!(
        "{} answers, {} delivered, {} refused or withheld; slowest {slowest:?}",
        answers.len(),
        answers.iter().filter(|a| a.delivered).count(),
        answers.iter().filter(|a| !a.delivered).count()
    );

    assert_eq!(app.get("/v1/key", &key).await.status(), 200);
    let pool = sqlx::PgPool::connect(direct).await.expect("database");
    let rows: Vec<(String, i64)> = sqlx::query("SELECT request_id, cost FROM usage_records")
        .fetch_all(&pool)
        .await
        .expect("ledger")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    pool.close().await;
    check_ledger(&app, &key, key_id, &upstream, &answers, &rows).await;
}
