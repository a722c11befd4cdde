//! The load generator `oha` (crates.io): open loop at a fixed rate with
//! `-q RATE --latency-correction` (latency counted from when each request was due, so a
//! stall is not hidden: coordinated omission corrected), or closed loop with `-c N`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::report::Latency;

/// One oha run.
#[derive(Debug, Clone)]
pub struct OhaRun {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub method: &'static str,
    /// Requests per second for an open loop; `None` for a closed loop.
    pub rate: Option<u32>,
    pub connections: u32,
    pub duration: Duration,
    /// Stop after this many requests instead of after `duration`.
    pub requests: Option<u64>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct OhaResult {
    pub latency: Latency,
    pub requests_per_second: f64,
    pub completed: u64,
    pub failed: u64,
}

pub struct Oha {
    pub path: PathBuf,
}

impl Oha {
    pub async fn run(&self, run: &OhaRun) -> anyhow::Result<OhaResult> {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--no-tui")
            .arg("--output-format")
            .arg("json")
            .arg("-m")
            .arg(run.method)
            .arg("-c")
            .arg(run.connections.to_string());
        match run.requests {
            Some(n) => {
                cmd.arg("-n").arg(n.to_string());
            }
            None => {
                cmd.arg("-z")
                    .arg(format!("{}ms", run.duration.as_millis()))
                    // Requests still in flight at the end are waited for, not dropped.
                    .arg("-w");
            }
        }
        if let Some(rate) = run.rate {
            cmd.arg("-q")
                .arg(rate.to_string())
                .arg("--latency-correction");
        }
        for (name, value) in &run.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(body) = &run.body {
            cmd.arg("-d").arg(body);
        }
        cmd.arg(&run.url);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let limit = run.duration + Duration::from_secs(60);
        let output = tokio::time::timeout(limit, cmd.output())
            .await
            .context("oha did not finish in time")?
            .context("running oha")?;
        if !output.status.success() {
            bail!(
                "oha failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        parse(&output.stdout)
    }
}

fn parse(stdout: &[u8]) -> anyhow::Result<OhaResult> {
    let v: Value = serde_json::from_slice(stdout).context("oha's JSON output")?;
    let seconds = |p: &str| {
        v.pointer(&format!("/latencyPercentiles/{p}"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let statuses = v
        .get("statusCodeDistribution")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut ok = 0u64;
    let mut bad = 0u64;
    for (status, count) in &statuses {
        let count = count.as_u64().unwrap_or(0);
        if status.starts_with('2') {
            ok += count;
        } else {
            bad += count;
        }
    }
    let errors: u64 = v
        .get("errorDistribution")
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Ok(OhaResult {
        latency: Latency {
            p50_ms: seconds("p50") * 1e3,
            p99_ms: seconds("p99") * 1e3,
            p999_ms: seconds("p99.9") * 1e3,
        },
        requests_per_second: v
            .pointer("/summary/requestsPerSec")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        completed: ok,
        failed: bad + errors,
    })
}
