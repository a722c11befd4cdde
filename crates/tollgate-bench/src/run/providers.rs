//! Provider kinds with a wire format of their own: a streamed chat request served by a
//! Gemini provider (SSE, its stream translated to Chat Completions by the gateway) and by a
//! Bedrock provider (SigV4-signed, an AWS event stream with CRCs, translated from
//! ConverseStream) against the same request served by an OpenAI-compatible provider
//! (passed through), all through Tollgate, in the same run. The figure compared is Tollgate's own CPU per request (the
//! fakes answer each format differently, so their CPU is left out).

use super::paths::{median_difference, median_side, ROUNDS};
#[allow(unused_imports)]
use super::*;

/// Streams per second of this scenario.
const RATE: u32 = 500;

fn stream_body(model: &str) -> String {
    json!({
        "model": model,
        "stream": true,
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about toll roads. [[fake:words=8]]"}
        ]
    })
    .to_string()
}

impl Bench {
    /// Streamed chat on the OpenAI, Gemini and Bedrock paths, alternating in rounds.
    pub(super) async fn providers(&mut self) -> anyhow::Result<()> {
        self.restart_sqlite("info").await?;
        let url = self.gate_url("/v1/chat/completions")?;
        let models = [CHAT_MODEL, GEMINI_MODEL, BEDROCK_MODEL];
        for model in models {
            self.warm(&url, &stream_body(model)).await?;
        }
        let d = self.round_length();
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let mut round = Vec::new();
            for model in models {
                let run = self.oha_post(url.clone(), stream_body(model), Some(RATE), d);
                round.push(self.oha_side(&run, vec![vec![self.gate_pid()?]]).await?);
            }
            rounds.push(round);
        }
        let sides: Vec<Side> = (0..models.len())
            .map(|i| median_side(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect();
        let table = comparison(
            &format!("Streamed chat by provider kind, open loop at {RATE} streams/s"),
            &format!(
                "oha -q {RATE} -c {CONNECTIONS_OPEN}; {ROUNDS} rounds of {} s per column, alternating, medians over the rounds. CPU: Tollgate's alone. OpenAI: the fast fake's canned stream passed through (usage asked for and stripped). Gemini: the fake's `streamGenerateContent?alt=sse`, 8 words, translated to Chat Completions chunks and metered from `usageMetadata`. Bedrock: the fake's ConverseStream (SigV4 verified), 8 words in event-stream messages, translated and metered from its `metadata` event.",
                d.as_secs()
            ),
            &["OpenAI provider", "Gemini provider", "Bedrock provider"],
            &sides,
            &[1, 2],
        );
        self.emit(table);
        let cpu = |s: &Side| s.cpu_us_per_request;
        let openai = sides[0].cpu_us_per_request;
        for (i, name) in [(1, "Gemini"), (2, "Bedrock")] {
            let native = sides[i].cpu_us_per_request;
            let ratio = native / openai;
            self.target(
                &format!("{name} streaming: Tollgate CPU per stream vs the OpenAI path"),
                "within 20 %",
                format!(
                    "{native:.1} vs {openai:.1} µs ({:+.0} %, median difference {:+.1} µs)",
                    (ratio - 1.0) * 100.0,
                    median_difference(&rounds, 0, i, &cpu)
                ),
                Some(ratio <= 1.2),
            );
        }
        Ok(())
    }
}
