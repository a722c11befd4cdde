//! Embeddings, and a mix of many keys (cold key cache).

#[allow(unused_imports)]
use super::*;

impl Bench {
    /// Embeddings: open loop and closed loop.
    pub(super) async fn embeddings(&mut self) -> anyhow::Result<()> {
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
    pub(super) async fn key_mix(&mut self) -> anyhow::Result<()> {
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
}
