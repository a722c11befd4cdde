//! Budget windows and model allow-lists: what they add to a request's CPU, through the
//! real gateway, side by side in one run. Two keys of one account, both with a credit
//! limit far above what the run spends: one a lifetime limit and no allow-list, the other
//! a daily window and an allow-list of three models (the one asked for last).

use super::paths::{median_difference, median_side, with_key, ROUNDS};
#[allow(unused_imports)]
use super::*;

impl Bench {
    /// Creates an inference key of the default account with `body`'s settings.
    async fn budget_key(&self, body: Value) -> anyhow::Result<String> {
        let base = format!("http://{}", self.gate()?.addr);
        let r = self
            .client
            .post(format!("{base}/v1/account/keys"))
            .header("authorization", format!("Bearer {}", self.provisioning_key))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        v.get("key")
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("creating a key answered {status}: {v}"))
    }

    /// Chat completions at 1,000 req/s with each key, alternating within each round.
    pub(super) async fn budgets(&mut self) -> anyhow::Result<()> {
        self.restart_sqlite("info").await?;
        let plain = self
            .budget_key(json!({"name": "lifetime", "credit_limit": 100000}))
            .await?;
        let windowed = self
            .budget_key(json!({"name": "daily, allow-list", "credit_limit": 100000,
                "limit_reset": "daily", "allowed_models": [EMBED_MODEL, ROUTED_MODEL, CHAT_MODEL]}))
            .await?;
        let url = self.gate_url("/v1/chat/completions")?;
        let body = chat_body(false);
        let d = (self.lengths.open / ROUNDS as u32).max(Duration::from_secs(3));
        for key in [&plain, &windowed] {
            let warm = self.oha_post(
                url.clone(),
                body.clone(),
                Some(OPEN_RATE),
                self.lengths.warm,
            );
            self.oha.run(&with_key(warm, key)).await?;
        }
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let mut round = Vec::new();
            for key in [&plain, &windowed] {
                let run = with_key(
                    self.oha_post(url.clone(), body.clone(), Some(OPEN_RATE), d),
                    key,
                );
                round.push(
                    self.oha_side(&run, vec![vec![self.gate_pid()?], vec![self.fast.pid()]])
                        .await?,
                );
            }
            rounds.push(round);
        }
        let sides: Vec<Side> = (0..2)
            .map(|i| median_side(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect();
        let table = comparison(
            &format!("Budget windows and allow-lists, chat completions at {OPEN_RATE} req/s"),
            &format!(
                "oha -q {OPEN_RATE} -c {CONNECTIONS_OPEN}; {ROUNDS} rounds of {} s per column, alternating within a round, medians over the rounds. Both keys have a credit_limit; the second resets daily and may use three models. CPU: Tollgate's plus the fake upstream's.",
                d.as_secs()
            ),
            &["lifetime limit", "daily window + allow-list"],
            &sides,
            &[1],
        );
        self.emit(table);
        let cpu = median_difference(&rounds, 0, 1, &|s| s.cpu_us_per_request);
        self.target(
            "budget windows and allow-lists: added CPU per request",
            "≤ 5 µs",
            format!(
                "{cpu:+.1} µs; added p50 {:+.3} ms",
                median_difference(&rounds, 0, 1, &|s| s.latency.p50_ms)
            ),
            Some(cpu <= 5.0),
        );
        Ok(())
    }
}
