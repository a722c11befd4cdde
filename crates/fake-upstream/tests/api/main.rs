//! Integration tests: a real fake upstream on loopback, called over HTTP.

mod anthropic;
mod betas;
mod chat;
mod control;
mod faults;
mod formats;
mod misbehave;
mod other;
mod priced;
mod responses;
mod transcribe;

use std::time::Duration;

use fake_upstream::{FakeUpstream, Options, Stats};
use serde_json::Value;

/// A fresh fake upstream with default options.
pub async fn spawn() -> anyhow::Result<FakeUpstream> {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(opts: Options) -> anyhow::Result<FakeUpstream> {
    fake_upstream::start(opts).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs JSON to `path` under the base URL.
pub async fn post(up: &FakeUpstream, path: &str, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(client()
        .post(format!("{}{path}", up.base_url()))
        .json(&body)
        .send()
        .await?)
}

/// POSTs to `/messages` with Anthropic's headers.
pub async fn post_anthropic(up: &FakeUpstream, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(client()
        .post(format!("{}/messages", up.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await?)
}

/// A chat request whose only user message is `text`.
pub fn chat_request(text: &str) -> Value {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

/// SSE events as (event name, data).
pub fn sse_events(raw: &str) -> Vec<(Option<String>, String)> {
    raw.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_string());
                }
            }
            data.map(|d| (event, d))
        })
        .collect()
}

/// Parses the data of each event as JSON (all must be JSON).
pub fn json_events(raw: &str) -> anyhow::Result<Vec<Value>> {
    sse_events(raw)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| Ok(serde_json::from_str(&d)?))
        .collect()
}

/// Waits until the stats satisfy `pred`, or fails after 5 s.
pub async fn wait_for_stats(
    up: &FakeUpstream,
    pred: impl Fn(&Stats) -> bool,
) -> anyhow::Result<Stats> {
    for _ in 0..250 {
        let s = up.stats();
        if pred(&s) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("stats never matched: {:?}", up.stats())
}

/// Sends one raw HTTP/1.1 request (`Connection: close`) and returns every byte of the
/// response, chunked framing included.
pub async fn raw_http(
    up: &FakeUpstream,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(up.addr()).await?;
    let mut req = format!(
        "POST /v1{path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n",
        up.addr(),
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await?;
    Ok(out)
}

fn split_at_crlf(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = b.windows(2).position(|w| w == b"\r\n")?;
    Some((&b[..at], &b[at + 2..]))
}

/// The head of a raw response, the sizes of its body's chunks, and the body.
pub fn dechunk(raw: &[u8]) -> anyhow::Result<(String, Vec<usize>, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end"))?;
    let head = String::from_utf8(raw[..end].to_vec())?;
    let mut rest = &raw[end + 4..];
    let mut sizes = Vec::new();
    let mut body = Vec::new();
    loop {
        let (line, after) = split_at_crlf(rest).ok_or_else(|| anyhow::anyhow!("no size line"))?;
        let size = usize::from_str_radix(std::str::from_utf8(line)?.trim(), 16)?;
        if size == 0 {
            break;
        }
        body.extend_from_slice(after.get(..size).ok_or_else(|| anyhow::anyhow!("short"))?);
        sizes.push(size);
        rest = after
            .get(size + 2..)
            .ok_or_else(|| anyhow::anyhow!("no chunk end"))?;
    }
    Ok((head, sizes, String::from_utf8(body)?))
}
