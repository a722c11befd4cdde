//! Transcriptions and translations per model family: whisper-1 billed by duration in
//! five formats, gpt-4o-transcribe billed by tokens in json, text and a stream.

use fake_upstream::FakeUpstream;
use serde_json::{json, Value};

use crate::{client, json_events, spawn};

/// 40,000 bytes: 3 seconds at the fake's 16,000 bytes per second, 40 audio tokens.
const FILE_BYTES: usize = 40_000;

async fn upload(
    up: &FakeUpstream,
    path: &str,
    model: &str,
    fields: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    let file = reqwest::multipart::Part::bytes(vec![1u8; FILE_BYTES]).file_name("a.wav");
    let mut form = reqwest::multipart::Form::new()
        .part("file", file)
        .text("model", model.to_string());
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    Ok(client()
        .post(format!("{}/audio/{path}", up.base_url()))
        .multipart(form)
        .send()
        .await?)
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string()
}

/// The cue timings of an SRT or VTT body, in milliseconds.
fn cue_times(body: &str, sep: char) -> anyhow::Result<Vec<(u64, u64)>> {
    let ms = |t: &str| -> anyhow::Result<u64> {
        let (hms, milli) = t
            .trim()
            .split_once(sep)
            .ok_or_else(|| anyhow::anyhow!("bad time {t}"))?;
        let mut total = 0u64;
        for part in hms.split(':') {
            total = total * 60 + part.parse::<u64>()?;
        }
        Ok(total * 1000 + milli.parse::<u64>()?)
    };
    body.lines()
        .filter_map(|l| l.split_once(" --> "))
        .map(|(a, b)| Ok((ms(a)?, ms(b)?)))
        .collect()
}

