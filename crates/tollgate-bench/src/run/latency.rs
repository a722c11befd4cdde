//! Chat completions at a fixed rate (open loop) and at capacity (closed loop).

#[allow(unused_imports)]
use super::*;

impl Bench {
    /// Non-streamed chat, open loop at 1,000 req/s: direct, through Tollgate at
    /// RUST_LOG=info (the default) and at RUST_LOG=warn.
    pub(super) async fn chat_open_loop(&mut self) -> anyhow::Result<()> {
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
    pub(super) async fn capacity(&mut self) -> anyhow::Result<()> {
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
}
