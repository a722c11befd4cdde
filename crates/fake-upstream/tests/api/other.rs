//! Embeddings, images, audio, moderations, models, keys, fast mode, recording.

use fake_upstream::Options;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::{chat_request, client, json_events, post, spawn, spawn_with};

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body =
        json!({"model": "text-embedding-3-small", "input": ["one two", "three"], "dimensions": 8});
    let a: Value = post(&up, "/embeddings", body.clone()).await?.json().await?;
    let b: Value = post(&up, "/embeddings", body).await?.json().await?;
    assert_eq!(a, b);
    assert_eq!(a["object"], "list");
    assert_eq!(a["data"].as_array().map(Vec::len), Some(2));
    let v: Vec<f64> = a["data"][0]["embedding"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no vector"))?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(v.len(), 8);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
    assert_eq!(a["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    let body = json!({"model": "text-embedding-3-large", "input": [[1, 2, 3, 4]], "encoding_format": "base64"});
    let v: Value = post(&up, "/embeddings", body).await?.json().await?;
    let b64 = v["data"][0]["embedding"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("not base64"))?;
    // 3072 little-endian f32s = 12288 bytes = 16384 base64 characters.
    assert_eq!(b64.len(), 16_384);
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    Ok(())
}

#[tokio::test]
async fn images_return_png_and_gpt_image_usage() -> anyhow::Result<()> {
    let up = spawn().await?;
    let body = json!({"model": "gpt-image-1", "prompt": "a red cat", "n": 2, "quality": "low"});
    let v: Value = post(&up, "/images/generations", body).await?.json().await?;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    assert!(v["data"][0]["b64_json"]
        .as_str()
        .is_some_and(|s| s.starts_with("iVBORw0KGgo")));
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], 2 * 272);

    let body = json!({"model": "dall-e-3", "prompt": "a red cat", "response_format": "url"});
    let v: Value = post(&up, "/images/generations", body).await?.json().await?;
    assert!(v["data"][0]["url"].is_string());
    assert!(v.get("usage").is_none());
    Ok(())
}

#[tokio::test]
async fn speech_streams_audio_of_deterministic_length() -> anyhow::Result<()> {
    let up = spawn().await?;
    let input = "hello there";
    let body = json!({"model": "tts-1", "voice": "alloy", "input": input});
    let resp = post(&up, "/audio/speech", body).await?;
    assert_eq!(resp.headers()["content-type"], "audio/mpeg");
    let mut chunks = 0;
    let mut len = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        len += chunk?.len();
        chunks += 1;
    }
    assert_eq!(len, 1024 + 64 * input.len());
    assert!(chunks >= 1);
    assert_eq!(up.stats().streams_started, 1);
    Ok(())
}

#[tokio::test]
async fn transcription_counts_a_streamed_upload() -> anyhow::Result<()> {
    let up = spawn().await?;
    // 1 MB sent in 64 KiB pieces, never as one buffer.
    let pieces = (0..16).map(|_| Ok::<_, std::io::Error>(vec![7u8; 65_536]));
    let total = 16 * 65_536u64;
    let file = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)),
        total,
    )
    .file_name("speech.wav")
    .mime_str("audio/wav")?;
    let form = reqwest::multipart::Form::new()
        .part("file", file)
        .text("model", "whisper-1")
        .text("prompt", "names: Ana [[fake:words=3]]");
    let resp = client()
        .post(format!("{}/audio/transcriptions", up.base_url()))
        .multipart(form)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await?;
    assert_eq!(v["text"], "Hello from the");
    assert_eq!(
        v["usage"],
        json!({"type": "duration", "seconds": total.div_ceil(16_000)})
    );
    let rec = up.received();
    assert_eq!(rec.len(), 1);
    assert!(rec[0].body.is_empty());
    assert!(rec[0].body_len > total);

    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![0u8; 100]).file_name("a.mp3"),
        )
        .text("model", "whisper-1")
        .text("response_format", "text");
    let resp = client()
        .post(format!("{}/audio/translations", up.base_url()))
        .multipart(form)
        .send()
        .await?;
    assert_eq!(
        resp.text().await?,
        "Hello from the fake upstream, a café of deterministic words for tests\n"
    );
    Ok(())
}

