//! 2,000 connections that send half a request, against the real binary: every one is
//! closed within the configured timeout (generously bounded: a loaded machine is slow),
//! `/healthz` answers throughout, and the server's memory (RSS) comes back near idle.
//! A test of behaviour, not a timing benchmark.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 2000;
/// `[server] header_timeout_ms` and `body_timeout_ms` of the test.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the timeout a connection may take to be closed on a loaded machine.
const SLACK: Duration = Duration::from_secs(60);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The resident memory of a process, in KB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

async fn healthz(client: &reqwest::Client, addr: SocketAddr) -> bool {
    client
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Reads until the server closes the connection; false if it stays open past `within`.
async fn closed_within(mut stream: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_sent_connections_are_closed_and_memory_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nheader_timeout_ms = {ms}\nbody_timeout_ms = {ms}\n",
            ms = TIMEOUT.as_millis()
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &addr.to_string()])
        .current_dir(dir.path())
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_LISTEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tollgate");
    let server = Server(child);
    let pid = server.0.id();
    let client = reqwest::Client::new();
    let started = Instant::now();
    while !healthz(&client, addr).await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tollgate did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = std::fs::read_to_string(dir.path().join("tollgate-data/provisioning-key.txt"))
        .expect("key file")
        .trim()
        .to_string();
    for _ in 0..20 {
        assert!(healthz(&client, addr).await);
    }
    let idle = rss_kb(pid);

    // Four ways to send too little, 500 of each.
    let body_head = format!(
        "POST /v1/account/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":"
    );
    let partial: [&[u8]; 4] = [
        b"",
        b"POST /v1/chat/compl",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
        body_head.as_bytes(),
    ];
    let mut streams = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(partial[i % 4]).await.expect("write");
        streams.push(stream);
    }
    let opened = Instant::now();
    let peak = rss_kb(pid);

    // Every one closed within the timeout (plus slack), /healthz answering meanwhile.
    let waits: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(closed_within(s, TIMEOUT + SLACK)))
        .collect();
    let mut healthy = 0;
    while opened.elapsed() < TIMEOUT {
        assert!(healthz(&client, addr).await, "/healthz stopped answering");
        healthy += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut open = 0;
    for wait in waits {
        if !wait.await.expect("join") {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} connections were still open");
    assert!(healthy > 0);
    assert!(healthz(&client, addr).await);

    // Memory back near idle: the allocator's background thread returns freed pages
    // within seconds (10 s decay).
    let near = idle + 12 * 1024;
    let settled = Instant::now();
    let mut now = rss_kb(pid);
    while now > near && settled.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = rss_kb(pid);
    }
    eprintln!(
        "RSS: idle {idle} KB, with {CONNECTIONS} half-sent connections {peak} KB, after {now} KB"
    );
    assert!(now <= near, "RSS {now} KB, idle {idle} KB, peak {peak} KB");
}
