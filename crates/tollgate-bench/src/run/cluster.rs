//! Cluster mode side by side (`--only cluster`, needs `--postgres`): the SQLite single
//! process, one replica on PostgreSQL + Redis, and three replicas behind nginx (round
//! robin) on the same PostgreSQL + Redis; open loop at `OPEN_RATE` and capacity (closed
//! loop) for each of `WORKLOADS` (one key; a key mix over 1,000 keys; streamed),
//! measured with this crate's own client so that no other tool is needed. Redis
//! is a `redis-server` of the bench's own (no persistence) unless `--redis` names one.

#[allow(unused_imports)]
use super::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Connections of the closed loop (capacity).
const CAPACITY_CONNECTIONS: usize = 32;

/// Starts a replica of `deployment` (its config names PostgreSQL and Redis).
pub(super) async fn replica(
    bench: &Bench,
    deployment: &Deployment,
    i: usize,
) -> anyhow::Result<(Proc, String)> {
    let addr = format!("127.0.0.1:{}", procs::free_port()?);
    let mut cmd = Command::new(&deployment.bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&deployment.config)
        .arg("--listen")
        .arg(&addr)
        .env("RUST_LOG", "warn")
        .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream");
    let log = bench.path(&format!("tollgate-cluster-{i}.log"));
    let proc = Proc::spawn("tollgate", cmd, &log, false)?;
    let started = Instant::now();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        if let Ok(r) = probe.get(format!("http://{addr}/readyz")).send().await {
            if r.status().is_success() {
                return Ok((proc, addr));
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("replica {i} not ready after 60 s; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn nginx_round_robin(work: &Path, port: u16, upstreams: &[String]) -> String {
    let w = work.display();
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u};\n"))
        .collect();
    format!(
        r#"# Written by tollgate-bench: round robin over the replicas.
worker_processes 2;
daemon off;
pid {w}/nginx-cluster.pid;
error_log {w}/nginx-cluster-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {w}/nginx-body;
    proxy_temp_path {w}/nginx-proxy;
    upstream replicas {{
{servers}        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_next_upstream off;
        }}
    }}
}}
"#
    )
}

/// What one deployment measured.
pub(super) struct Measured {
    pub(super) open: load::LoadResult,
    pub(super) capacity: f64,
    pub(super) failed: u64,
    pub(super) cpu_us: Option<f64>,
}

/// One workload of the comparison.
pub(super) struct Workload {
    title: &'static str,
    stream: bool,
    /// Half the requests on the hot key, the other half over the cold keys in turn
    /// (each deployment's first use of a key: identity read, budget loaded).
    mix: bool,
}

pub(super) const WORKLOADS: [Workload; 3] = [
    Workload {
        title: "chat completions, non-streamed, one key",
        stream: false,
        mix: false,
    },
    Workload {
        title: "chat completions, non-streamed, key mix (half on one key, half over 1,000 others in turn)",
        stream: false,
        mix: true,
    },
    Workload {
        title: "chat completions, streamed, one key",
        stream: true,
        mix: false,
    },
];

/// Closed loop: `CAPACITY_CONNECTIONS` clients sending one request after another;
/// client i uses `keys[i % keys.len()]`.
async fn capacity(
    client: &reqwest::Client,
    url: &str,
    keys: &[String],
    body: &str,
    d: Duration,
) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CAPACITY_CONNECTIONS {
        let (client, url, key, body) = (
            client.clone(),
            url.to_string(),
            keys[i % keys.len()].clone(),
            body.to_string(),
        );
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .header("authorization", &key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    )
}

