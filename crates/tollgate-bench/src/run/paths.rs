//! Request-path comparisons: routing over two deployments and the cost of one failed
//! attempt; what the input estimate costs by itself; and this binary against an earlier
//! one on the same load (the before/after figures of a change on the request path).
//!
//! The sides of a comparison are measured one after the other within a round, for
//! `ROUNDS` rounds, and each figure reported is the median over the rounds: this
//! machine's speed shifts for tens of seconds at a time, and alternating spreads those
//! phases over every side alike.

use tollgate_formats::estimate::{estimate_input, Profile};
use tollgate_formats::Format;

#[allow(unused_imports)]
use super::*;

pub(super) const ROUNDS: usize = 3;

/// A chat body for `model` whose user message holds about `prompt_bytes` of English
/// text.
fn prompt_body(model: &str, prompt_bytes: usize) -> String {
    const TEXT: &str = "Toll roads are financed by the fees their drivers pay, and the \
        operators publish a price per kilometre for each class of vehicle. ";
    let prompt: String = TEXT.chars().cycle().take(prompt_bytes).collect();
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt}
        ],
        "max_tokens": 64
    })
    .to_string()
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Each figure of a side, the median over the rounds.
pub(super) fn median_side(rounds: &[Side]) -> Side {
    let of = |get: &dyn Fn(&Side) -> f64| median(rounds.iter().map(get).collect());
    let mut side = rounds[0];
    side.latency.p50_ms = of(&|s| s.latency.p50_ms);
    side.latency.p99_ms = of(&|s| s.latency.p99_ms);
    side.latency.p999_ms = of(&|s| s.latency.p999_ms);
    side.rps = of(&|s| s.rps);
    side.cpu_us_per_request = of(&|s| s.cpu_us_per_request);
    side.peak_rss_mb = of(&|s| s.peak_rss_mb);
    side.own_peak_mb = of(&|s| s.own_peak_mb);
    side.completed = rounds.iter().map(|s| s.completed).sum();
    side.failed = rounds.iter().map(|s| s.failed).sum();
    side
}

/// The median over the rounds of `after - before` for one figure.
pub(super) fn median_difference(
    rounds: &[Vec<Side>],
    before: usize,
    after: usize,
    get: &dyn Fn(&Side) -> f64,
) -> f64 {
    median(
        rounds
            .iter()
            .map(|r| get(&r[after]) - get(&r[before]))
            .collect(),
    )
}

/// The same load with another key.
pub(super) fn with_key(mut run: OhaRun, key: &str) -> OhaRun {
    for (name, value) in &mut run.headers {
        if name == "Authorization" {
            *value = format!("Bearer {key}");
        }
    }
    run
}

/// Microseconds per call of `f`, over at least `min` of calls.
fn time_per_call(min: Duration, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    while calls < 3 || started.elapsed() < min {
        f();
        calls += 1;
    }
    started.elapsed().as_secs_f64() * 1e6 / calls as f64
}

impl Bench {
    pub(super) fn round_length(&self) -> Duration {
        (self.lengths.open / ROUNDS as u32).max(Duration::from_secs(3))
    }

