//! Misbehaviour directives through chat, Responses and Messages, streamed and not:
//! no usage, wrong content type, no terminator, cut/error after content, ignored
//! max tokens, absurd usage, endless answers, padding, echoed headers, trickle.

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::formats::{Api, APIS};
use crate::{dechunk, json_events, raw_http, spawn, sse_events, wait_for_stats};

const ABSURD: u64 = 1_000_000_000_000_000_000;

#[tokio::test]
async fn no_usage_leaves_usage_out_of_every_answer() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        let text = "hi [[fake:no_usage,words=4]]";
        let raw = api.send(&up, api.body(text, false)).await?.text().await?;
        let v: Value = serde_json::from_str(&raw)?;
        assert_eq!(
            api.text(&v).as_deref(),
            Some("Hello from the fake"),
            "{api:?}"
        );
        assert!(v.get("usage").is_none(), "{api:?}: {raw}");

        let raw = api.send(&up, api.body(text, true)).await?.text().await?;
        assert_eq!(api.streamed_text(&raw)?, "Hello from the fake", "{api:?}");
        assert_eq!(
            api.streamed_usages(&raw)?,
            Vec::<Value>::new(),
            "{api:?}: {raw}"
        );
        let events = json_events(&raw)?;
        match api {
            // The stream still ends with its terminator.
            Api::Chat => assert!(raw.ends_with("data: [DONE]\n\n")),
            Api::Responses => {
                let done = events.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
                assert_eq!(done["type"], "response.completed");
                assert!(done["response"].get("usage").is_none(), "{raw}");
            }
            Api::Messages => {
                assert!(events[0]["message"].get("usage").is_none(), "{raw}");
                let delta = events
                    .iter()
                    .find(|e| e["type"] == "message_delta")
                    .ok_or_else(|| anyhow::anyhow!("no message_delta"))?;
                assert!(delta.get("usage").is_none());
                assert_eq!(delta["delta"]["stop_reason"], "end_turn");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn wrong_type_serves_the_same_bytes_as_text_plain() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        for stream in [false, true] {
            let resp = api
                .send(&up, api.body("hi [[fake:wrong_type,words=3]]", stream))
                .await?;
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.headers()["content-type"],
                "text/plain; charset=utf-8",
                "{api:?} stream={stream}"
            );
            let raw = resp.text().await?;
            if stream {
                assert_eq!(api.streamed_text(&raw)?, "Hello from the");
                let usage = api
                    .final_usage(&raw)?
                    .ok_or_else(|| anyhow::anyhow!("no usage"))?;
                assert_eq!(api.output_tokens(&usage), Some(3));
            } else {
                let v: Value = serde_json::from_str(&raw)?;
                assert_eq!(api.text(&v).as_deref(), Some("Hello from the"));
                let usage = api.usage(&v).ok_or_else(|| anyhow::anyhow!("no usage"))?;
                assert_eq!(api.output_tokens(&usage), Some(3));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn no_terminator_sends_all_content_then_closes_cleanly() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        let resp = api
            .send(&up, api.body("hi [[fake:no_terminator,words=5]]", true))
            .await?;
        // Read to the end without a transport error: a clean close.
        let raw = resp.text().await?;
        assert_eq!(api.streamed_text(&raw)?, "Hello from the fake upstream,");
        let last_output = api.final_usage(&raw)?.and_then(|u| api.output_tokens(&u));
        // Only message_start's initial usage (output 1) is left of Anthropic's.
        let want = (api == Api::Messages).then_some(1);
        assert_eq!(last_output, want, "{api:?}: {raw}");
        let names: Vec<String> = sse_events(&raw)
            .into_iter()
            .map(|(e, d)| e.unwrap_or(d))
            .collect();
        match api {
            Api::Chat => {
                assert!(!raw.contains("[DONE]"));
                let events = json_events(&raw)?;
                assert_eq!(
                    events.last().map(|e| &e["choices"][0]["finish_reason"]),
                    Some(&json!("stop"))
                );
            }
            Api::Responses => {
                assert!(
                    !names.iter().any(|n| n == "response.completed"),
                    "{names:?}"
                );
                assert_eq!(
                    names.last().map(String::as_str),
                    Some("response.output_item.done")
                );
            }
            Api::Messages => {
                assert!(!names
                    .iter()
                    .any(|n| n == "message_delta" || n == "message_stop"));
                assert_eq!(names.last().map(String::as_str), Some("content_block_stop"));
            }
        }
    }
    let stats = wait_for_stats(&up, |s| s.streams_aborted == 3).await?;
    assert_eq!((stats.streams_completed, stats.streams_cancelled), (0, 0));
    Ok(())
}

#[tokio::test]
async fn cut_after_ends_every_format_with_a_transport_error() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        let resp = api
            .send(&up, api.body("hi [[fake:cut_after=3,words=10]]", true))
            .await?;
        let mut body = resp.bytes_stream();
        let mut received = Vec::new();
        let mut failed = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => received.extend_from_slice(&b),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "{api:?}: the body must end in an error");
        let raw = String::from_utf8(received)?;
        assert_eq!(api.content_events(&raw)?, 3, "{api:?}: {raw}");
        assert_eq!(
            api.final_usage(&raw)?.and_then(|u| api.output_tokens(&u)),
            match api {
                // message_start carries Anthropic's initial usage (output 1), nothing after.
                Api::Messages => Some(1),
                _ => None,
            }
        );
    }
    Ok(())
}

