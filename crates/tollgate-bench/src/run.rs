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
    /// Shorter runs (about 3 minutes in all).
    #[arg(long)]
    pub quick: bool,
    /// Scratch folder (databases, configs, logs).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Also write the tables to this Markdown file.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Run only these scenarios (chat,capacity,stream,held,embeddings,keys,writer,activity,postgres).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

const CHAT_MODEL: &str = "gpt-4o-mini";
const EMBED_MODEL: &str = "text-embedding-3-small";
const SLOW_MODEL: &str = "slow-stream";
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

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// CPU and peak RSS of some processes over one run.
struct Probe {
    groups: Vec<Vec<u32>>,
    cpu_before: Vec<f64>,
}

impl Probe {
    fn start(groups: Vec<Vec<u32>>) -> Probe {
        for g in &groups {
            for pid in g {
                let _ = procs::reset_peak(*pid);
            }
        }
        let cpu_before = groups.iter().map(|g| procs::group_cpu_seconds(g)).collect();
        Probe { groups, cpu_before }
    }

    /// Per group: CPU seconds used, peak RSS in MB.
    fn finish(self) -> Vec<(f64, f64)> {
        self.groups
            .iter()
            .zip(self.cpu_before)
            .map(|(g, before)| {
                (
                    procs::group_cpu_seconds(g) - before,
                    mb(procs::group_peak(g)),
                )
            })
            .collect()
    }
}

/// One side of a comparison: what the load generator saw plus CPU and memory.
#[derive(Debug, Clone, Copy)]
struct Side {
    latency: Latency,
    rps: f64,
    cpu_us_per_request: f64,
    peak_rss_mb: f64,
    /// Peak RSS of the first process group alone (Tollgate's, through Tollgate).
    own_peak_mb: f64,
    completed: u64,
    failed: u64,
}

impl Side {
    fn new(
        latency: Latency,
        rps: f64,
        completed: u64,
        failed: u64,
        measured: &[(f64, f64)],
    ) -> Side {
        let cpu: f64 = measured.iter().map(|(c, _)| c).sum();
        Side {
            latency,
            rps,
            cpu_us_per_request: cpu * 1e6 / (completed.max(1) as f64),
            peak_rss_mb: measured.iter().map(|(_, r)| r).sum(),
            own_peak_mb: measured.first().map_or(f64::NAN, |m| m.1),
            completed,
            failed,
        }
    }
}

