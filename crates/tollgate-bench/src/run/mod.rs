//! The scenarios of `bench/run.sh`: set-up (fake upstreams, nginx, Tollgate with a
//! seeded SQLite ledger, keys and credits), then one table per scenario, then the
//! targets of issue 6.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::load::{self, OpenLoop};
use crate::oha::{Oha, OhaRun};
use crate::procs::{self, Proc};
use crate::report::{diff, num, targets_table, Latency, Table, Target};
use crate::seed::{self, SeedArgs};
use crate::writer::{self, WriterArgs};

mod budgets;
mod cluster;
mod cluster_before_after;
mod console;
mod latency;
mod ledger;
mod observe;
mod paths;
mod providers;
mod requests;
mod setup;
mod side;
mod streams;
mod targets;

use ledger::postgres;
pub use observe::recording_costs;
use setup::*;
use side::*;

/// Arguments of `tollgate-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Folder holding the release binaries `tollgate` and `fake-upstream`.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// The `oha` binary.
    #[arg(long)]
    pub oha: PathBuf,
    /// The `nginx` binary (the proxy_pass baseline); skipped when absent.
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// A PostgreSQL server URL; a fresh database is made on it and dropped after.
    #[arg(long)]
    pub postgres: Option<String>,
    /// The Redis of the cluster scenario; by default a `redis-server` of the bench's own.
    #[arg(long)]
    pub redis: Option<String>,
    /// Shorter runs (about 3 minutes in all).
    #[arg(long)]
    pub quick: bool,
    /// Scratch folder (databases, configs, logs).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Also write the tables to this Markdown file.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Run only these scenarios (chat,capacity,stream,held,embeddings,keys,routing,providers,budgets,tokenizer,observability-cost,observability,before-after,writer,activity,console,postgres,cluster,cluster-before-after).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A `tollgate` binary built from an earlier commit: the before/after scenarios
    /// (`before-after` on SQLite, `cluster-before-after` on PostgreSQL + Redis) compare it
    /// with this one on the same load, in alternating rounds.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
}

const CHAT_MODEL: &str = "gpt-4o-mini";
const EMBED_MODEL: &str = "text-embedding-3-small";
const SLOW_MODEL: &str = "slow-stream";
const ROUTED_MODEL: &str = "routed";
const FAILOVER_MODEL: &str = "failover";
const GEMINI_MODEL: &str = "gemini-flash";
const BEDROCK_MODEL: &str = "nova-pro";
/// The fake upstream's test-only AWS key (`fake_upstream::TEST_AWS_*`): its Bedrock
/// verifies every signature with it.
const FAKE_AWS_ACCESS_KEY_ID: &str = "AKIATOLLGATEFAKETEST";
const FAKE_AWS_SECRET_ACCESS_KEY: &str = "tollgate/fake+upstream/test-only/secret/0123";
const OPEN_RATE: u32 = 1_000;
const CONNECTIONS_OPEN: u32 = 32;
const CONNECTIONS_CLOSED: u32 = 64;
/// Rounds of the capacity scenario (see `Bench::capacity`).
const CAPACITY_ROUNDS: usize = 3;
const COLD_KEYS: usize = 1_000;
const HELD_STREAMS: u64 = 2_000;
/// A second account for the activity scenario, with few keys.
const TYPICAL_ACCOUNT: &str = "typical";
const TYPICAL_KEYS: usize = 10;

fn chat_body(stream: bool) -> String {
    let mut body = json!({
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about toll roads."}
        ],
        "max_tokens": 64
    });
    if stream {
        body["stream"] = json!(true);
    }
    body.to_string()
}

fn embed_body() -> String {
    json!({"model": EMBED_MODEL, "input": "The quick brown fox jumps over the lazy dog."})
        .to_string()
}

fn slow_stream_body(chunk_ms: u64, words: u64) -> String {
    json!({
        "model": SLOW_MODEL,
        "stream": true,
        "max_tokens": 256,
        "messages": [{"role": "user",
                      "content": format!("Hold this stream open. [[fake:chunk_ms={chunk_ms},words={words}]]")}]
    })
    .to_string()
}