/// The workloads against one deployment; `keys` are its keys, the hot one first.
pub(super) async fn measure(
    bench: &Bench,
    url: &str,
    keys: &[String],
    pids: &[u32],
    workloads: &[Workload],
) -> anyhow::Result<Vec<Measured>> {
    let mut out = Vec::new();
    for w in workloads {
        let body = chat_body(w.stream);
        let used = if w.mix { keys } else { &keys[..1] };
        let bearers: Vec<String> = used.iter().map(|k| format!("Bearer {k}")).collect();
        let client = load::client()?;
        // Warm: connections, caches, budgets loaded.
        let warm = load::OpenLoop {
            url: url.to_string(),
            body: Bytes::from(body.clone()),
            keys: bearers.clone(),
            rate: OPEN_RATE as f64,
            duration: bench.lengths.warm,
        };
        load::open_loop(&client, &warm).await?;
        let cpu0 = procs::group_cpu_seconds(pids);
        let run = load::OpenLoop {
            duration: bench.lengths.open,
            ..warm
        };
        let open = load::open_loop(&client, &run).await?;
        let cpu = procs::group_cpu_seconds(pids) - cpu0;
        let (capacity, failed) =
            capacity(&client, url, &bearers, &body, bench.lengths.closed).await;
        let cpu_us =
            (open.completed > 0 && !pids.is_empty()).then(|| cpu * 1e6 / open.completed as f64);
        out.push(Measured {
            failed: failed + open.failed,
            open,
            capacity,
            cpu_us,
        });
    }
    Ok(out)
}

/// What the cluster scenarios share: a Redis (the bench's own unless `--redis` names
/// one; stopped when dropped) and a deployment provisioned on it and `url`'s database,
/// whose keys are `keys`, the hot one first.
pub(super) struct Shared {
    pub(super) _redis: Option<Proc>,
    pub(super) deployment: Deployment,
    pub(super) keys: Vec<String>,
}

/// A database `url` served by `bin`, its Redis (`--redis`, else one of its own), its keys
/// and its config; `tag` names its files, so that two can run side by side (before and
/// after a change of the database's schema or functions, each binary on its own).
pub(super) async fn shared(
    bench: &mut Bench,
    url: &str,
    bin: PathBuf,
    tag: &str,
) -> anyhow::Result<Shared> {
    let mut redis = None;
    let redis_url = match &bench.args.redis {
        Some(u) => u.clone(),
        None => {
            let port = procs::free_port()?;
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            cmd.arg("--dir").arg(&bench.work);
            redis = Some(Proc::spawn(
                "redis-server",
                cmd,
                &bench.path(&format!("redis{tag}.log")),
                false,
            )?);
            tokio::time::sleep(Duration::from_millis(200)).await;
            format!("redis://127.0.0.1:{port}/0")
        }
    };
    let data_dir = bench.work.join(format!("cluster-data{tag}"));
    std::fs::create_dir_all(&data_dir)?;
    let config = bench.work.join(format!("tollgate-cluster{tag}.toml"));
    write_config(
        &config,
        url,
        &data_dir,
        &bench.fast_addr,
        &bench.slow_addr,
        false,
    )?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("redis_url = \"{redis_url}\"\n{text}"))?;
    let deployment = Deployment {
        bin,
        name: "cluster",
        config,
        database_url: url.to_string(),
        data_dir,
    };
    let (_, hot, cold) = provision(bench, &deployment, COLD_KEYS).await?;
    let keys = std::iter::once(hot).chain(cold).collect();
    Ok(Shared {
        _redis: redis,
        deployment,
        keys,
    })
}

/// `deployment` with no Redis: one process on the same database, its budgets in memory.
fn without_redis(bench: &Bench, deployment: &Deployment) -> anyhow::Result<Deployment> {
    let text = std::fs::read_to_string(&deployment.config)?;
    let config = bench.work.join("tollgate-cluster-no-redis.toml");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("redis_url"))
        .collect();
    std::fs::write(&config, kept.join("\n") + "\n")?;
    Ok(Deployment {
        config,
        ..deployment.clone()
    })
}