#[tokio::test]
async fn moderations_and_models() -> anyhow::Result<()> {
    let up = spawn().await?;
    let v: Value = post(
        &up,
        "/moderations",
        json!({"input": ["fine", "rude [[fake:flagged]]"]}),
    )
    .await?
    .json()
    .await?;
    assert_eq!(v["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["results"][0]["flagged"], true);
    assert_eq!(v["results"][0]["categories"]["harassment"], true);

    let v: Value = client()
        .get(format!("{}/models", up.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().is_some_and(|d| !d.is_empty()));
    Ok(())
}

#[tokio::test]
async fn openai_key_is_required_when_configured() -> anyhow::Result<()> {
    let up = spawn_with(Options {
        openai_api_key: Some("sk-right".into()),
        ..Options::default()
    })
    .await?;
    let resp = post(&up, "/chat/completions", chat_request("hi")).await?;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let url = format!("{}/chat/completions", up.base_url());
    let resp = client()
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&chat_request("hi"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let resp = client()
        .post(&url)
        .bearer_auth("sk-right")
        .json(&chat_request("hi"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

#[tokio::test]
async fn received_records_method_path_headers_and_body() -> anyhow::Result<()> {
    let up = spawn().await?;
    client()
        .post(format!("{}/chat/completions", up.base_url()))
        .header("X-Custom", "yes")
        .json(&chat_request("hi"))
        .send()
        .await?;
    let rec = up.received();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].method, "POST");
    assert_eq!(rec[0].path, "/v1/chat/completions");
    assert_eq!(rec[0].header("x-custom"), Some("yes"));
    assert_eq!(rec[0].json(), Some(chat_request("hi")));
    assert_eq!(up.stats().requests, 1);
    Ok(())
}

#[tokio::test]
async fn fast_mode_serves_canned_answers() -> anyhow::Result<()> {
    let up = spawn_with(Options {
        fast: true,
        ..Options::default()
    })
    .await?;
    let v: Value = post(&up, "/chat/completions", chat_request("anything"))
        .await?
        .json()
        .await?;
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));

    let mut body = chat_request("anything");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let raw = post(&up, "/chat/completions", body).await?.text().await?;
    assert!(raw.ends_with("data: [DONE]\n\n"));
    let chunks = json_events(&raw)?;
    assert!(chunks.len() >= 10);
    assert!(chunks
        .last()
        .is_some_and(|c| c["usage"]["total_tokens"].is_u64()));

    let mut body = chat_request("anything");
    body["stream"] = json!(true);
    let raw = post(&up, "/chat/completions", body).await?.text().await?;
    assert!(!raw.contains("\"usage\""));

    let resp = client()
        .post(format!("{}/messages", up.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"m","max_tokens":64,"stream": true,"messages":[]}"#)
        .send()
        .await?;
    assert!(resp.text().await?.contains("event: message_stop"));
    let v: Value = post(&up, "/embeddings", json!({"model": "m", "input": "x"}))
        .await?
        .json()
        .await?;
    assert_eq!(v["object"], "list");

    assert_eq!(up.stats().requests, 5);
    assert!(up.received().is_empty());
    Ok(())
}

/// A real provider never reports more output than the request's cap allows: in fast
/// mode too, a cap below the canned answer gets an answer that obeys it.
#[tokio::test]
async fn fast_mode_obeys_a_small_output_cap() -> anyhow::Result<()> {
    let up = spawn_with(Options {
        fast: true,
        ..Options::default()
    })
    .await?;
    let canned: Value = post(&up, "/chat/completions", chat_request("anything"))
        .await?
        .json()
        .await?;
    let full = canned["usage"]["completion_tokens"]
        .as_u64()
        .expect("tokens");
    assert!(full > 3, "the canned answer is longer than the cap below");
    for cap in ["max_tokens", "max_completion_tokens"] {
        let mut body = chat_request("anything");
        body[cap] = json!(3);
        let v: Value = post(&up, "/chat/completions", body).await?.json().await?;
        assert_eq!(v["usage"]["completion_tokens"], 3, "{cap}: {v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{cap}");
    }
    // The Responses API takes no cap below 16, and obeys one of 16.
    let refused = post(
        &up,
        "/responses",
        json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 3}),
    )
    .await?;
    assert_eq!(refused.status(), 400);
    let v: Value = refused.json().await?;
    assert_eq!(v["error"]["code"], "integer_below_min_value", "{v}");
    assert_eq!(v["error"]["param"], "max_output_tokens", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let v: Value = post(
        &up,
        "/responses",
        json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16}),
    )
    .await?
    .json()
    .await?;
    let output = v["usage"]["output_tokens"].as_u64().expect("output tokens");
    assert!((1..=16).contains(&output), "{v}");
    let v: Value = client()
        .post(format!("{}/messages", up.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"claude-haiku-4-5","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["usage"]["output_tokens"], 2, "{v}");
    assert_eq!(v["stop_reason"], "max_tokens");
    Ok(())
}