/// How long each kind of run lasts.
struct Lengths {
    open: Duration,
    closed: Duration,
    warm: Duration,
    stream_rate: f64,
    writer: f64,
    writer_producers: Vec<usize>,
    activity_requests: u64,
}

impl Lengths {
    fn new(quick: bool) -> Lengths {
        if quick {
            Lengths {
                open: Duration::from_secs(5),
                closed: Duration::from_secs(4),
                warm: Duration::from_millis(700),
                stream_rate: 500.0,
                writer: 2.0,
                writer_producers: vec![64, 1024],
                activity_requests: 40,
            }
        } else {
            Lengths {
                open: Duration::from_secs(15),
                closed: Duration::from_secs(10),
                warm: Duration::from_secs(2),
                stream_rate: 500.0,
                writer: 5.0,
                writer_producers: vec![16, 64, 256, 1024],
                activity_requests: 200,
            }
        }
    }
}

/// A running Tollgate.
struct Gate {
    proc: Proc,
    addr: String,
}

/// Where a Tollgate keeps its data.
#[derive(Clone)]
struct Deployment {
    name: &'static str,
    /// The `tollgate` binary serving it (the baseline's, for a before/after comparison).
    bin: PathBuf,
    config: PathBuf,
    database_url: String,
    data_dir: PathBuf,
}

struct Bench {
    args: RunArgs,
    lengths: Lengths,
    work: PathBuf,
    oha: Oha,
    client: reqwest::Client,
    bin_dir: PathBuf,
    fast: Proc,
    fast_addr: String,
    slow: Proc,
    slow_addr: String,
    nginx: Option<(Proc, String)>,
    sqlite: Deployment,
    gate: Option<Gate>,
    provisioning_key: String,
    hot_key: String,
    cold_keys: Vec<String>,
    startups_ms: Vec<f64>,
    idle_rss: Vec<f64>,
    tables: Vec<Table>,
    targets: Vec<Target>,
    restarts: u32,
}

