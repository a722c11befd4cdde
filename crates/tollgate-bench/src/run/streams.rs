//! Streaming: time to first byte, and many streams held open at once.

#[allow(unused_imports)]
use super::*;

impl Bench {
    /// Streamed chat: time to first byte and to the end, open loop.
    pub(super) async fn streaming(&mut self) -> anyhow::Result<()> {
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
    pub(super) async fn held_streams(&mut self) -> anyhow::Result<()> {
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
}