/// `n` replicas of `deployment` (numbered from `first`) behind nginx, round robin: the
/// replicas, nginx, and nginx's address.
pub(super) async fn behind_nginx(
    bench: &Bench,
    nginx: &Path,
    deployment: &Deployment,
    n: usize,
    first: usize,
) -> anyhow::Result<(Vec<Proc>, Proc, String)> {
    let mut replicas = Vec::new();
    for i in first..first + n {
        replicas.push(replica(bench, deployment, i).await?);
    }
    let port = procs::free_port()?;
    let addrs: Vec<String> = replicas.iter().map(|(_, a)| a.clone()).collect();
    let conf = bench.path(&format!("nginx-cluster-{n}.conf"));
    std::fs::write(&conf, nginx_round_robin(&bench.work, port, &addrs))?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&bench.work)
        .arg("-e")
        .arg(bench.path("nginx-cluster-error.log"));
    let proxy = Proc::spawn(
        "nginx",
        cmd,
        &bench.path(&format!("nginx-cluster-{n}.out")),
        false,
    )?;
    let addr = format!("127.0.0.1:{port}");
    wait_ready(&bench.client, &format!("http://{addr}/readyz")).await?;
    Ok((replicas.into_iter().map(|(p, _)| p).collect(), proxy, addr))
}

