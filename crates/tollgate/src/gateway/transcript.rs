//! Transcriptions in formats without usage (`text`, `srt`, `vtt`) are metered all the
//! same: the gateway asks the provider for the JSON format that carries what the model is
//! priced by (`verbose_json`, with the audio's duration, for a model priced per second;
//! `json`, with token usage, for a model priced per token) and writes the client's
//! format from it. Formats a model's provider does not offer in JSON (`srt` and `vtt` for
//! token-priced models) go upstream as they are, and the provider answers for itself.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;
use tollgate_formats::sse::{self, SseDecoder};
use tollgate_formats::usage::{self as wire_usage, ESTIMATE_BYTES_PER_TOKEN};

use super::measure::tokens_usage;
use super::settlement::Settlement;
use crate::billing::Usage;
use crate::providers::{self, UpstreamChunks, UpstreamResponse};

/// A transcript format the gateway writes from the provider's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TranscriptFormat {
    Text,
    Srt,
    Vtt,
}

/// What to send upstream for a client's `response_format`, and the format the gateway
/// then writes (`None`: the answer is relayed as it comes).
pub(super) fn rewrite(
    value: &[u8],
    priced_per_second: bool,
) -> (Option<&'static str>, Option<TranscriptFormat>) {
    let asked = match value {
        b"text" => TranscriptFormat::Text,
        b"srt" => TranscriptFormat::Srt,
        b"vtt" => TranscriptFormat::Vtt,
        _ => return (None, None),
    };
    match (priced_per_second, asked) {
        (true, _) => (Some("verbose_json"), Some(asked)),
        (false, TranscriptFormat::Text) => (Some("json"), Some(asked)),
        (false, _) => (None, None),
    }
}