    /// Routing: one route, two deployments of equal weight, and a first deployment that
    /// refuses every connection (one failed attempt per request), at 1,000 req/s.
    pub(super) async fn routing(&mut self) -> anyhow::Result<()> {
        self.restart_sqlite("info").await?;
        let url = self.gate_url("/v1/chat/completions")?;
        let models = [CHAT_MODEL, ROUTED_MODEL, FAILOVER_MODEL];
        for model in models {
            self.warm(&url, &prompt_body(model, 40)).await?;
        }
        let d = self.round_length();
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let mut round = Vec::new();
            for model in models {
                let run = self.oha_post(url.clone(), prompt_body(model, 40), Some(OPEN_RATE), d);
                let side = self
                    .oha_side(&run, vec![vec![self.gate_pid()?], vec![self.fast.pid()]])
                    .await?;
                round.push(side);
            }
            rounds.push(round);
        }
        let sides: Vec<Side> = (0..models.len())
            .map(|i| median_side(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect();
        let table = comparison(
            &format!("Routing, chat completions, open loop at {OPEN_RATE} req/s"),
            &format!(
                "oha -q {OPEN_RATE} -c {CONNECTIONS_OPEN}; {ROUNDS} rounds of {} s per column, columns alternating within a round, medians over the rounds. CPU: Tollgate's plus the fake upstream's. `{ROUTED_MODEL}`: two deployments of weight 1. `{FAILOVER_MODEL}`: its first deployment refuses connections and never cools down, so each request makes one failed attempt before it is served.",
                d.as_secs()
            ),
            &["one route", "two deployments", "one failed attempt first"],
            &sides,
            &[1, 2],
        );
        self.emit(table);
        let p50 = |s: &Side| s.latency.p50_ms;
        let cpu = |s: &Side| s.cpu_us_per_request;
        let routed_p50 = median_difference(&rounds, 0, 1, &p50);
        self.target(
            "routing over two deployments: added p50 at 1,000 req/s",
            "≤ 0.01 ms",
            format!(
                "{routed_p50:+.3} ms, CPU {:+.1} µs/request",
                median_difference(&rounds, 0, 1, &cpu)
            ),
            Some(routed_p50 <= 0.01),
        );
        self.target(
            "one failed attempt (connection refused): its cost",
            "reported",
            format!(
                "p50 {:+.3} ms, p99 {:+.3} ms, CPU {:+.1} µs/request",
                median_difference(&rounds, 0, 2, &p50),
                median_difference(&rounds, 0, 2, &|s| s.latency.p99_ms),
                median_difference(&rounds, 0, 2, &cpu)
            ),
            None,
        );
        Ok(())
    }

    /// The input estimate alone, in this process: the byte bound every request pays,
    /// and the exact count (tiktoken) that a request pays only when the byte bound does
    /// not fit its key's or account's budget.
    pub(super) fn tokenizer_cost(&mut self) {
        let profile = Profile::for_model(CHAT_MODEL);
        let min = if self.args.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        };
        let mut table = Table::new(
            "Input estimate, per request (in process)",
            format!("A chat body for {CHAT_MODEL} with a user message of the given size; the estimate walks the JSON once. Each figure is the mean over at least {} ms of calls, on one core.", min.as_millis()),
            &["prompt", "byte bound (µs)", "tokens", "exact, tiktoken (µs)", "tokens"],
        );
        let mut per_kb = (f64::NAN, f64::NAN);
        for size in [1_000, 10_000, 100_000] {
            let body = prompt_body(CHAT_MODEL, size);
            let run = |p: &Profile| {
                estimate_input(Format::ChatCompletions, body.as_bytes(), p)
                    .map(|e| e.tokens)
                    .unwrap_or(0)
            };
            let bytes = profile.with_bytes();
            let bytes_us = time_per_call(min, || {
                std::hint::black_box(run(&bytes));
            });
            let exact_us = time_per_call(min, || {
                std::hint::black_box(run(&profile));
            });
            if size == 1_000 {
                per_kb.0 = bytes_us;
            }
            if size == 100_000 {
                per_kb.1 = exact_us;
            }
            table.row(
                &format!("{} KB", size / 1_000),
                vec![
                    num(Some(bytes_us), 1),
                    num(Some(run(&bytes) as f64), 0),
                    num(Some(exact_us), 1),
                    num(Some(run(&profile) as f64), 0),
                ],
            );
        }
        self.emit(table);
        self.target(
            "input estimate of a 1 KB prompt (byte bound, every request)",
            "part of ≤ 10 µs",
            format!("{:.1} µs", per_kb.0),
            Some(per_kb.0 <= 10.0),
        );
        self.target(
            "exact count of a 100 KB prompt (tiktoken, only near a limit)",
            "reported",
            format!("{:.0} µs", per_kb.1),
            None,
        );
    }