impl Bench {
    fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|s| s == scenario)
    }

    fn gate(&self) -> anyhow::Result<&Gate> {
        self.gate.as_ref().context("tollgate is not running")
    }

    fn gate_url(&self, path: &str) -> anyhow::Result<String> {
        Ok(format!("http://{}{path}", self.gate()?.addr))
    }

    fn direct_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.fast_addr)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.hot_key)
    }

    /// Starts Tollgate on `deployment` and returns the time to its first healthy
    /// `/readyz` (from spawning the process).
    async fn start_gate(
        &mut self,
        deployment: &Deployment,
        log_level: &str,
    ) -> anyhow::Result<f64> {
        self.stop_gate();
        self.restarts += 1;
        let port = procs::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&deployment.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&deployment.config)
            .arg("--listen")
            .arg(&addr)
            .env("RUST_LOG", log_level)
            .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream")
            .env("AWS_ACCESS_KEY_ID", FAKE_AWS_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET_ACCESS_KEY)
            .env_remove("AWS_SESSION_TOKEN");
        let log = self.path(&format!(
            "tollgate-{}-{}-{log_level}.log",
            deployment.name, self.restarts
        ));
        let started = Instant::now();
        let mut proc = Proc::spawn("tollgate", cmd, &log, false)?;
        let url = format!("http://{addr}/readyz");
        let probe = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Ok(r) = probe.get(&url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if !proc.running() {
                bail!("tollgate exited during start-up; see {}", log.display());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("tollgate not ready after 60 s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.gate = Some(Gate { proc, addr });
        Ok(ms)
    }

    /// Starts Tollgate on the SQLite deployment, records start-up time and idle RSS.
    async fn restart_sqlite(&mut self, log_level: &str) -> anyhow::Result<()> {
        let deployment = self.sqlite.clone();
        let ms = self.start_gate(&deployment, log_level).await?;
        self.startups_ms.push(ms);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = mb(self.gate()?.proc.memory("VmRSS")?);
        self.idle_rss.push(rss);
        println!("  (tollgate started in {ms:.1} ms, idle RSS {rss:.1} MB, RUST_LOG={log_level})");
        Ok(())
    }

    fn stop_gate(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.proc.stop(Duration::from_secs(15));
        }
    }

    fn gate_pid(&self) -> anyhow::Result<u32> {
        Ok(self.gate()?.proc.pid())
    }

    fn nginx_pids(&self) -> Vec<u32> {
        match &self.nginx {
            Some((p, _)) => {
                let mut pids = vec![p.pid()];
                pids.extend(procs::children(p.pid()));
                pids
            }
            None => Vec::new(),
        }
    }

    fn oha_post(&self, url: String, body: String, rate: Option<u32>, duration: Duration) -> OhaRun {
        OhaRun {
            url,
            headers: vec![
                ("Authorization".into(), self.bearer()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: Some(body),
            method: "POST",
            rate,
            connections: if rate.is_some() {
                CONNECTIONS_OPEN
            } else {
                CONNECTIONS_CLOSED
            },
            duration,
            requests: None,
        }
    }

    async fn ledger_rows(&self) -> anyhow::Result<i64> {
        let pool = sqlx::SqlitePool::connect(&self.sqlite.database_url).await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok(n)
    }

    /// An oha run against `url` with CPU and peak RSS of `groups` (the first group's
    /// peak and every group's CPU are summed).
    async fn oha_side(&self, run: &OhaRun, groups: Vec<Vec<u32>>) -> anyhow::Result<Side> {
        let probe = Probe::start(groups);
        let r = self.oha.run(run).await?;
        let measured = probe.finish();
        Ok(Side::new(
            r.latency,
            r.requests_per_second,
            r.completed,
            r.failed,
            &measured,
        ))
    }

    async fn warm(&self, url: &str, body: &str) -> anyhow::Result<()> {
        let run = self.oha_post(
            url.to_string(),
            body.to_string(),
            Some(OPEN_RATE),
            self.lengths.warm,
        );
        self.oha.run(&run).await?;
        Ok(())
    }

    fn emit(&mut self, table: Table) {
        println!("\n{}", table.render());
        self.tables.push(table);
    }

    fn target(&mut self, name: &str, limit: &str, measured: String, met: Option<bool>) {
        self.targets.push(Target {
            name: name.into(),
            limit: limit.into(),
            measured,
            met,
        });
    }

    // ---- scenarios ----
}

/// The scenarios `--only` may name; the last three need `--postgres`.
const SCENARIOS: [&str; 19] = [
    "chat",
    "capacity",
    "stream",
    "held",
    "embeddings",
    "keys",
    "routing",
    "providers",
    "budgets",
    "tokenizer",
    "observability-cost",
    "observability",
    "before-after",
    "writer",
    "activity",
    "console",
    "postgres",
    "cluster",
    "cluster-before-after",
];

/// Refuses an `--only` that names no scenario, or one that needs `--postgres` without it,
/// and a `--baseline-bin` that is not a file, before the set-up (which takes a minute)
/// runs for nothing.
fn check_only(args: &RunArgs) -> anyhow::Result<()> {
    if let Some(bin) = &args.baseline_bin {
        if !bin.is_file() {
            bail!("--baseline-bin {}: no such file", bin.display());
        }
    }
    for name in &args.only {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!(
                "--only {name}: no such scenario; the scenarios are {}",
                SCENARIOS.join(",")
            );
        }
        if matches!(
            name.as_str(),
            "postgres" | "cluster" | "cluster-before-after"
        ) && args.postgres.is_none()
        {
            bail!("--only {name} needs --postgres postgres://USER@HOST:PORT/DB");
        }
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    check_only(&args)?;
    let work = args.work_dir.clone();
    std::fs::create_dir_all(&work)?;
    let lengths = Lengths::new(args.quick);
    let client = load::client()?;
    let bin_dir = args.bin_dir.clone();
    let started = Instant::now();

    println!("## Set-up");
    let (fast, fast_addr) = start_fake(&bin_dir, &work, "fake-upstream-fast", true)?;
    let (slow, slow_addr) = start_fake(&bin_dir, &work, "fake-upstream-slow", false)?;
    println!("  fake upstream (fast mode) on {fast_addr}; fake upstream (normal mode, for held streams) on {slow_addr}");

    let nginx = match &args.nginx {
        Some(path) if path.exists() => {
            let port = procs::free_port()?;
            for d in ["nginx-body", "nginx-proxy"] {
                std::fs::create_dir_all(work.join(d))?;
            }
            let conf = work.join("nginx.conf");
            std::fs::write(&conf, nginx_config(&work, port, &fast_addr))?;
            let mut cmd = Command::new(path);
            cmd.arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&work)
                .arg("-e")
                .arg(work.join("nginx-error.log"));
            let proc = Proc::spawn("nginx", cmd, &work.join("nginx.out"), false)?;
            let addr = format!("127.0.0.1:{port}");
            wait_ready(&client, &format!("http://{addr}/v1/models")).await?;
            println!("  nginx (proxy_pass, keepalive upstream) on {addr}");
            Some((proc, addr))
        }
        _ => {
            println!("  nginx not found: the proxy_pass baseline is skipped");
            None
        }
    };

    let data_dir = work.join("sqlite-data");
    std::fs::create_dir_all(&data_dir)?;
    let database_url = format!("sqlite://{}/tollgate.db", data_dir.display());
    let config = work.join("tollgate-sqlite.toml");
    write_config(
        &config,
        &database_url,
        &data_dir,
        &fast_addr,
        &slow_addr,
        true,
    )?;
    let sqlite = Deployment {
        name: "sqlite",
        bin: bin_dir.join("tollgate"),
        config,
        database_url,
        data_dir,
    };

    let mut bench = Bench {
        oha: Oha {
            path: args.oha.clone(),
        },
        lengths,
        work: work.clone(),
        client,
        bin_dir,
        fast,
        fast_addr,
        slow,
        slow_addr,
        nginx,
        sqlite: sqlite.clone(),
        gate: None,
        provisioning_key: String::new(),
        hot_key: String::new(),
        cold_keys: Vec::new(),
        startups_ms: Vec::new(),
        idle_rss: Vec::new(),
        tables: Vec::new(),
        targets: Vec::new(),
        restarts: 0,
        args,
    };
    let (prov, hot, cold) = provision(&mut bench, &sqlite, COLD_KEYS).await?;
    bench.provisioning_key = prov;
    bench.hot_key = hot;
    bench.cold_keys = cold;
    println!("  SQLite deployment: 1 hot + {COLD_KEYS} cold inference keys, 1,000,000 credits");
    let typical_key = provision_typical(&mut bench, &sqlite, TYPICAL_KEYS).await?;
    let mut shapes = Vec::new();
    for (account, key) in [
        ("default", bench.provisioning_key.clone()),
        (TYPICAL_ACCOUNT, typical_key),
    ] {
        let seeded = seed::seed(&SeedArgs {
            database_url: sqlite.database_url.clone(),
            account: account.into(),
            rows: 1_000_000,
            days: 30,
            models: vec![CHAT_MODEL.into(), EMBED_MODEL.into()],
        })
        .await?;
        println!("  account {account}: {seeded}");
        shapes.push((seeded, account.to_string(), key));
    }

    let outcome = scenarios(&mut bench, &shapes).await;
    bench.stop_gate();
    if let Err(e) = &outcome {
        println!("\nA scenario failed: {e:#}\nLogs are in {}", work.display());
    }
    bench.summary_targets();
    let targets = targets_table(&bench.targets);
    println!("\n{}", targets.render());
    bench.tables.push(targets);
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "Whole run: {minutes:.1} min; logs and databases in {}",
        work.display()
    );
    if let Some(path) = &bench.args.results {
        let mut text = String::new();
        for t in &bench.tables {
            text.push_str(&t.render());
            text.push('\n');
        }
        std::fs::write(path, text)?;
        println!("Tables written to {}", path.display());
    }
    outcome
}

