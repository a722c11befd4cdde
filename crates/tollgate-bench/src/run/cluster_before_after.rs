//! Cluster mode before and after (`--only cluster-before-after`, needs `--postgres` and
//! `--baseline-bin`): the workload (chat completions, non-streamed, one key)
//! against one replica and against three behind nginx, served by the baseline binary and
//! by this one in turn, `ROUNDS` rounds; which binary goes first alternates from round to
//! round, so a machine that slows down or speeds up during the run weighs on both. Each
//! binary has a PostgreSQL database and a Redis of its own, set up (migrated, provisioned)
//! by it alone: a change of the database's schema or functions is then compared too (on
//! one database, the baseline would run on what this binary migrated). Medians over the
//! rounds, each round's figures beside them.

#[allow(unused_imports)]
use super::*;

use super::cluster::{behind_nginx, measure, replica, shared, Measured, Shared, WORKLOADS};
use super::paths::median;

/// Rounds; even, so that each binary goes first as often as the other.
const ROUNDS: usize = 4;

/// Added latency (p50, p99, p99.9 over the direct run), capacity and CPU per request.
#[derive(Clone, Copy)]
struct Figures {
    added: [f64; 3],
    capacity: f64,
    cpu_us: f64,
}

fn figures(m: &Measured, direct: &Measured) -> Figures {
    let (l, d) = (&m.open.total, &direct.open.total);
    Figures {
        added: [
            l.p50_ms - d.p50_ms,
            l.p99_ms - d.p99_ms,
            l.p999_ms - d.p999_ms,
        ],
        capacity: m.capacity,
        cpu_us: m.cpu_us.unwrap_or(f64::NAN),
    }
}

pub(super) async fn cluster_before_after(bench: &mut Bench, server: &str) -> anyhow::Result<()> {
    let (Some(baseline), Some(nginx)) = (bench.args.baseline_bin.clone(), bench.args.nginx.clone())
    else {
        println!("\n  cluster-before-after: needs --baseline-bin and nginx; skipped");
        return Ok(());
    };
    if bench.args.redis.is_some() {
        println!("\n  cluster-before-after: starts a Redis per binary; run it without --redis");
        return Ok(());
    }
    let names = [0, 1].map(|i| format!("tollgate_bench_{}_cluster_ab{i}", std::process::id()));
    let result = async {
        let before_url = fresh_pg_database(server, &names[0]).await?;
        let after_url = fresh_pg_database(server, &names[1]).await?;
        let before = shared(bench, &before_url, baseline.clone(), "-baseline").await?;
        let after = shared(bench, &after_url, bench.bin_dir.join("tollgate"), "").await?;
        let sides = [("baseline", &before), ("this binary", &after)];
        let path = "/v1/chat/completions";
        let workload = &WORKLOADS[..1];
        // [side][one replica, three replicas][round]
        let mut seen = vec![vec![Vec::new(), Vec::new()]; 2];
        for round in 0..ROUNDS {
            let direct = measure(bench, &bench.direct_url(path), &after.keys, &[bench.fast.pid()], workload).await?;
            for turn in 0..2 {
                let side = (turn + round) % 2;
                let Shared { deployment: d, keys, .. } = sides[side].1;
                let (alone, addr) = replica(bench, d, 0).await?;
                let one = measure(bench, &format!("http://{addr}{path}"), keys, &[alone.pid()], workload).await?;
                alone.stop(Duration::from_secs(15));
                let (replicas, proxy, addr) = behind_nginx(bench, &nginx, d, 3, 1).await?;
                let pids: Vec<u32> = replicas.iter().map(Proc::pid).collect();
                let three = measure(bench, &format!("http://{addr}{path}"), keys, &pids, workload).await?;
                proxy.stop(Duration::from_secs(5));
                for p in replicas {
                    p.stop(Duration::from_secs(15));
                }
                seen[side][0].push(figures(&one[0], &direct[0]));
                seen[side][1].push(figures(&three[0], &direct[0]));
            }
        }
        let mut t = Table::new(
            "Cluster mode before and after: chat completions, non-streamed, one key",
            format!(
                "The baseline is `{}`; this binary is the one built now; each on a PostgreSQL database and a Redis of its own. {ROUNDS} rounds, the binaries' order alternating; each round: the direct run, then per binary one replica alone and three replicas behind nginx (round robin), open loop {OPEN_RATE} req/s for {} s and capacity (closed loop, 32 connections, {} s). Medians over the rounds, and each round's figure. CPU is the Tollgate processes' per request of the open loop.",
                baseline.display(),
                bench.lengths.open.as_secs(),
                bench.lengths.closed.as_secs()
            ),
            &["deployment", "added p50 / p99 / p99.9 (ms)", "added p50 per round (ms)", "capacity (req/s)", "capacity per round", "CPU (µs/req)"],
        );
        for (deployment, label) in ["one replica", "three replicas + nginx"].iter().enumerate() {
            for (side, (who, _)) in sides.iter().enumerate() {
                let rounds = &seen[side][deployment];
                let of = |get: &dyn Fn(&Figures) -> f64| median(rounds.iter().map(get).collect());
                let each = |get: &dyn Fn(&Figures) -> f64, digits: usize| {
                    rounds.iter().map(|f| format!("{:.digits$}", get(f))).collect::<Vec<_>>().join(", ")
                };
                t.row(
                    &format!("{label}, {who}"),
                    vec![
                        format!("{:+.2} / {:+.2} / {:+.2}", of(&|f| f.added[0]), of(&|f| f.added[1]), of(&|f| f.added[2])),
                        each(&|f| f.added[0], 2),
                        num(Some(of(&|f| f.capacity)), 0),
                        each(&|f| f.capacity, 0),
                        num(Some(of(&|f| f.cpu_us)), 0),
                    ],
                );
            }
        }
        bench.emit(t);
        anyhow::Ok(())
    }
    .await;
    for name in &names {
        drop_pg_database(server, name).await;
    }
    result
}
