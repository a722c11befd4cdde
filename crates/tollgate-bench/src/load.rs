//! This crate's own open-loop client, for what oha cannot do: time to first byte of a
//! stream, a different key on each request, and thousands of streams held open.
//!
//! Open loop: request i is sent at start + i / rate whatever happened to the others
//! (each in its own task, on its own connection when needed), so a slow server cannot
//! slow the sending down. Like oha's `--latency-correction`, latency runs from the
//! moment the request was released by the schedule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::report::Latency;

/// An open-loop run.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub url: String,
    pub body: Bytes,
    /// `Authorization` values; request i uses the first (hot) one when i is even, and
    /// one of the others (cold) in turn when i is odd. A single value is used always.
    pub keys: Vec<String>,
    pub rate: f64,
    pub duration: Duration,
}

/// What an open-loop run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Time to the first body byte.
    pub first_byte: Latency,
    /// Time to the end of the body.
    pub total: Latency,
    pub requests_per_second: f64,
    pub completed: u64,
    pub failed: u64,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 2 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    if h.is_empty() {
        return Latency {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: f64::NAN,
        };
    }
    Latency {
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
    }
}

pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(8192)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()?)
}

fn key_for(keys: &[String], i: u64) -> &str {
    match keys.len() {
        0 => "",
        1 => &keys[0],
        _ if i.is_multiple_of(2) => &keys[0],
        n => &keys[1 + ((i / 2) % (n as u64 - 1)) as usize],
    }
}

/// Runs an open loop and waits for every request to finish.
pub async fn open_loop(client: &reqwest::Client, run: &OpenLoop) -> anyhow::Result<LoadResult> {
    let first_byte = Arc::new(Mutex::new(histogram()));
    let total = Arc::new(Mutex::new(histogram()));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let count = (run.rate * run.duration.as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / run.rate)).await;
        let sent = Instant::now();
        let request = client
            .post(&run.url)
            .header("authorization", key_for(&run.keys, i))
            .header("content-type", "application/json")
            .body(run.body.clone());
        let (first_byte, total, completed, failed) = (
            first_byte.clone(),
            total.clone(),
            completed.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let ok = async {
                let mut response = request.send().await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let mut first = None;
                while let Some(chunk) = response.chunk().await.ok()? {
                    if first.is_none() && !chunk.is_empty() {
                        first = Some(sent.elapsed());
                    }
                }
                Some((first.unwrap_or_else(|| sent.elapsed()), sent.elapsed()))
            }
            .await;
            match ok {
                Some((ttfb, done)) => {
                    if let Ok(mut h) = first_byte.lock() {
                        let _ = h.record(ttfb.as_micros().max(1) as u64);
                    }
                    if let Ok(mut h) = total.lock() {
                        let _ = h.record(done.as_micros().max(1) as u64);
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let first_byte = first_byte
        .lock()
        .map(|h| latency_of(&h))
        .unwrap_or_else(|_| latency_of(&histogram()));
    let total = total
        .lock()
        .map(|h| latency_of(&h))
        .unwrap_or_else(|_| latency_of(&histogram()));
    let completed = completed.load(Ordering::Relaxed);
    Ok(LoadResult {
        first_byte,
        total,
        requests_per_second: completed as f64 / elapsed,
        completed,
        failed: failed.load(Ordering::Relaxed),
    })
}

/// Streams held open at once.
pub struct Held {
    /// Streams that delivered their first byte.
    pub opened: u64,
    pub failed: u64,
    /// Time until the last of them opened.
    pub open_seconds: f64,
    release: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    /// Disconnects every stream (the client goes away) and waits for the tasks.
    pub async fn release(self) {
        let _ = self.release.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens `count` streams at `rate` per second and keeps reading them until released;
/// returns once all of them delivered a first byte (or failed), or after `limit`.
pub async fn hold_streams(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    key: &str,
    count: u64,
    rate: f64,
    limit: Duration,
) -> Held {
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let request = client
            .post(url)
            .header("authorization", key)
            .header("content-type", "application/json")
            .body(body.clone());
        let (opened, failed) = (opened.clone(), failed.clone());
        let mut released = released.clone();
        tasks.push(tokio::spawn(async move {
            let mut response = match request.send().await {
                Ok(r) if r.status().is_success() => r,
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut first = true;
            loop {
                tokio::select! {
                    _ = released.changed() => return,
                    chunk = response.chunk() => match chunk {
                        Ok(Some(c)) if !c.is_empty() => {
                            if first {
                                first = false;
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            if first {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            // Ended early: wait for the release like the others.
                            let _ = released.changed().await;
                            return;
                        }
                    }
                }
            }
        }));
    }
    let deadline = start + limit;
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < count
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Held {
        opened: opened.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        open_seconds: start.elapsed().as_secs_f64(),
        release,
        tasks,
    }
}
