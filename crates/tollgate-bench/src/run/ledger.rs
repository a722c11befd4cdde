//! The ledger: the usage writer, the activity endpoint over many rows, and the gateway on PostgreSQL.

#[allow(unused_imports)]
use super::*;

impl Bench {
    /// The usage writer alone, SQLite (and PostgreSQL when given).
    pub(super) async fn usage_writer(&mut self, pg: Option<&str>) -> anyhow::Result<()> {
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
    pub(super) async fn activity(
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

    pub(super) async fn activity_sqlite(
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
}

/// The same gateway on PostgreSQL: open loop, capacity, and activity over 1M rows.
pub(super) async fn postgres(bench: &mut Bench, url: &str) -> anyhow::Result<()> {
    let data_dir = bench.work.join("pg-data");
    std::fs::create_dir_all(&data_dir)?;
    let config = bench.work.join("tollgate-pg.toml");
    write_config(
        &config,
        url,
        &data_dir,
        &bench.fast_addr,
        &bench.slow_addr,
        true,
    )?;
    let deployment = Deployment {
        bin: bench.bin_dir.join("tollgate"),
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