async fn scenarios(
    bench: &mut Bench,
    shapes: &[(seed::Seeded, String, String)],
) -> anyhow::Result<()> {
    if bench.wants("chat") {
        bench.chat_open_loop().await?;
    }
    if bench.wants("capacity") {
        bench.capacity().await?;
    }
    if bench.wants("stream") {
        bench.streaming().await?;
    }
    if bench.wants("held") {
        bench.held_streams().await?;
    }
    if bench.wants("embeddings") {
        bench.embeddings().await?;
    }
    if bench.wants("keys") {
        bench.key_mix().await?;
    }
    if bench.wants("routing") {
        bench.routing().await?;
    }
    if bench.wants("budgets") {
        bench.budgets().await?;
    }
    if bench.wants("providers") {
        bench.providers().await?;
    }
    if bench.wants("tokenizer") {
        bench.tokenizer_cost();
    }
    if bench.wants("observability-cost") {
        bench.observability_cost().await?;
    }
    if bench.wants("observability") {
        bench.observability().await?;
    }
    if bench.wants("before-after") {
        bench.before_after().await?;
    }
    if bench.wants("activity") {
        bench.activity_sqlite(shapes).await?;
    }
    if bench.wants("console") {
        bench.console().await?;
    }
    bench.stop_gate();
    // Two fresh databases: the writer bench's accounts would keep the gateway's first
    // start from bootstrapping its own.
    let pg_names = [
        format!("tollgate_bench_{}_writer", std::process::id()),
        format!("tollgate_bench_{}_gateway", std::process::id()),
    ];
    let mut pg_urls = Vec::new();
    if let Some(server) = &bench.args.postgres {
        for name in &pg_names {
            pg_urls.push(fresh_pg_database(server, name).await?);
        }
    }
    let result = async {
        if bench.wants("writer") {
            bench
                .usage_writer(pg_urls.first().map(String::as_str))
                .await?;
        }
        if let Some(url) = pg_urls.get(1) {
            if bench.wants("postgres") {
                postgres(bench, url).await?;
            }
        }
        if let Some(server) = bench.args.postgres.clone() {
            if bench.wants("cluster") {
                cluster::cluster(bench, &server).await?;
            }
            if bench.wants("cluster-before-after") {
                cluster_before_after::cluster_before_after(bench, &server).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    bench.stop_gate();
    if let Some(server) = &bench.args.postgres {
        for name in pg_names.iter().take(pg_urls.len()) {
            drop_pg_database(server, name).await;
        }
    }
    result
}

#[cfg(test)]
mod only_tests {
    use super::*;

    fn args(only: &[&str], postgres: bool) -> RunArgs {
        RunArgs {
            bin_dir: PathBuf::from("bin"),
            oha: PathBuf::from("oha"),
            nginx: None,
            postgres: postgres.then(|| "postgres://u@h:5432/d".to_string()),
            redis: None,
            quick: true,
            work_dir: PathBuf::from("work"),
            results: None,
            only: only.iter().map(|s| s.to_string()).collect(),
            baseline_bin: None,
        }
    }

    #[test]
    fn only_names_scenarios_and_what_they_need() {
        assert!(check_only(&args(&[], false)).is_ok());
        assert!(check_only(&args(&["chat", "console"], false)).is_ok());
        let typo = check_only(&args(&["clustr"], true)).expect_err("a typo");
        assert!(typo.to_string().contains("no such scenario"), "{typo}");
        let alone = check_only(&args(&["cluster"], false)).expect_err("no --postgres");
        assert!(alone.to_string().contains("needs --postgres"), "{alone}");
        assert!(check_only(&args(&["writer", "cluster"], true)).is_ok());
        let ab = check_only(&args(&["cluster-before-after"], false)).expect_err("no --postgres");
        assert!(ab.to_string().contains("needs --postgres"), "{ab}");
        let mut missing = args(&["cluster-before-after"], true);
        missing.baseline_bin = Some(PathBuf::from("/nonexistent/tollgate"));
        let missing = check_only(&missing).expect_err("no baseline binary");
        assert!(missing.to_string().contains("no such file"), "{missing}");
    }
}