/// The cluster scenario; `server` is the PostgreSQL server URL of `--postgres`.
pub(super) async fn cluster(bench: &mut Bench, server: &str) -> anyhow::Result<()> {
    let name = format!("tollgate_bench_{}_cluster", std::process::id());
    let url = fresh_pg_database(server, &name).await?;
    let result = async {
        let Shared { deployment, keys, _redis } = shared(bench, &url, bench.bin_dir.join("tollgate"), "").await?;
        let path = "/v1/chat/completions";
        // The direct baseline (added latency is against it).
        let direct = measure(bench, &bench.direct_url(path), &keys, &[bench.fast.pid()], &WORKLOADS).await?;
        // SQLite, single process.
        bench.restart_sqlite("warn").await?;
        let sqlite_url = bench.gate_url(path)?;
        let sqlite_keys: Vec<String> =
            std::iter::once(bench.hot_key.clone()).chain(bench.cold_keys.clone()).collect();
        let sqlite = measure(bench, &sqlite_url, &sqlite_keys, &[bench.gate_pid()?], &WORKLOADS).await?;
        bench.stop_gate();
        // One replica.
        let (one, addr) = replica(bench, &deployment, 0).await?;
        let single = measure(bench, &format!("http://{addr}{path}"), &keys, &[one.pid()], &WORKLOADS).await?;
        one.stop(Duration::from_secs(15));
        // One, then three replicas behind nginx (one behind nginx tells the proxy's share
        // from the scale-out's).
        let mut proxied = Vec::new();
        match &bench.args.nginx {
            Some(nginx) => {
                for (n, first) in [(1, 1), (3, 2)] {
                    let (replicas, proxy, addr) = behind_nginx(bench, nginx, &deployment, n, first).await?;
                    let pids: Vec<u32> = replicas.iter().map(Proc::pid).collect();
                    proxied.push(measure(bench, &format!("http://{addr}{path}"), &keys, &pids, &WORKLOADS).await?);
                    proxy.stop(Duration::from_secs(5));
                    for p in replicas {
                        p.stop(Duration::from_secs(15));
                    }
                }
            }
            None => println!("  nginx not found: replicas behind nginx are skipped"),
        }
        // The same replica with no Redis (budgets held in the process, allowed for one
        // replica): what the two Redis calls of each request cost, side by side. Last, as
        // what it charges does not reach Redis's budgets.
        let (alone, addr) = replica(bench, &without_redis(bench, &deployment)?, 9).await?;
        let no_redis = measure(bench, &format!("http://{addr}{path}"), &keys, &[alone.pid()], &WORKLOADS).await?;
        alone.stop(Duration::from_secs(15));
        let one_proxied = proxied.first();
        let three = proxied.get(1);

        for (i, w) in WORKLOADS.iter().enumerate() {
            let mut t = Table::new(
                format!("Cluster mode: {}", w.title),
                format!(
                    "One run, same fake upstream: direct; Tollgate on SQLite (one process); one replica on PostgreSQL + Redis, alone and behind nginx; the same replica on PostgreSQL with no Redis (its budgets in the process, as allowed for one replica: what Redis costs); three replicas behind nginx (round robin) on the same PostgreSQL + Redis. Open loop {OPEN_RATE} req/s for {} s (this crate's client); capacity: closed loop, {CAPACITY_CONNECTIONS} connections for {} s. Added latency is over the direct run (to the last byte); CPU is the Tollgate processes' (not Redis', PostgreSQL's or nginx's) per request of the open loop.",
                    bench.lengths.open.as_secs(),
                    bench.lengths.closed.as_secs()
                ),
                &["deployment", "p50 (ms)", "p99 (ms)", "p99.9 (ms)", "added p50 / p99 / p99.9 (ms)", "capacity (req/s)", "vs SQLite", "CPU (µs/req)", "failed"],
            );
            let rows: Vec<(&str, &Measured)> = [
                ("direct", Some(&direct[i])),
                ("SQLite, one process", Some(&sqlite[i])),
                ("PostgreSQL + Redis, one replica", Some(&single[i])),
                ("PostgreSQL, one process, no Redis", Some(&no_redis[i])),
                ("PostgreSQL + Redis, one replica + nginx", one_proxied.map(|m| &m[i])),
                ("PostgreSQL + Redis, three replicas + nginx", three.map(|m| &m[i])),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.map(|m| (n, m)))
            .collect();
            let d = &direct[i].open.total;
            for (label, m) in &rows {
                let l = &m.open.total;
                t.row(
                    label,
                    vec![
                        num(Some(l.p50_ms), 2),
                        num(Some(l.p99_ms), 2),
                        num(Some(l.p999_ms), 2),
                        format!("{:+.2} / {:+.2} / {:+.2}", l.p50_ms - d.p50_ms, l.p99_ms - d.p99_ms, l.p999_ms - d.p999_ms),
                        num(Some(m.capacity), 0),
                        format!("{:.2}×", m.capacity / sqlite[i].capacity),
                        num(m.cpu_us, 0),
                        m.failed.to_string(),
                    ],
                );
            }
            bench.emit(t);
        }
        // The targets are the issue's: non-streamed, one key.
        let (direct, sqlite, single) = (&direct[0], &sqlite[0], &single[0]);
        let three = three.map(|m| &m[0]);
        let d = &direct.open.total;
        let added = |m: &Measured| (m.open.total.p50_ms - d.p50_ms, m.open.total.p99_ms - d.p99_ms, m.open.total.p999_ms - d.p999_ms);
        let (p50, p99, p999) = added(single);
        bench.target(
            "cluster: one replica, added latency at 1,000 req/s",
            "p50 ≤ 0.5, p99 ≤ 2, p99.9 ≤ 10 ms",
            format!("{p50:+.2} / {p99:+.2} / {p999:+.2} ms"),
            Some(p50 <= 0.5 && p99 <= 2.0 && p999 <= 10.0),
        );
        let ratio = single.capacity / sqlite.capacity;
        bench.target(
            "cluster: one replica's capacity vs SQLite",
            "≥ 0.6×",
            format!("{ratio:.2}× ({:.0} vs {:.0} req/s)", single.capacity, sqlite.capacity),
            Some(ratio >= 0.6),
        );
        if let Some(three) = three {
            bench.target(
                "cluster: three replicas vs one",
                "≥ 1×",
                format!("{:.2}× ({:.0} vs {:.0} req/s)", three.capacity / single.capacity, three.capacity, single.capacity),
                Some(three.capacity >= single.capacity),
            );
        }
        anyhow::Ok(())
    }
    .await;
    bench.stop_gate();
    drop_pg_database(server, &name).await;
    result
}
