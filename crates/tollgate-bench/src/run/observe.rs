//! What observability costs (issue 16): the same load on Tollgate with metrics off, with
//! metrics on and traces off (the default), and with traces exported too (OTLP over
//! HTTP to a sink in this process), in alternating rounds, medians over the rounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(unused_imports)]
use super::*;

const ROUNDS: usize = 3;

/// An OTLP/HTTP sink: answers every request 200 with an empty body, counting them.
async fn otlp_sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let exports = Arc::new(AtomicU64::new(0));
    let counted = exports.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = vec![0u8; 64 << 10];
                loop {
                    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head + 4 + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head + 4 + length);
                    counted.fetch_add(1, Ordering::Relaxed);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, exports))
}

/// The CPU time of this thread, in seconds.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// CPU µs per request through the access layer with a handler that records what a
/// model request records (the model asked for, one attempt, a charge), with metrics
/// `on` or off; no log subscriber (the access line is the same either way).
async fn recording_cost(on: bool, requests: u32) -> anyhow::Result<f64> {
    use axum::extract::State as AxumState;
    use axum::Extension;
    use http_body_util::BodyExt;
    use tollgate::observe::{
        access, metrics::CacheMetrics, metrics::WriterMetrics, Metrics, Observed,
    };
    use tower::ServiceExt;

    let toml = format!(
        "[observability]\nmetrics = {on}\n[[providers]]\nname = \"fake\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"K\"\n[[models]]\nid = \"{CHAT_MODEL}\"\nprovider = \"fake\"\nendpoints = [\"chat.completions\"]\npricing = {{ input = \"0.15\", output = \"0.60\" }}\n"
    );
    let config = Arc::new(tollgate::config::Config::from_toml(
        &toml,
        &tollgate::config::Overrides::default(),
        &|name: &str| (name == "K").then(|| "k".into()),
    )?);
    let metrics = Arc::new(Metrics::new(
        &config,
        &WriterMetrics::default(),
        &CacheMetrics::default(),
    ));
    let provider: Arc<str> = Arc::from("fake");
    let handler = |AxumState(config): AxumState<Arc<tollgate::config::Config>>,
                   Extension(obs): Extension<Observed>| async move {
        let model = config.models[0].clone();
        obs.0.asked(&model, Some(64));
        obs.0.attempt(
            &provider,
            tollgate::observe::labels::AttemptOutcome::success,
        );
        let usage = tollgate::billing::Usage {
            input_tokens: 20,
            output_tokens: 10,
            ..Default::default()
        };
        let cost = model.pricing.cost(&usage);
        obs.0.charged(
            tollgate::config::Endpoint::ChatCompletions,
            &model,
            &model,
            Some(&provider),
            &usage,
            cost,
            tollgate::store::KeyId(1),
        );
        "{\"ok\":true}"
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(handler))
        .with_state(config)
        .layer(axum::middleware::from_fn_with_state(metrics, access::layer));
    let call = |app: axum::Router| async move {
        let request = axum::http::Request::post("/v1/chat/completions")
            .body(axum::body::Body::from("{}"))
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let _ = response.into_body().collect().await;
    };
    for _ in 0..1_000 {
        call(app.clone()).await;
    }
    let started = thread_cpu();
    for _ in 0..requests {
        call(app.clone()).await;
    }
    Ok((thread_cpu() - started) * 1e6 / f64::from(requests))
}