    /// This binary against `--baseline-bin` (an earlier commit's) on the same load: a
    /// 1 KB prompt at 1,000 req/s, each on its own fresh SQLite ledger, alternating
    /// within each round; the direct path is measured in each round too.
    pub(super) async fn before_after(&mut self) -> anyhow::Result<()> {
        let Some(bin) = self.args.baseline_bin.clone() else {
            println!("\n  before-after: no --baseline-bin given, skipped");
            return Ok(());
        };
        let data_dir = self.path("baseline-data");
        std::fs::create_dir_all(&data_dir)?;
        let database_url = format!("sqlite://{}/tollgate.db", data_dir.display());
        let config = self.path("tollgate-baseline.toml");
        write_config(
            &config,
            &database_url,
            &data_dir,
            &self.fast_addr,
            &self.slow_addr,
            false,
        )?;
        let baseline = Deployment {
            name: "baseline",
            bin,
            config,
            database_url,
            data_dir,
        };
        let (_, baseline_key, _) = provision(self, &baseline, 0).await?;
        let body = prompt_body(CHAT_MODEL, 1_000);
        let d = self.round_length();
        let direct_url = self.direct_url("/v1/chat/completions");
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let direct = self
                .oha_side(
                    &self.oha_post(direct_url.clone(), body.clone(), Some(OPEN_RATE), d),
                    vec![vec![self.fast.pid()]],
                )
                .await?;
            self.start_gate(&baseline, "info").await?;
            let url = self.gate_url("/v1/chat/completions")?;
            let warm = self.oha_post(
                url.clone(),
                body.clone(),
                Some(OPEN_RATE),
                self.lengths.warm,
            );
            self.oha.run(&with_key(warm, &baseline_key)).await?;
            let run = self.oha_post(url, body.clone(), Some(OPEN_RATE), d);
            let before = self
                .oha_side(
                    &with_key(run, &baseline_key),
                    vec![vec![self.gate_pid()?], vec![self.fast.pid()]],
                )
                .await?;
            self.restart_sqlite("info").await?;
            let url = self.gate_url("/v1/chat/completions")?;
            self.warm(&url, &body).await?;
            let after = self
                .oha_side(
                    &self.oha_post(url, body.clone(), Some(OPEN_RATE), d),
                    vec![vec![self.gate_pid()?], vec![self.fast.pid()]],
                )
                .await?;
            rounds.push(vec![direct, before, after]);
        }
        self.stop_gate();
        let sides: Vec<Side> = (0..3)
            .map(|i| median_side(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect();
        let table = comparison(
            &format!("Before and after: a 1 KB prompt, open loop at {OPEN_RATE} req/s"),
            &format!(
                "The baseline is `{}`; this binary is the one built now. oha -q {OPEN_RATE} -c {CONNECTIONS_OPEN}; {ROUNDS} rounds of {} s per column, alternating, medians over the rounds; RUST_LOG=info. CPU: the proxy's plus the fake upstream's.",
                self.args
                    .baseline_bin
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
                d.as_secs()
            ),
            &["direct", "before (baseline)", "after (this binary)"],
            &sides,
            &[1, 2],
        );
        self.emit(table);
        let cpu = median_difference(&rounds, 1, 2, &|s| s.cpu_us_per_request);
        self.target(
            "CPU per request, after minus before (1 KB prompt, 1,000 req/s)",
            "≤ 10 µs",
            format!(
                "{cpu:+.1} µs; added p50 {:+.3} ms, p99 {:+.3} ms",
                median_difference(&rounds, 1, 2, &|s| s.latency.p50_ms),
                median_difference(&rounds, 1, 2, &|s| s.latency.p99_ms)
            ),
            Some(cpu <= 10.0),
        );
        Ok(())
    }
}