#[tokio::test]
async fn error_after_ends_every_format_with_its_error_event() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        let raw = api
            .send(&up, api.body("hi [[fake:error_after=2,words=10]]", true))
            .await?
            .text()
            .await?;
        assert_eq!(api.content_events(&raw)?, 2, "{api:?}");
        let events = json_events(&raw)?;
        let last = events.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
        match api {
            Api::Chat => assert_eq!(last["error"]["type"], "server_error"),
            Api::Responses => {
                assert_eq!(last["type"], "error");
                assert_eq!(last["code"], "server_error");
                let before = &events[events.len() - 2];
                let next = before["sequence_number"].as_u64().map(|n| n + 1);
                assert_eq!(last["sequence_number"].as_u64(), next, "{raw}");
            }
            Api::Messages => assert_eq!(last["error"]["type"], "overloaded_error"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn ignore_max_tokens_replies_in_full_and_reports_it() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        for stream in [false, true] {
            let mut body = api.body("hi [[fake:ignore_max_tokens,words=20]]", stream);
            // Responses takes no cap below 16.
            match api {
                Api::Chat => body["max_completion_tokens"] = json!(2),
                Api::Responses => body["max_output_tokens"] = json!(16),
                Api::Messages => body["max_tokens"] = json!(2),
            }
            let raw = api.send(&up, body).await?.text().await?;
            let (text, usage) = if stream {
                (api.streamed_text(&raw)?, api.final_usage(&raw)?)
            } else {
                let v: Value = serde_json::from_str(&raw)?;
                (api.text(&v).unwrap_or_default(), api.usage(&v))
            };
            assert!(
                text.starts_with("Hello from the fake upstream, a café"),
                "{api:?}: {text}"
            );
            assert_eq!(text.split_whitespace().count(), 20, "{api:?}: {text}");
            let usage = usage.ok_or_else(|| anyhow::anyhow!("no usage"))?;
            assert_eq!(api.output_tokens(&usage), Some(20), "{api:?} {stream}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn report_directives_set_absurd_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    let text = format!("hi [[fake:report_input={ABSURD},report_output={ABSURD},words=2]]");
    for api in APIS {
        for stream in [false, true] {
            let raw = api.send(&up, api.body(&text, stream)).await?.text().await?;
            let usage = if stream {
                api.final_usage(&raw)?
            } else {
                api.usage(&serde_json::from_str(&raw)?)
            };
            let usage = usage.ok_or_else(|| anyhow::anyhow!("no usage: {raw}"))?;
            assert_eq!(api.input_tokens(&usage), Some(ABSURD), "{api:?}: {raw}");
            assert_eq!(api.output_tokens(&usage), Some(ABSURD), "{api:?}");
            if api != Api::Messages {
                assert_eq!(usage["total_tokens"].as_u64(), Some(2 * ABSURD));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn endless_streams_run_until_the_client_leaves() -> anyhow::Result<()> {
    let up = spawn().await?;
    for (i, api) in APIS.into_iter().enumerate() {
        let resp = api
            .send(
                &up,
                api.body("hi [[fake:endless,chunk_ms=1,words=2]]", true),
            )
            .await?;
        let mut body = resp.bytes_stream();
        let mut raw = Vec::new();
        // Far more than the 2 words asked for, and past the 16-word cycle.
        while api.content_events(&complete_events(&raw))? < 40 {
            let chunk = body
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("{api:?} stream ended"))??;
            raw.extend_from_slice(&chunk);
        }
        let raw = complete_events(&raw);
        let text = api.streamed_text(&raw)?;
        assert!(text.starts_with("Hello from the fake upstream, a café of deterministic"));
        assert!(
            text.contains("token. Hello from the"),
            "{api:?}: the words cycle: {text}"
        );
        assert_eq!(
            api.final_usage(&raw)?.and_then(|u| api.output_tokens(&u)),
            match api {
                Api::Messages => Some(1),
                _ => None,
            }
        );
        if api == Api::Responses {
            let seqs: Vec<u64> = json_events(&raw)?
                .iter()
                .filter_map(|e| e["sequence_number"].as_u64())
                .collect();
            assert!(
                seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
                "{seqs:?}"
            );
        }
        drop(body);
        wait_for_stats(&up, |s| s.streams_cancelled == i as u64 + 1).await?;
    }
    assert_eq!(up.stats().streams_completed, 0);
    Ok(())
}

/// The complete SSE events of a partial stream.
fn complete_events(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    match s.rfind("\n\n") {
        Some(at) => s[..at + 2].to_string(),
        None => String::new(),
    }
}

#[tokio::test]
async fn endless_json_bodies_never_finish() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        let resp = api
            .send(
                &up,
                api.body("hi [[fake:endless,chunk_ms=1,words=2]]", false),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let mut body = resp.bytes_stream();
        let mut raw = Vec::new();
        while raw.len() < 24 * 1024 {
            let chunk = body
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("{api:?}: the body ended"))??;
            raw.extend_from_slice(&chunk);
        }
        let raw = String::from_utf8(raw)?;
        assert!(raw.starts_with('{'), "{api:?}");
        assert!(raw.contains("Hello from pad pad pad"), "{api:?}");
        assert!(
            !raw.contains("\"usage\""),
            "{api:?}: usage comes after the text"
        );
    }
    Ok(())
}

#[tokio::test]
async fn pad_bytes_pads_the_text_and_keeps_usage_last() -> anyhow::Result<()> {
    let up = spawn().await?;
    let n: u64 = 1_000_003;
    for api in APIS {
        let body = api.body(&format!("hi [[fake:pad_bytes={n},words=3]]"), false);
        let raw = api.send(&up, body).await?.text().await?;
        let v: Value = serde_json::from_str(&raw)?;
        let text = api.text(&v).ok_or_else(|| anyhow::anyhow!("no text"))?;
        let base = "Hello from the";
        assert_eq!(text.len() as u64, base.len() as u64 + n, "{api:?}");
        assert!(text.starts_with("Hello from the pad pad"));
        assert!(text.ends_with(" pad pa"), "{api:?}: {n} % 4 = 3");
        let usage = api.usage(&v).ok_or_else(|| anyhow::anyhow!("no usage"))?;
        assert_eq!(api.output_tokens(&usage), Some(3 + n.div_ceil(4)));
        let usage_at = raw
            .rfind("\"usage\"")
            .ok_or_else(|| anyhow::anyhow!("no usage"))?;
        let text_end = raw
            .rfind(" pad pa")
            .ok_or_else(|| anyhow::anyhow!("no pad"))?;
        assert!(usage_at > text_end, "{api:?}: usage after the content");

        let resp = api
            .send(&up, api.body("[[fake:pad_bytes=10]]", true))
            .await?;
        assert_eq!(resp.status(), 400, "{api:?}: padding is for plain answers");
    }
    Ok(())
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad VmRSS"))?
        .parse()?)
}

#[tokio::test]
async fn a_padded_gigabyte_is_never_held_in_memory() -> anyhow::Result<()> {
    let up = spawn().await?;
    let n: u64 = 1 << 30;
    let before = rss_kib()?;
    let body = Api::Chat.body(&format!("hi [[fake:pad_bytes={n},words=1]]"), false);
    let resp = Api::Chat.send(&up, body).await?;
    let mut stream = resp.bytes_stream();
    let mut len = 0u64;
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(1024);
        tail.drain(..keep);
    }
    let after = rss_kib()?;
    assert!(len > n, "{len}");
    let tail = String::from_utf8_lossy(&tail);
    let usage = format!("\"completion_tokens\": {}", 1 + n / 4);
    assert!(tail.contains(&usage), "{tail}");
    // Client and fake share this process: neither held the body.
    assert!(
        after < before + 128 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    Ok(())
}

#[tokio::test]
async fn echo_headers_quotes_the_secrets_in_the_error() -> anyhow::Result<()> {
    let up = spawn().await?;
    let resp = crate::client()
        .post(format!("{}/chat/completions", up.base_url()))
        .bearer_auth("sk-proj-SECRET123")
        .json(&Api::Chat.body("x [[fake:status=400,echo_headers]]", false))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("authorization: Bearer sk-proj-SECRET123"),
        "{message}"
    );
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let resp = crate::client()
        .post(format!("{}/messages", up.base_url()))
        .header("x-api-key", "sk-ant-SECRET456")
        .header("anthropic-version", "2023-06-01")
        .json(&Api::Messages.body("x [[fake:status=422,echo_headers]]", false))
        .send()
        .await?;
    assert_eq!(resp.status(), 422);
    let v: Value = resp.json().await?;
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("x-api-key: sk-ant-SECRET456"), "{message}");
    assert!(
        message.contains("anthropic-version: 2023-06-01"),
        "{message}"
    );
    // Without the flag the headers stay out.
    let resp = Api::Chat
        .send(&up, Api::Chat.body("x [[fake:status=400]]", false))
        .await?;
    assert!(!resp.text().await?.contains("headers"));
    Ok(())
}

#[tokio::test]
async fn trickle_writes_json_and_streams_sixteen_bytes_at_a_time() -> anyhow::Result<()> {
    let up = spawn().await?;
    for api in APIS {
        for stream in [false, true] {
            let body = api
                .body("hi [[fake:trickle_ms=1,words=3]]", stream)
                .to_string();
            let headers: &[(&str, &str)] = match api {
                Api::Messages => &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
                _ => &[],
            };
            let raw = raw_http(&up, api.path(), headers, &body).await?;
            let (head, sizes, body) = dechunk(&raw)?;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(sizes.len() > 8, "{api:?}: {sizes:?}");
            assert!(sizes.iter().all(|s| *s <= 16), "{api:?}: {sizes:?}");
            let text = if stream {
                api.streamed_text(&body)?
            } else {
                api.text(&serde_json::from_str(&body)?).unwrap_or_default()
            };
            assert_eq!(text, "Hello from the", "{api:?}");
        }
    }
    Ok(())
}