/// Metrics off and on, `ROUNDS` alternating rounds: the medians of off, on and on − off.
pub async fn recording_costs(requests: u32) -> anyhow::Result<(f64, f64, f64)> {
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..ROUNDS {
        off.push(recording_cost(false, requests).await?);
        on.push(recording_cost(true, requests).await?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let differences: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a - b).collect();
    Ok((median(off), median(on), median(differences)))
}

impl Bench {
    /// The recording path alone, in process: metrics off and on, alternating rounds.
    pub(super) async fn observability_cost(&mut self) -> anyhow::Result<()> {
        let requests = if self.args.quick { 20_000 } else { 100_000 };
        let (off, on, added) = recording_costs(requests).await?;
        let mut table = Table::new(
            "Observability, the recording path alone (in process)",
            format!("{requests} requests through the access layer and a handler that records what a model request records (model, one attempt, a charge), on this thread's CPU clock; {ROUNDS} rounds alternating, medians. No log subscriber: the access line is written either way."),
            &["", "metrics off (µs/request)", "metrics on (µs/request)", "added (µs)"],
        );
        table.row(
            "per request",
            vec![num(Some(off), 2), num(Some(on), 2), num(Some(added), 2)],
        );
        self.emit(table);
        self.target(
            "metrics recording alone: CPU per request (in process)",
            "≤ 5 µs",
            format!("{added:+.2} µs"),
            Some(added <= 5.0),
        );
        Ok(())
    }

    /// Metrics off / metrics on / metrics and traces on, at 1,000 req/s.
    pub(super) async fn observability(&mut self) -> anyhow::Result<()> {
        let (sink, exports) = otlp_sink().await?;
        let base = std::fs::read_to_string(&self.sqlite.config)?;
        let variants = [
            (
                "metrics-off",
                "[observability]\nmetrics = false\n".to_string(),
            ),
            (
                "metrics-on",
                "[observability]\nmetrics = true\n".to_string(),
            ),
            (
                "traces-on",
                format!("[observability]\nmetrics = true\notlp_endpoint = \"http://{sink}\"\n"),
            ),
        ];
        let mut deployments = Vec::new();
        for (name, section) in &variants {
            let config = self.path(&format!("tollgate-{name}.toml"));
            std::fs::write(&config, format!("{base}\n{section}"))?;
            deployments.push(Deployment {
                config,
                ..self.sqlite.clone()
            });
        }
        let body = chat_body(false);
        let d = (self.lengths.open / ROUNDS as u32).max(Duration::from_secs(3));
        let mut rounds: Vec<Vec<Side>> = Vec::new();
        for _ in 0..ROUNDS {
            let mut round = Vec::new();
            for deployment in &deployments {
                self.start_gate(deployment, "info").await?;
                let url = self.gate_url("/v1/chat/completions")?;
                self.warm(&url, &body).await?;
                let run = self.oha_post(url, body.clone(), Some(OPEN_RATE), d);
                // Tollgate's CPU alone: the fake upstream's is the same on every side.
                round.push(self.oha_side(&run, vec![vec![self.gate_pid()?]]).await?);
            }
            rounds.push(round);
        }
        self.stop_gate();
        let median = |values: Vec<f64>| {
            let mut values = values;
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let sides: Vec<Side> = (0..variants.len())
            .map(|i| {
                let of = |get: &dyn Fn(&Side) -> f64| {
                    median(rounds.iter().map(|r| get(&r[i])).collect())
                };
                let mut side = rounds[0][i];
                side.latency.p50_ms = of(&|s| s.latency.p50_ms);
                side.latency.p99_ms = of(&|s| s.latency.p99_ms);
                side.latency.p999_ms = of(&|s| s.latency.p999_ms);
                side.rps = of(&|s| s.rps);
                side.cpu_us_per_request = of(&|s| s.cpu_us_per_request);
                side.peak_rss_mb = of(&|s| s.peak_rss_mb);
                side.completed = rounds.iter().map(|r| r[i].completed).sum();
                side.failed = rounds.iter().map(|r| r[i].failed).sum();
                side
            })
            .collect();
        let table = comparison(
            &format!("Observability, chat completions, open loop at {OPEN_RATE} req/s"),
            &format!(
                "oha -q {OPEN_RATE} -c {CONNECTIONS_OPEN}; {ROUNDS} rounds of {} s per column, columns alternating within a round, medians over the rounds; RUST_LOG=info. CPU: Tollgate's alone. Traces: OTLP over HTTP to a sink in the bench process ({} export requests received).",
                d.as_secs(),
                exports.load(Ordering::Relaxed)
            ),
            &["metrics off", "metrics on, traces off", "metrics and traces on"],
            &sides,
            &[1, 2],
        );
        self.emit(table);
        let difference = |before: usize, after: usize, get: &dyn Fn(&Side) -> f64| {
            median(
                rounds
                    .iter()
                    .map(|r| get(&r[after]) - get(&r[before]))
                    .collect(),
            )
        };
        let cpu = difference(0, 1, &|s| s.cpu_us_per_request);
        self.target(
            "metrics on, traces off: added CPU per request",
            "≤ 5 µs",
            format!(
                "{cpu:+.1} µs; added p50 {:+.3} ms",
                difference(0, 1, &|s| s.latency.p50_ms)
            ),
            Some(cpu <= 5.0),
        );
        let p50 = difference(1, 2, &|s| s.latency.p50_ms);
        self.target(
            "traces on at 1,000 req/s: added p50",
            "≤ 0.05 ms",
            format!(
                "{p50:+.3} ms; CPU {:+.1} µs/request",
                difference(1, 2, &|s| s.cpu_us_per_request)
            ),
            Some(p50 <= 0.05),
        );
        Ok(())
    }
}