/// Rows shared by every comparison table: `sides[0]` is the baseline.
fn comparison(title: &str, note: &str, heads: &[&str], sides: &[Side], extra: &[usize]) -> Table {
    // Columns: label, then each side, with a "+/-" column after each side listed in `extra`.
    let mut columns = vec!["metric"];
    let mut plan: Vec<(usize, bool)> = Vec::new();
    for (i, head) in heads.iter().enumerate() {
        columns.push(head);
        plan.push((i, false));
        if extra.contains(&i) {
            columns.push("difference");
            plan.push((i, true));
        }
    }
    let mut t = Table::new(title, note, &columns);
    let base = sides[0];
    let row = |t: &mut Table, label: &str, get: &dyn Fn(&Side) -> f64, d: usize| {
        let cells = plan
            .iter()
            .map(|(i, is_diff)| {
                if *is_diff {
                    diff(Some(get(&base)), Some(get(&sides[*i])), d)
                } else {
                    num(Some(get(&sides[*i])), d)
                }
            })
            .collect();
        t.row(label, cells);
    };
    row(&mut t, "p50 latency (ms)", &|s| s.latency.p50_ms, 3);
    row(&mut t, "p99 latency (ms)", &|s| s.latency.p99_ms, 3);
    row(&mut t, "p99.9 latency (ms)", &|s| s.latency.p999_ms, 3);
    row(&mut t, "requests/s", &|s| s.rps, 0);
    row(&mut t, "CPU per request (µs)", &|s| s.cpu_us_per_request, 1);
    row(&mut t, "peak RSS (MB)", &|s| s.peak_rss_mb, 1);
    row(&mut t, "failed requests", &|s| s.failed as f64, 0);
    t
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
        let mut cmd = Command::new(self.bin_dir.join("tollgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&deployment.config)
            .arg("--listen")
            .arg(&addr)
            .env("RUST_LOG", log_level)
            .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream");
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

    /// Non-streamed chat, open loop at 1,000 req/s: direct, through Tollgate at
    /// RUST_LOG=info (the default) and at RUST_LOG=warn.
    async fn chat_open_loop(&mut self) -> anyhow::Result<()> {
        let d = self.lengths.open;
        let body = chat_body(false);
        let direct_url = self.direct_url("/v1/chat/completions");
        self.warm(&direct_url, &body).await?;
        let direct = self
            .oha_side(
                &self.oha_post(direct_url, body.clone(), Some(OPEN_RATE), d),
                vec![vec![self.fast.pid()]],
            )
            .await?;
        let mut sides = vec![direct];
        let mut heads = vec!["direct"];
        if let Some((_, addr)) = &self.nginx {
            // What one plain proxy hop adds on this machine, for scale.
            let url = format!("http://{addr}/v1/chat/completions");
            self.warm(&url, &body).await?;
            let side = self
                .oha_side(
                    &self.oha_post(url, body.clone(), Some(OPEN_RATE), d),
                    vec![self.nginx_pids(), vec![self.fast.pid()]],
                )
                .await?;
            sides.push(side);
            heads.push("nginx proxy_pass");
        }
        let first_gate = sides.len();
        let mut ledger = Vec::new();
        for level in ["info", "warn"] {
            self.restart_sqlite(level).await?;
            let url = self.gate_url("/v1/chat/completions")?;
            self.warm(&url, &body).await?;
            let before = self.ledger_rows().await?;
            let side = self
                .oha_side(
                    &self.oha_post(url, body.clone(), Some(OPEN_RATE), d),
                    vec![vec![self.gate_pid()?], vec![self.fast.pid()]],
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            ledger.push(self.ledger_rows().await? - before);
            sides.push(side);
        }
        heads.push("Tollgate, RUST_LOG=info");
        heads.push("Tollgate, RUST_LOG=warn");
        let diffs: Vec<usize> = (1..sides.len()).collect();
        let mut table = comparison(
            &format!("Chat completions, non-streamed, open loop at {OPEN_RATE} req/s"),
            &format!(
                "oha -q {OPEN_RATE} --latency-correction -c {CONNECTIONS_OPEN}, {} s per column. CPU and peak RSS (VmHWM): the fake upstream's direct; the proxy's plus the fake's otherwise, so the difference is what the proxy adds.",
                d.as_secs()
            ),
            &heads,
            &sides,
            &diffs,
        );
        let mut cells = vec!["-".to_string(); 2 * (first_gate - 1) + 1];
        for (i, n) in ledger.iter().enumerate() {
            cells.push(num(Some(*n as f64), 0));
            cells.push(format!(
                "(of {} answered)",
                num(Some(sides[first_gate + i].completed as f64), 0)
            ));
        }
        table.row("usage records written", cells);
        self.emit(table);
        let (direct, info, warn) = (sides[0], sides[first_gate], sides[first_gate + 1]);
        let sides = [direct, info, warn];
        let added_p50 = info.latency.p50_ms - direct.latency.p50_ms;
        let added_p99 = info.latency.p99_ms - direct.latency.p99_ms;
        self.target(
            "added p50 latency at 1,000 req/s (info)",
            "≤ 0.2 ms",
            format!(
                "{added_p50:.3} ms (warn: {:.3} ms)",
                sides[2].latency.p50_ms - sides[0].latency.p50_ms
            ),
            Some(added_p50 <= 0.2),
        );
        self.target(
            "added p99 latency at 1,000 req/s (info)",
            "≤ 1 ms",
            format!(
                "{added_p99:.3} ms (warn: {:.3} ms)",
                sides[2].latency.p99_ms - sides[0].latency.p99_ms
            ),
            Some(added_p99 <= 1.0),
        );
        self.target(
            "Tollgate RSS at 1,000 req/s (peak, info)",
            "< 64 MB",
            format!(
                "{:.1} MB (warn: {:.1} MB)",
                sides[1].own_peak_mb, sides[2].own_peak_mb
            ),
            Some(sides[1].own_peak_mb < 64.0),
        );
        Ok(())
    }

    /// Closed-loop capacity: direct, then `CAPACITY_ROUNDS` rounds of nginx proxy_pass,
    /// Tollgate at `info` and Tollgate at `warn`, one after the other. This machine's
    /// speed shifts by a third for tens of seconds at a time, so one column measured
    /// after another can land in different phases; the ratio is taken within each round
    /// and the median round is reported.
    async fn capacity(&mut self) -> anyhow::Result<()> {
        let d = self.lengths.closed;
        let per_round = (d / 2).max(Duration::from_secs(2));
        let body = chat_body(false);
        let direct_url = self.direct_url("/v1/chat/completions");
        let direct = self
            .oha_side(
                &self.oha_post(direct_url, body.clone(), None, d),
                vec![vec![self.fast.pid()]],
            )
            .await?;
        // Per round: nginx (if any), info, warn.
        let mut rounds: Vec<Vec<Side>> = Vec::new();
        for _ in 0..CAPACITY_ROUNDS {
            let mut round = Vec::new();
            if let Some((_, addr)) = &self.nginx {
                let url = format!("http://{addr}/v1/chat/completions");
                self.warm(&url, &body).await?;
                round.push(
                    self.oha_side(
                        &self.oha_post(url, body.clone(), None, per_round),
                        vec![self.nginx_pids(), vec![self.fast.pid()]],
                    )
                    .await?,
                );
            }
            for level in ["info", "warn"] {
                self.restart_sqlite(level).await?;
                let url = self.gate_url("/v1/chat/completions")?;
                self.warm(&url, &body).await?;
                round.push(
                    self.oha_side(
                        &self.oha_post(url, body.clone(), None, per_round),
                        vec![vec![self.gate_pid()?], vec![self.fast.pid()]],
                    )
                    .await?,
                );
            }
            rounds.push(round);
        }
        let with_nginx = self.nginx.is_some();
        let columns = rounds[0].len();
        let mut heads = vec!["direct"];
        if with_nginx {
            heads.push("nginx proxy_pass");
        }
        heads.push("Tollgate, info");
        heads.push("Tollgate, warn");
        // Each column shows its median round (by requests/s).
        let mut sides = vec![direct];
        for column in 0..columns {
            let mut runs: Vec<&Side> = rounds.iter().map(|r| &r[column]).collect();
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            sides.push(*runs[runs.len() / 2]);
        }
        let gate = |round: &Vec<Side>, level: usize| round[columns - 2 + level].rps;
        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let gate_rps = [
            median(rounds.iter().map(|r| gate(r, 0)).collect()),
            median(rounds.iter().map(|r| gate(r, 1)).collect()),
        ];
        let mut table = comparison(
            "Capacity: chat completions, non-streamed, closed loop",
            &format!(
                "oha -c {CONNECTIONS_CLOSED}; direct {} s, then {CAPACITY_ROUNDS} rounds of {} s per column (nginx, Tollgate at info, Tollgate at warn, one after the other); each column shows its median round. Load generator on the same 2 cores; latency here is under saturation.",
                d.as_secs(),
                per_round.as_secs()
            ),
            &heads,
            &sides,
            &[],
        );
        let mut ratios = None;
        if with_nginx {
            let round_ratios: Vec<[f64; 2]> = rounds
                .iter()
                .map(|r| [gate(r, 0) / r[0].rps, gate(r, 1) / r[0].rps])
                .collect();
            let info = median(round_ratios.iter().map(|r| r[0]).collect());
            let warn = median(round_ratios.iter().map(|r| r[1]).collect());
            let list = |level: usize| {
                round_ratios
                    .iter()
                    .map(|r| format!("{:.2}", r[level]))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            table.row(
                "capacity / nginx, median round",
                vec![
                    "-".into(),
                    "1.00".into(),
                    format!("{info:.2}"),
                    format!("{warn:.2}"),
                ],
            );
            table.row(
                "capacity / nginx, each round",
                vec!["-".into(), "-".into(), list(0), list(1)],
            );
            ratios = Some((info, warn));
        }
        self.emit(table);
        self.target(
            "capacity, non-streamed (info)",
            "≥ 10,000 req/s",
            format!(
                "{} req/s (warn: {})",
                num(Some(gate_rps[0]), 0),
                num(Some(gate_rps[1]), 0)
            ),
            Some(gate_rps[0] >= 10_000.0),
        );
        match ratios {
            Some((info, warn)) => self.target(
                "capacity vs nginx proxy_pass (info, median round)",
                "≥ 0.5",
                format!("{info:.2} (warn: {warn:.2})"),
                Some(info >= 0.5),
            ),
            None => self.target(
                "capacity vs nginx proxy_pass",
                "≥ 0.5",
                "nginx missing".into(),
                None,
            ),
        }
        Ok(())
    }

    /// Streamed chat: time to first byte and to the end, open loop.
    async fn streaming(&mut self) -> anyhow::Result<()> {
        let rate = self.lengths.stream_rate;
        let d = self.lengths.open;
        let body = Bytes::from(chat_body(true));
        self.restart_sqlite("info").await?;
        let mut results = Vec::new();
        for url in [
            self.direct_url("/v1/chat/completions"),
            self.gate_url("/v1/chat/completions")?,
        ] {
            let warm = OpenLoop {
                url: url.clone(),
                body: body.clone(),
                keys: vec![self.bearer()],
                rate,
                duration: self.lengths.warm,
            };
            load::open_loop(&self.client, &warm).await?;
            let groups = if url.contains(&self.fast_addr) {
                vec![vec![self.fast.pid()]]
            } else {
                vec![vec![self.gate_pid()?], vec![self.fast.pid()]]
            };
            let probe = Probe::start(groups);
            let run = OpenLoop {
                duration: d,
                ..warm
            };
            let r = load::open_loop(&self.client, &run).await?;
            let m = probe.finish();
            let cpu: f64 = m.iter().map(|(c, _)| c).sum();
            let rss: f64 = m.iter().map(|(_, r)| r).sum();
            results.push((r, cpu, rss));
        }
        let mut t = Table::new(
            format!("Streamed chat completions, open loop at {rate} streams/s"),
            format!(
                "This crate's open-loop client (one task per request, latency from the scheduled send), {} s per column; 8 content chunks per stream; Tollgate asks the upstream for usage and strips it again.",
                d.as_secs()
            ),
            &["metric", "direct", "through Tollgate", "difference"],
        );
        let (a, b) = (&results[0], &results[1]);
        let mut row = |label: &str, x: f64, y: f64, dec: usize| {
            t.row(
                label,
                vec![
                    num(Some(x), dec),
                    num(Some(y), dec),
                    diff(Some(x), Some(y), dec),
                ],
            );
        };
        row(
            "TTFB p50 (ms)",
            a.0.first_byte.p50_ms,
            b.0.first_byte.p50_ms,
            3,
        );
        row(
            "TTFB p99 (ms)",
            a.0.first_byte.p99_ms,
            b.0.first_byte.p99_ms,
            3,
        );
        row(
            "TTFB p99.9 (ms)",
            a.0.first_byte.p999_ms,
            b.0.first_byte.p999_ms,
            3,
        );
        row("total p50 (ms)", a.0.total.p50_ms, b.0.total.p50_ms, 3);
        row("total p99 (ms)", a.0.total.p99_ms, b.0.total.p99_ms, 3);
        row("total p99.9 (ms)", a.0.total.p999_ms, b.0.total.p999_ms, 3);
        row(
            "streams/s",
            a.0.requests_per_second,
            b.0.requests_per_second,
            0,
        );
        row(
            "CPU per stream (µs)",
            a.1 * 1e6 / a.0.completed.max(1) as f64,
            b.1 * 1e6 / b.0.completed.max(1) as f64,
            1,
        );
        row("peak RSS (MB)", a.2, b.2, 1);
        row("failed streams", a.0.failed as f64, b.0.failed as f64, 0);
        self.emit(t);
        let added = b.0.first_byte.p99_ms - a.0.first_byte.p99_ms;
        self.target(
            "streaming: added TTFB p99",
            "≤ 1 ms",
            format!("{added:.3} ms"),
            Some(added <= 1.0),
        );
        Ok(())
    }

    /// 2,000 streams held open at once, direct and through Tollgate.
    async fn held_streams(&mut self) -> anyhow::Result<()> {
        // 60 chunks 500 ms apart: each stream stays open for 30 s unless released.
        let body = Bytes::from(slow_stream_body(500, 60));
        let open_rate = 500.0;
        let limit = Duration::from_secs(30);
        self.restart_sqlite("info").await?;
        let gate_pid = self.gate_pid()?;
        let slow_pid = self.slow.pid();
        let idle = mb(procs::memory(gate_pid, "VmRSS")?);

        let direct_url = format!("http://{}/v1/chat/completions", self.slow_addr);
        let direct_body =
            Bytes::from(String::from_utf8_lossy(&body).replace(SLOW_MODEL, CHAT_MODEL));
        let probe = Probe::start(vec![vec![slow_pid]]);
        let held = load::hold_streams(
            &self.client,
            &direct_url,
            direct_body,
            &self.bearer(),
            HELD_STREAMS,
            open_rate,
            limit,
        )
        .await;
        let slow_rss_direct = mb(procs::memory(slow_pid, "VmRSS")?);
        let (direct_opened, direct_failed, direct_secs) =
            (held.opened, held.failed, held.open_seconds);
        held.release().await;
        let direct_peak = probe.finish()[0].1;
        tokio::time::sleep(Duration::from_millis(500)).await;

        let url = self.gate_url("/v1/chat/completions")?;
        let probe = Probe::start(vec![vec![gate_pid], vec![slow_pid]]);
        let held = load::hold_streams(
            &self.client,
            &url,
            body,
            &self.bearer(),
            HELD_STREAMS,
            open_rate,
            limit,
        )
        .await;
        let gate_rss = mb(procs::memory(gate_pid, "VmRSS")?);
        let slow_rss = mb(procs::memory(slow_pid, "VmRSS")?);
        let (opened, failed, secs) = (held.opened, held.failed, held.open_seconds);
        held.release().await;
        let peaks = probe.finish();
        // Let the 2,000 disconnects settle, then check the gateway still answers.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = mb(procs::memory(gate_pid, "VmRSS")?);
        let healthy = self
            .client
            .get(self.gate_url("/readyz")?)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);

        let mut t = Table::new(
            format!("{HELD_STREAMS} concurrent open streams"),
            format!(
                "Streams from a second fake upstream (normal mode, `[[fake:chunk_ms=500,words=60]]` in the prompt: one chunk every 500 ms), opened at {open_rate}/s and held until all delivered a first byte, then dropped by the client (each is then charged as a 499)."
            ),
            &["metric", "direct", "through Tollgate"],
        );
        t.row(
            "streams open at once",
            vec![
                num(Some(direct_opened as f64), 0),
                num(Some(opened as f64), 0),
            ],
        );
        t.row(
            "failed streams",
            vec![
                num(Some(direct_failed as f64), 0),
                num(Some(failed as f64), 0),
            ],
        );
        t.row(
            "time to open them all (s)",
            vec![num(Some(direct_secs), 2), num(Some(secs), 2)],
        );
        t.row(
            "Tollgate RSS idle before (MB)",
            vec!["-".into(), num(Some(idle), 1)],
        );
        t.row(
            "Tollgate RSS with all open (MB)",
            vec!["-".into(), num(Some(gate_rss), 1)],
        );
        t.row(
            "Tollgate peak RSS (MB)",
            vec!["-".into(), num(Some(peaks[0].1), 1)],
        );
        t.row(
            "Tollgate RSS 1 s after release (MB)",
            vec!["-".into(), num(Some(after), 1)],
        );
        t.row(
            "fake upstream RSS with all open (MB)",
            vec![num(Some(slow_rss_direct), 1), num(Some(slow_rss), 1)],
        );
        t.row(
            "fake upstream peak RSS (MB)",
            vec![num(Some(direct_peak), 1), num(Some(peaks[1].1), 1)],
        );
        t.row(
            "Tollgate ready afterwards",
            vec!["-".into(), if healthy { "yes".into() } else { "NO".into() }],
        );
        self.emit(t);
        self.target(
            "2,000 concurrent streams: Tollgate RSS",
            "< 128 MB",
            format!("{:.1} MB peak ({opened} open)", peaks[0].1),
            Some(peaks[0].1 < 128.0 && opened == HELD_STREAMS),
        );
        Ok(())
    }

    /// Embeddings: open loop and closed loop.
    async fn embeddings(&mut self) -> anyhow::Result<()> {
        let body = embed_body();
        self.restart_sqlite("info").await?;
        let direct_url = self.direct_url("/v1/embeddings");
        let url = self.gate_url("/v1/embeddings")?;
        self.warm(&direct_url, &body).await?;
        self.warm(&url, &body).await?;
        let gate = self.gate_pid()?;
        let fast = self.fast.pid();
        let d = self.lengths.open;
        let direct_open = self
            .oha_side(
                &self.oha_post(direct_url.clone(), body.clone(), Some(OPEN_RATE), d),
                vec![vec![fast]],
            )
            .await?;
        let gate_open = self
            .oha_side(
                &self.oha_post(url.clone(), body.clone(), Some(OPEN_RATE), d),
                vec![vec![gate], vec![fast]],
            )
            .await?;
        let c = self.lengths.closed;
        let direct_closed = self
            .oha_side(
                &self.oha_post(direct_url, body.clone(), None, c),
                vec![vec![fast]],
            )
            .await?;
        let gate_closed = self
            .oha_side(
                &self.oha_post(url, body, None, c),
                vec![vec![gate], vec![fast]],
            )
            .await?;
        let t = comparison(
            "Embeddings (1,536 dimensions, about 33 kB per answer)",
            &format!(
                "Open loop: oha -q {OPEN_RATE} --latency-correction -c {CONNECTIONS_OPEN}, {} s; closed loop: oha -c {CONNECTIONS_CLOSED}, {} s.",
                d.as_secs(),
                c.as_secs()
            ),
            &["direct, open loop", "Tollgate, open loop", "direct, closed loop", "Tollgate, closed loop"],
            &[direct_open, gate_open, direct_closed, gate_closed],
            &[1],
        );
        self.emit(t);
        Ok(())
    }

    /// One hot key and 1,000 cold keys, open loop, caches cold at the start.
    async fn key_mix(&mut self) -> anyhow::Result<()> {
        let body = Bytes::from(chat_body(false));
        let mut keys = vec![self.bearer()];
        keys.extend(self.cold_keys.iter().map(|k| format!("Bearer {k}")));
        let d = self.lengths.open;
        let direct = OpenLoop {
            url: self.direct_url("/v1/chat/completions"),
            body: body.clone(),
            keys: keys.clone(),
            rate: OPEN_RATE as f64,
            duration: d,
        };
        load::open_loop(
            &self.client,
            &OpenLoop {
                duration: self.lengths.warm,
                ..direct.clone()
            },
        )
        .await?;
        let probe = Probe::start(vec![vec![self.fast.pid()]]);
        let a = load::open_loop(&self.client, &direct).await?;
        let ma = probe.finish();
        self.restart_sqlite("info").await?;
        // Warm only the hot key and the connections: the cold keys meet cold caches.
        let url = self.gate_url("/v1/chat/completions")?;
        self.warm(&url, &String::from_utf8_lossy(&body)).await?;
        let probe = Probe::start(vec![vec![self.gate_pid()?], vec![self.fast.pid()]]);
        let b = load::open_loop(&self.client, &OpenLoop { url, ..direct }).await?;
        let mb_ = probe.finish();
        let side = |r: &load::LoadResult, m: &[(f64, f64)]| {
            Side::new(r.total, r.requests_per_second, r.completed, r.failed, m)
        };
        let t = comparison(
            &format!("Key mix: one hot key and {COLD_KEYS} cold keys, open loop at {OPEN_RATE} req/s"),
            &format!(
                "This crate's open-loop client; every other request uses the hot key, the rest go round the {COLD_KEYS} cold keys (each first seen during the run: key lookup and budget load from SQLite), {} s.",
                d.as_secs()
            ),
            &["direct", "through Tollgate"],
            &[side(&a, &ma), side(&b, &mb_)],
            &[1],
        );
        self.emit(t);
        Ok(())
    }

    /// The usage writer alone, SQLite (and PostgreSQL when given).
    async fn usage_writer(&mut self, pg: Option<&str>) -> anyhow::Result<()> {
        let mut urls = vec![format!(
            "sqlite://{}",
            self.path("writer-bench.db").display()
        )];
        if let Some(pg) = pg {
            urls.push(pg.to_string());
        }
        let mut t = Table::new(
            "Usage write path alone (UsageWriter over store::open)",
            format!(
                "N producers each queue a record and wait until it is safe, as the gateway does before answering: for its group commit (on SQLite the first records of a run go to the usage journal instead, until the writer sees the load); {} s per row, ending once the ledger has committed every record; every settled record is then counted in the ledger.",
                self.lengths.writer
            ),
            &[
                "database",
                "producers",
                "settled records/s",
                "records per commit",
                "records",
                "found in ledger",
            ],
        );
        let mut best_sqlite: f64 = 0.0;
        for url in urls {
            let results = writer::bench(&WriterArgs {
                database_url: url,
                producers: self.lengths.writer_producers.clone(),
                seconds: self.lengths.writer,
            })
            .await?;
            for r in results {
                if r.database == "SQLite" {
                    best_sqlite = best_sqlite.max(r.per_second());
                }
                t.row(
                    r.database,
                    vec![
                        r.producers.to_string(),
                        num(Some(r.per_second()), 0),
                        num(Some(r.settled as f64 / r.commits.max(1) as f64), 1),
                        num(Some(r.settled as f64), 0),
                        num(Some(r.in_ledger as f64), 0),
                    ],
                );
            }
        }
        self.emit(t);
        self.target(
            "usage writer, SQLite",
            "≥ 20,000 settled/s",
            format!("{} settled/s (best row)", num(Some(best_sqlite), 0)),
            Some(best_sqlite >= 20_000.0),
        );
        Ok(())
    }

    /// `GET /v1/account/activity?days=30` over the seeded ledger.
    async fn activity(
        &mut self,
        deployment: &Deployment,
        provisioning_key: &str,
    ) -> anyhow::Result<(Latency, usize)> {
        let ms = self.start_gate(deployment, "info").await?;
        if deployment.name == "sqlite" {
            self.startups_ms.push(ms);
        }
        let url = self.gate_url("/v1/account/activity?days=30")?;
        let response = self
            .client
            .get(&url)
            .header("authorization", format!("Bearer {provisioning_key}"))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("activity answered {}", response.status());
        }
        let size = response.bytes().await?.len();
        let run = OhaRun {
            url,
            headers: vec![("Authorization".into(), format!("Bearer {provisioning_key}"))],
            body: None,
            method: "GET",
            rate: None,
            connections: 1,
            duration: Duration::from_secs(120),
            requests: Some(self.lengths.activity_requests),
        };
        let r = self.oha.run(&run).await?;
        if r.failed > 0 {
            bail!("{} activity requests failed", r.failed);
        }
        Ok((r.latency, size))
    }

    async fn activity_sqlite(
        &mut self,
        shapes: &[(seed::Seeded, String, String)],
    ) -> anyhow::Result<()> {
        let deployment = self.sqlite.clone();
        let mut t = Table::new(
            "Activity over one million usage rows",
            format!(
                "GET /v1/account/activity?days=30, one request at a time (oha -n {} -c 1), on two accounts of one ledger, each with 1,000,000 seeded usage rows over 30 days and 2 models. The answer is read from the daily roll-up, so what counts is its number of rows (days × keys × models), which the database groups per day, model and key. In-process columns (no HTTP, no JSON; medians of 5): `Store::activity` alone (the grouped query), and `Accounts::activity` (that query plus the total).",
                self.lengths.activity_requests
            ),
            &[
                "account",
                "roll-up rows",
                "answer (bytes)",
                "p50 (ms)",
                "p99 (ms)",
                "Store::activity (ms)",
                "Accounts::activity (ms)",
            ],
        );
        let mut results = Vec::new();
        for (seeded, account, key) in shapes {
            let (latency, size) = self.activity(&deployment, key).await?;
            let b = seed::measure_breakdown(&seed::BreakdownArgs {
                database_url: self.sqlite.database_url.clone(),
                account: account.clone(),
                runs: 5,
            })
            .await?;
            t.row(
                &format!("{account} ({} keys)", seeded.keys),
                vec![
                    num(Some(seeded.daily_rows as f64), 0),
                    num(Some(size as f64), 0),
                    num(Some(latency.p50_ms), 2),
                    num(Some(latency.p99_ms), 2),
                    num(Some(b.query_ms), 1),
                    num(Some(b.activity_ms), 1),
                ],
            );
            results.push((seeded.keys, seeded.daily_rows, latency));
        }
        self.emit(t);
        for (keys, rows, latency) in results {
            self.target(
                &format!(
                    "activity over 1M rows, {keys} keys ({} roll-up rows)",
                    num(Some(rows as f64), 0)
                ),
                "< 50 ms",
                format!("p50 {:.1} ms, p99 {:.1} ms", latency.p50_ms, latency.p99_ms),
                Some(latency.p99_ms < 50.0),
            );
        }
        Ok(())
    }

    fn summary_targets(&mut self) {
        let mut startups = self.startups_ms.clone();
        startups.sort_by(f64::total_cmp);
        if let (Some(min), Some(max)) = (startups.first().copied(), startups.last().copied()) {
            let median = startups[startups.len() / 2];
            self.target(
                "start-up to first healthy /readyz, existing SQLite file",
                "< 200 ms",
                format!(
                    "median {median:.1} ms, min {min:.1}, max {max:.1} ({} starts)",
                    startups.len()
                ),
                Some(max < 200.0),
            );
        }
        if let Some(max) = self.idle_rss.iter().copied().reduce(f64::max) {
            self.target(
                "RSS idle (1 s after start)",
                "< 32 MB",
                format!("{max:.1} MB (largest of {} starts)", self.idle_rss.len()),
                Some(max < 32.0),
            );
        }
    }
}

/// Creates the fresh PostgreSQL database of this run; returns its URL.
async fn fresh_pg_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    conn.close().await?;
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    let root = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    Ok(format!("{root}/{name}{query}"))
}

async fn drop_pg_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

fn write_config(
    path: &Path,
    database_url: &str,
    data_dir: &Path,
    fast: &str,
    slow: &str,
) -> anyhow::Result<()> {
    let text = format!(
        r#"# Written by tollgate-bench.
database_url = "{database_url}"
data_dir = "{data_dir}"

[[providers]]
name = "fake"
kind = "openai"
base_url = "http://{fast}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[providers]]
name = "fake-slow"
kind = "openai"
base_url = "http://{slow}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[models]]
id = "{CHAT_MODEL}"
provider = "fake"
endpoints = ["chat.completions", "responses", "messages"]
max_output_tokens = 16384
pricing = {{ input = "0.15", cached_input = "0.075", output = "0.60" }}

[[models]]
id = "{EMBED_MODEL}"
provider = "fake"
endpoints = ["embeddings"]
pricing = {{ input = "0.02" }}

[[models]]
id = "{SLOW_MODEL}"
provider = "fake-slow"
upstream_model = "{CHAT_MODEL}"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.15", output = "0.60" }}
"#,
        data_dir = data_dir.display()
    );
    std::fs::write(path, text)?;
    Ok(())
}

fn nginx_config(work: &Path, port: u16, upstream: &str) -> String {
    let w = work.display();
    format!(
        r#"# Written by tollgate-bench: a plain reverse proxy, the baseline.
worker_processes 2;
daemon off;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {w}/nginx-access.log;
    client_body_temp_path {w}/nginx-body;
    proxy_temp_path {w}/nginx-proxy;
    upstream fake {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// Creates keys through the account API: returns the plaintexts.
async fn create_keys(
    client: &reqwest::Client,
    base: &str,
    provisioning_key: &str,
    names: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    use futures_util::StreamExt;
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter(names)
        .map(|name| async move {
            let r = client
                .post(format!("{base}/v1/account/keys"))
                .header("authorization", format!("Bearer {provisioning_key}"))
                .json(&json!({"name": name}))
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await?;
            v.get("key")
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("creating a key answered {status}: {v}"))
        })
        .buffered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

fn start_fake(
    bin_dir: &Path,
    work: &Path,
    name: &str,
    fast: bool,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(bin_dir.join("fake-upstream"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    if fast {
        cmd.arg("--fast");
    }
    let mut proc = Proc::spawn(name, cmd, &work.join(format!("{name}.log")), true)?;
    let addr = proc.first_line()?;
    Ok((proc, addr))
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = client.get(url).send().await {
            if r.status().as_u16() < 500 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{url} did not answer within 10 s")
}

/// Bootstraps a deployment: first start, provisioning key, credits, keys.
async fn provision(
    bench: &mut Bench,
    deployment: &Deployment,
    cold: usize,
) -> anyhow::Result<(String, String, Vec<String>)> {
    bench.start_gate(deployment, "warn").await?;
    let key_file = deployment.data_dir.join("provisioning-key.txt");
    let provisioning_key = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?
        .trim()
        .to_string();
    let out = Command::new(bench.bin_dir.join("tollgate"))
        .arg("--config")
        .arg(&deployment.config)
        .args([
            "credits",
            "grant",
            "default",
            "1000000",
            "--note",
            "benchmark",
        ])
        .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream")
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "credits grant failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let base = format!("http://{}", bench.gate()?.addr);
    let mut names = vec!["hot".to_string()];
    names.extend((0..cold).map(|i| format!("cold {i}")));
    let mut keys = create_keys(&bench.client, &base, &provisioning_key, names).await?;
    let hot = keys.remove(0);
    bench.stop_gate();
    Ok((provisioning_key, hot, keys))
}

/// An operator command of the `tollgate` binary; returns its stdout.
fn operator(bench: &Bench, deployment: &Deployment, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bench.bin_dir.join("tollgate"))
        .arg("--config")
        .arg(&deployment.config)
        .args(args)
        .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream")
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "tollgate {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A second account with a few keys, made with the operator commands and the API;
/// returns its provisioning key.
async fn provision_typical(
    bench: &mut Bench,
    deployment: &Deployment,
    keys: usize,
) -> anyhow::Result<String> {
    operator(bench, deployment, &["accounts", "create", TYPICAL_ACCOUNT])?;
    operator(
        bench,
        deployment,
        &["credits", "grant", TYPICAL_ACCOUNT, "1000"],
    )?;
    let provisioning_key = operator(
        bench,
        deployment,
        &["provisioning-keys", "create", TYPICAL_ACCOUNT],
    )?;
    bench.start_gate(deployment, "warn").await?;
    let base = format!("http://{}", bench.gate()?.addr);
    let names = (0..keys).map(|i| format!("typical {i}")).collect();
    create_keys(&bench.client, &base, &provisioning_key, names).await?;
    bench.stop_gate();
    Ok(provisioning_key)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
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
    write_config(&config, &database_url, &data_dir, &fast_addr, &slow_addr)?;
    let sqlite = Deployment {
        name: "sqlite",
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
    if bench.wants("activity") {
        bench.activity_sqlite(shapes).await?;
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
        anyhow::Ok(())
    }
    .await;
    bench.stop_gate();
    if let Some(server) = &bench.args.postgres {
        for name in pg_names.iter().take(pg_urls.len()) {
            if let Err(e) = drop_pg_database(server, name).await {
                println!("  (could not drop {name}: {e})");
            }
        }
    }
    result
}

/// The same gateway on PostgreSQL: open loop, capacity, and activity over 1M rows.
async fn postgres(bench: &mut Bench, url: &str) -> anyhow::Result<()> {
    let data_dir = bench.work.join("pg-data");
    std::fs::create_dir_all(&data_dir)?;
    let config = bench.work.join("tollgate-pg.toml");
    write_config(&config, url, &data_dir, &bench.fast_addr, &bench.slow_addr)?;
    let deployment = Deployment {
        name: "postgres",
        config,
        database_url: url.to_string(),
        data_dir,
    };
    let (prov, hot, _) = provision(bench, &deployment, 100).await?;
    let seeded = seed::seed(&SeedArgs {
        database_url: url.to_string(),
        account: "default".into(),
        rows: 1_000_000,
        days: 30,
        models: vec![CHAT_MODEL.into(), EMBED_MODEL.into()],
    })
    .await?;
    println!("  PostgreSQL: {seeded}");
    let saved_hot = std::mem::replace(&mut bench.hot_key, hot);
    let result = async {
        let start_ms = bench.start_gate(&deployment, "info").await?;
        let body = chat_body(false);
        let direct_url = bench.direct_url("/v1/chat/completions");
        let url = bench.gate_url("/v1/chat/completions")?;
        bench.warm(&url, &body).await?;
        let d = bench.lengths.open;
        let c = bench.lengths.closed;
        let fast = bench.fast.pid();
        let gate = bench.gate_pid()?;
        let direct_open = bench.oha_side(&bench.oha_post(direct_url.clone(), body.clone(), Some(OPEN_RATE), d), vec![vec![fast]]).await?;
        let gate_open = bench.oha_side(&bench.oha_post(url.clone(), body.clone(), Some(OPEN_RATE), d), vec![vec![gate], vec![fast]]).await?;
        let direct_closed = bench.oha_side(&bench.oha_post(direct_url, body.clone(), None, c), vec![vec![fast]]).await?;
        let gate_closed = bench.oha_side(&bench.oha_post(url, body, None, c), vec![vec![gate], vec![fast]]).await?;
        let mut t = comparison(
            "PostgreSQL: chat completions, non-streamed",
            &format!("Tollgate on a fresh PostgreSQL database (started in {start_ms:.0} ms); open loop {OPEN_RATE} req/s for {} s, closed loop -c {CONNECTIONS_CLOSED} for {} s.", d.as_secs(), c.as_secs()),
            &["direct, open loop", "Tollgate, open loop", "direct, closed loop", "Tollgate, closed loop"],
            &[direct_open, gate_open, direct_closed, gate_closed],
            &[1],
        );
        let (latency, size) = bench.activity(&deployment, &prov).await?;
        t.row(
            "activity?days=30 over 1M rows p50 / p99 (ms)",
            vec![
                "-".into(),
                format!("{:.2} / {:.2}", latency.p50_ms, latency.p99_ms),
                format!("({} bytes)", num(Some(size as f64), 0)),
                "-".into(),
                "-".into(),
            ],
        );
        bench.emit(t);
        anyhow::Ok(())
    }
    .await;
    bench.hot_key = saved_hot;
    bench.stop_gate();
    result
}