/// `12.5` seconds as `00:00:12,500` (SRT) or `00:00:12.500` (WebVTT).
fn timestamp(seconds: f64, separator: char) -> String {
    let millis = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

/// The client's format written from the provider's JSON transcript; `None` when the
/// answer lacks what the format needs.
pub(super) fn render(format: TranscriptFormat, answer: &Value) -> Option<String> {
    let text = answer.get("text").and_then(Value::as_str)?;
    if format == TranscriptFormat::Text {
        return Some(format!("{text}\n"));
    }
    let segments = answer.get("segments").and_then(Value::as_array)?;
    let (separator, mut out) = match format {
        TranscriptFormat::Vtt => ('.', String::from("WEBVTT\n\n")),
        _ => (',', String::new()),
    };
    for (i, segment) in segments.iter().enumerate() {
        let start = segment.get("start").and_then(Value::as_f64)?;
        let end = segment.get("end").and_then(Value::as_f64)?;
        let text = segment.get("text").and_then(Value::as_str)?.trim();
        if format == TranscriptFormat::Srt {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!(
            "{} --> {}\n{text}\n\n",
            timestamp(start, separator),
            timestamp(end, separator)
        ));
    }
    Some(out)
}

/// A streamed transcription (`transcript.text.delta` events, then `transcript.text.done`
/// with the usage), relayed event by event; the final event waits until the charge is
/// safe. Without a final usage, the text relayed is charged as output, estimated.
pub(super) fn stream(
    upstream: UpstreamResponse,
    settlement: Settlement,
    idle_timeout: Duration,
    deadline: Instant,
    max_frame_bytes: usize,
) -> Response {
    let relay = TranscriptRelay {
        upstream: providers::chunks(upstream),
        decoder: SseDecoder::new(max_frame_bytes),
        settlement: Some(settlement),
        idle_timeout,
        deadline,
        usage: None,
        text_bytes: 0,
        out: std::collections::VecDeque::new(),
        done: false,
    };
    let body = futures_util::stream::unfold(relay, |mut r| async move {
        r.next().await.map(|item| (item, r))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct TranscriptRelay {
    upstream: UpstreamChunks,
    decoder: SseDecoder,
    settlement: Option<Settlement>,
    idle_timeout: Duration,
    deadline: Instant,
    usage: Option<Usage>,
    text_bytes: u64,
    out: std::collections::VecDeque<Bytes>,
    done: bool,
}

impl TranscriptRelay {
    async fn settle(&mut self, status: u16) {
        let Some(settlement) = self.settlement.take() else {
            return;
        };
        match self.usage {
            Some(usage) => {
                settlement.settle(usage, status).await;
            }
            None if self.text_bytes == 0 => settlement.settle_undelivered(status).await,
            None => {
                let usage = Usage {
                    output_tokens: self.text_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN),
                    ..Usage::default()
                };
                settlement.settle_estimated(usage, status).await;
            }
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Some(Ok(frame));
            }
            if self.done {
                return None;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let chunk =
                match tokio::time::timeout(self.idle_timeout.min(left), self.upstream.next()).await
                {
                    Ok(Some(Ok(chunk))) => chunk,
                    Ok(None) => {
                        // Ended without its final event: what was relayed is charged.
                        self.settle(502).await;
                        self.done = true;
                        continue;
                    }
                    Ok(Some(Err(_))) | Err(_) => {
                        self.settle(502).await;
                        self.done = true;
                        return Some(Err(std::io::Error::other(
                            "the provider's transcript stream broke off",
                        )));
                    }
                };
            let Ok(events) = self.decoder.push(&chunk) else {
                self.settle(502).await;
                self.done = true;
                return Some(Err(std::io::Error::other(
                    "the provider's transcript stream was unreadable",
                )));
            };
            for event in events {
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                match data.get("type").and_then(Value::as_str) {
                    Some("transcript.text.delta") => {
                        self.text_bytes += data
                            .get("delta")
                            .and_then(Value::as_str)
                            .map_or(0, |d| d.len() as u64);
                    }
                    Some("transcript.text.done") => {
                        self.usage = data
                            .get("usage")
                            .map(|u| tokens_usage(wire_usage::from_responses_usage(u)));
                        self.done = true;
                        if let Some(settlement) = self.settlement.take() {
                            let usage = self.usage.unwrap_or_default();
                            let delivered = settlement
                                .settle_delivered(usage, self.usage.is_none())
                                .await;
                            if let Err(e) = delivered {
                                // Not delivered as a success: the stream breaks off.
                                return Some(Err(std::io::Error::other(e)));
                            }
                        }
                    }
                    _ => {}
                }
                self.out
                    .push_back(sse::encode(event.event.as_deref(), &event.data));
            }
        }
    }
}

impl Drop for TranscriptRelay {
    fn drop(&mut self) {
        if let Some(settlement) = self.settlement.take() {
            let usage = self.usage.unwrap_or(Usage {
                output_tokens: self.text_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN),
                ..Usage::default()
            });
            settlement.settle_detached(usage, 499, self.usage.is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_are_written_from_the_verbose_transcript() {
        let answer = json!({"text": "Hello there. General.", "duration": 3.2, "segments": [
            {"start": 0.0, "end": 1.5, "text": " Hello there."},
            {"start": 1.5, "end": 3.2, "text": " General."}]});
        assert_eq!(
            render(TranscriptFormat::Text, &answer).as_deref(),
            Some("Hello there. General.\n")
        );
        assert_eq!(
            render(TranscriptFormat::Srt, &answer).as_deref(),
            Some("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:00:01,500 --> 00:00:03,200\nGeneral.\n\n")
        );
        assert_eq!(
            render(TranscriptFormat::Vtt, &answer).as_deref(),
            Some("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n00:00:01.500 --> 00:00:03.200\nGeneral.\n\n")
        );
        assert_eq!(render(TranscriptFormat::Srt, &json!({"text": "x"})), None);
        assert_eq!(timestamp(3725.25, ','), "01:02:05,250");
    }

    #[test]
    fn the_upstream_format_carries_what_the_model_is_priced_by() {
        assert_eq!(
            rewrite(b"srt", true),
            (Some("verbose_json"), Some(TranscriptFormat::Srt))
        );
        assert_eq!(
            rewrite(b"text", false),
            (Some("json"), Some(TranscriptFormat::Text))
        );
        assert_eq!(rewrite(b"vtt", false), (None, None));
        assert_eq!(rewrite(b"json", true), (None, None));
    }
}
