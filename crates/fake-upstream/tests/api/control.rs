//! Faults on command for routing tests: the Rust API and the HTTP control paths,
//! counted per instance; refused connections with the port closed and re-bound.

use std::time::{Duration, Instant};

use fake_upstream::{FakeUpstream, Fault};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::formats::Api;
use crate::{chat_request, client, post, post_anthropic, spawn, wait_for_stats};

async fn chat(up: &FakeUpstream) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{}/chat/completions", up.base_url()))
        .json(&chat_request("hi [[fake:words=2]]"))
        .send()
        .await
}

/// True when nothing listens on the fake's port.
async fn refused(up: &FakeUpstream) -> bool {
    matches!(
        tokio::net::TcpStream::connect(up.addr()).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn eventually<F, Fut>(mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if cond().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("condition never held")
}

#[tokio::test]
async fn status_fault_answers_the_next_n_requests_in_the_providers_shape() -> anyhow::Result<()> {
    let up = spawn().await?;
    let status = Fault::Status {
        status: 503,
        retry_after: Some(2),
    };
    up.faults().next(2, status).await?;
    let resp = chat(&up).await?;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "server_error");
    let resp = post_anthropic(&up, Api::Messages.body("hi", false)).await?;
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await?;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert_eq!(chat(&up).await?.status(), 200);
    let stats = up.stats();
    assert_eq!((stats.requests, stats.faulted), (3, 2));
    assert_eq!(up.received().len(), 3);
    let by = up.requests_by_endpoint();
    assert_eq!(by.get("/v1/chat/completions"), Some(&2));
    assert_eq!(by.get("/v1/messages"), Some(&1));

    up.faults()
        .next(
            1,
            Fault::Status {
                status: 429,
                retry_after: None,
            },
        )
        .await?;
    let resp = chat(&up).await?;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    Ok(())
}

#[tokio::test]
async fn reset_and_first_byte_faults() -> anyhow::Result<()> {
    let up = spawn().await?;
    up.faults().next(1, Fault::Reset).await?;
    let err = chat(&up)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("reset gave a response"))?;
    assert!(err.is_request() && err.status().is_none(), "{err:?}");
    assert_eq!(chat(&up).await?.status(), 200);

    up.faults()
        .for_duration(
            Duration::from_secs(60),
            Fault::FirstByte(Duration::from_millis(200)),
        )
        .await?;
    let start = Instant::now();
    assert_eq!(chat(&up).await?.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    up.faults().clear().await?;
    assert_eq!(up.stats().faulted, 2);
    Ok(())
}

#[tokio::test]
async fn a_timed_fault_ends_by_itself() -> anyhow::Result<()> {
    let up = spawn().await?;
    let fault = Fault::Status {
        status: 500,
        retry_after: None,
    };
    up.faults()
        .for_duration(Duration::from_millis(300), fault)
        .await?;
    assert_eq!(chat(&up).await?.status(), 500);
    eventually(|| async { chat(&up).await.is_ok_and(|r| r.status() == 200) }).await?;
    Ok(())
}

#[tokio::test]
async fn refuse_closes_the_port_and_rebinds_it() -> anyhow::Result<()> {
    let up = spawn().await?;
    let addr = up.addr();
    // An open stream dies with the listener, as on a crashed host.
    let mut body = chat_request("hi [[fake:endless,chunk_ms=5]]");
    body["stream"] = json!(true);
    let mut stream = post(&up, "/chat/completions", body).await?.bytes_stream();
    stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no first chunk"))??;

    up.faults()
        .for_duration(Duration::from_millis(500), Fault::Refuse)
        .await?;
    assert!(refused(&up).await, "the port is closed");
    let err = chat(&up)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("served while refusing"))?;
    assert!(err.is_connect(), "{err:?}");
    let mut ended = false;
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the open stream was reset");
    eventually(|| async { chat(&up).await.is_ok_and(|r| r.status() == 200) }).await?;
    assert_eq!(up.addr(), addr);
    // Refused connections never reached the fake: one stream, one success.
    assert_eq!(up.stats().requests, 2);

    assert!(up.faults().next(1, Fault::Refuse).await.is_err());
    // clear() ends a refusal at once.
    up.faults()
        .for_duration(Duration::from_secs(3600), Fault::Refuse)
        .await?;
    assert!(refused(&up).await);
    up.faults().clear().await?;
    assert_eq!(chat(&up).await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn stop_and_restart_on_the_same_port() -> anyhow::Result<()> {
    let up = spawn().await?;
    let c = client();
    let url = format!("{}/chat/completions", up.base_url());
    let send = || c.post(&url).json(&chat_request("hi")).send();
    assert_eq!(send().await?.status(), 200);
    up.stop().await;
    assert!(refused(&up).await);
    // The pooled keep-alive connection is gone too.
    assert!(send().await.is_err());
    up.restart().await?;
    up.restart().await?;
    assert_eq!(send().await?.status(), 200);
    assert_eq!(up.stats().requests, 2);
    Ok(())
}

#[tokio::test]
async fn faults_on_one_instance_leave_the_other_alone() -> anyhow::Result<()> {
    let (a, b) = (spawn().await?, spawn().await?);
    a.faults()
        .for_duration(
            Duration::from_secs(60),
            Fault::Status {
                status: 502,
                retry_after: None,
            },
        )
        .await?;
    for _ in 0..3 {
        assert_eq!(chat(&a).await?.status(), 502);
        assert_eq!(chat(&b).await?.status(), 200);
    }
    assert_eq!((a.stats().requests, a.stats().faulted), (3, 3));
    assert_eq!((b.stats().requests, b.stats().faulted), (3, 0));
    Ok(())
}

async fn control(
    up: &FakeUpstream,
    method: reqwest::Method,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = client().request(method, format!("{}/__fake/faults", up.root_url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[tokio::test]
async fn http_control_sets_clears_and_reports() -> anyhow::Result<()> {
    let up = spawn().await?;
    let post_m = reqwest::Method::POST;
    let (code, _) = control(
        &up,
        post_m.clone(),
        Some(json!({"fault": "status", "status": 503, "retry_after": 7, "count": 2})),
    )
    .await?;
    assert_eq!(code, 200);
    for _ in 0..2 {
        let resp = chat(&up).await?;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "7");
    }
    assert_eq!(chat(&up).await?.status(), 200);

    control(
        &up,
        post_m.clone(),
        Some(json!({"fault": "reset", "for_ms": 600000})),
    )
    .await?;
    assert!(chat(&up).await.is_err());
    let (code, _) = control(&up, reqwest::Method::DELETE, None).await?;
    assert_eq!(code, 200);
    assert_eq!(chat(&up).await?.status(), 200);

    control(
        &up,
        post_m.clone(),
        Some(json!({"fault": "first_byte", "ms": 150, "count": 1})),
    )
    .await?;
    let start = Instant::now();
    assert_eq!(chat(&up).await?.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));

    for bad in [
        json!({"fault": "refuse", "for_ms": 100}),
        json!({"fault": "status", "count": 1}),
        json!({"fault": "status", "status": 200, "count": 1}),
        json!({"fault": "reset"}),
        json!({"fault": "reset", "count": 1, "for_ms": 5}),
        json!({"fault": "boom", "count": 1}),
        json!({"fault": "reset", "count": 1, "extra": 1}),
    ] {
        let (code, v) = control(&up, post_m.clone(), Some(bad.clone())).await?;
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    post(&up, "/embeddings", json!({"model": "m", "input": "x"})).await?;

    let stats: Value = client()
        .get(format!("{}/__fake/stats", up.root_url()))
        .send()
        .await?
        .json()
        .await?;
    // 6 chat requests (503, 503, 200, reset, 200, slow 200) and one embeddings; the
    // control calls are not counted.
    assert_eq!(stats["requests"], 7);
    assert_eq!(stats["faulted"], 4);
    assert_eq!(
        stats["endpoints"],
        json!({"/v1/chat/completions": 6, "/v1/embeddings": 1})
    );
    assert_eq!(up.stats().requests, 7);
    assert_eq!(up.received().len(), 7);
    wait_for_stats(&up, |s| s.faulted == 4).await?;
    Ok(())
}

#[tokio::test]
async fn faults_work_in_fast_mode() -> anyhow::Result<()> {
    let up = crate::spawn_with(fake_upstream::Options {
        fast: true,
        ..fake_upstream::Options::default()
    })
    .await?;
    up.faults()
        .next(
            1,
            Fault::Status {
                status: 529,
                retry_after: None,
            },
        )
        .await?;
    let resp = post_anthropic(&up, Api::Messages.body("hi", false)).await?;
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "overloaded_error");
    let resp = post_anthropic(&up, Api::Messages.body("hi", false)).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!((up.stats().requests, up.stats().faulted), (2, 1));
    Ok(())
}