#[tokio::test]
async fn whisper_answers_all_five_formats_by_duration() -> anyhow::Result<()> {
    let up = spawn().await?;
    let words = "[[fake:words=20]]";
    // json, with `stream` ignored.
    let resp = upload(
        &up,
        "transcriptions",
        "whisper-1",
        &[("prompt", words), ("stream", "true")],
    )
    .await?;
    assert_eq!(content_type(&resp), "application/json");
    let v: Value = resp.json().await?;
    assert_eq!(v["usage"], json!({"type": "duration", "seconds": 3}));
    let text = v["text"].as_str().unwrap_or_default().to_string();
    assert_eq!(text.split_whitespace().count(), 20);

    let resp = upload(
        &up,
        "transcriptions",
        "whisper-1",
        &[("prompt", words), ("response_format", "text")],
    )
    .await?;
    assert_eq!(content_type(&resp), "text/plain; charset=utf-8");
    assert_eq!(resp.text().await?, format!("{text}\n"));

    let resp = upload(
        &up,
        "transcriptions",
        "whisper-1",
        &[("prompt", words), ("response_format", "srt")],
    )
    .await?;
    assert_eq!(content_type(&resp), "text/plain; charset=utf-8");
    let srt = resp.text().await?;
    assert!(
        srt.starts_with("1\n00:00:00,000 --> 00:00:01,000\n"),
        "{srt}"
    );
    assert!(
        srt.contains("\n\n3\n00:00:02,000 --> 00:00:03,000\n"),
        "{srt}"
    );
    let times = cue_times(&srt, ',')?;
    // 20 words in cues of 8: 3 cues, back to back, the last ending at the duration.
    assert_eq!(times, [(0, 1000), (1000, 2000), (2000, 3000)]);

    let resp = upload(
        &up,
        "transcriptions",
        "whisper-1",
        &[("prompt", words), ("response_format", "vtt")],
    )
    .await?;
    let vtt = resp.text().await?;
    assert!(
        vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nHello from the"),
        "{vtt}"
    );
    assert_eq!(cue_times(&vtt, '.')?.last(), Some(&(2000, 3000)));

    let resp = upload(
        &up,
        "transcriptions",
        "whisper-1",
        &[
            ("prompt", words),
            ("response_format", "verbose_json"),
            ("language", "french"),
        ],
    )
    .await?;
    let v: Value = resp.json().await?;
    assert_eq!(v["task"], "transcribe");
    assert_eq!(v["language"], "french");
    assert_eq!(v["duration"], 3.0);
    assert_eq!(v["text"], text.as_str());
    assert_eq!(v["usage"], json!({"type": "duration", "seconds": 3}));
    let segments = v["segments"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no segments"))?;
    assert_eq!(segments.len(), 3);
    for (i, seg) in segments.iter().enumerate() {
        for key in [
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        ] {
            assert!(seg.get(key).is_some(), "segment lacks {key}");
        }
        assert_eq!(seg["id"], i);
    }
    assert_eq!(segments[2]["end"], 3.0);
    let joined: String = segments.iter().filter_map(|s| s["text"].as_str()).collect();
    assert_eq!(joined, text);

    let resp = upload(
        &up,
        "translations",
        "whisper-1",
        &[("response_format", "verbose_json")],
    )
    .await?;
    let v: Value = resp.json().await?;
    assert_eq!(
        (v["task"].as_str(), v["language"].as_str()),
        (Some("translate"), Some("english"))
    );
    Ok(())
}

#[tokio::test]
async fn gpt_4o_transcribe_is_billed_by_tokens() -> anyhow::Result<()> {
    let up = spawn().await?;
    let prompt = "names: Ana Bo [[fake:words=5]]";
    let resp = upload(
        &up,
        "transcriptions",
        "gpt-4o-transcribe",
        &[("prompt", prompt)],
    )
    .await?;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await?;
    assert_eq!(v["text"], "Hello from the fake upstream,");
    // 4 prompt words; 40,000 bytes / 1,000 = 40 audio tokens; 5 words out.
    assert_eq!(
        v["usage"],
        json!({"type": "tokens", "input_tokens": 44,
            "input_token_details": {"text_tokens": 4, "audio_tokens": 40},
            "output_tokens": 5, "total_tokens": 49})
    );
    let resp = upload(
        &up,
        "transcriptions",
        "gpt-4o-mini-transcribe",
        &[("prompt", prompt), ("response_format", "text")],
    )
    .await?;
    assert_eq!(content_type(&resp), "text/plain; charset=utf-8");
    assert_eq!(resp.text().await?, "Hello from the fake upstream,\n");

    let resp = upload(
        &up,
        "transcriptions",
        "gpt-4o-transcribe",
        &[("prompt", "[[fake:no_usage]]")],
    )
    .await?;
    let v: Value = resp.json().await?;
    assert!(v.get("usage").is_none());
    assert!(v["text"].is_string());
    Ok(())
}

#[tokio::test]
async fn gpt_4o_transcribe_refuses_whisper_only_formats_and_translations() -> anyhow::Result<()> {
    let up = spawn().await?;
    for format in ["verbose_json", "srt", "vtt"] {
        let resp = upload(
            &up,
            "transcriptions",
            "gpt-4o-transcribe",
            &[("response_format", format)],
        )
        .await?;
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await?;
        assert_eq!(
            v["error"],
            json!({"message": format!("response_format '{format}' is not compatible with model \
                'gpt-4o-transcribe'. Use 'json' or 'text' instead."),
                "type": "invalid_request_error", "param": "response_format",
                "code": "unsupported_value"})
        );
    }
    let resp = upload(&up, "translations", "gpt-4o-mini-transcribe", &[]).await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["param"], "model");
    Ok(())
}

#[tokio::test]
async fn gpt_4o_transcribe_streams_deltas_then_done_with_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    let resp = upload(
        &up,
        "transcriptions",
        "gpt-4o-mini-transcribe",
        &[("stream", "true"), ("prompt", "[[fake:words=3]]")],
    )
    .await?;
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let raw = resp.text().await?;
    assert!(!raw.contains("event:") && !raw.contains("[DONE]"), "{raw}");
    let events = json_events(&raw)?;
    let (done, deltas) = events
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("empty"))?;
    assert_eq!(deltas.len(), 3);
    assert!(deltas.iter().all(|d| d["type"] == "transcript.text.delta"));
    let text: String = deltas.iter().filter_map(|d| d["delta"].as_str()).collect();
    assert_eq!(text, "Hello from the");
    assert_eq!(done["type"], "transcript.text.done");
    assert_eq!(done["text"], "Hello from the");
    assert_eq!(done["usage"]["type"], "tokens");
    assert_eq!(done["usage"]["input_token_details"]["audio_tokens"], 40);
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert_eq!(done["usage"]["total_tokens"], 1 + 40 + 3);

    let resp = upload(
        &up,
        "transcriptions",
        "gpt-4o-transcribe",
        &[
            ("stream", "true"),
            ("prompt", "[[fake:words=3,no_terminator]]"),
        ],
    )
    .await?;
    let events = json_events(&resp.text().await?)?;
    assert_eq!(events.len(), 3, "deltas only: {events:?}");
    Ok(())
}
