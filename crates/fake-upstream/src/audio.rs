//! `POST /v1/audio/speech` (binary audio, streamed) and the multipart uploads
//! `/v1/audio/transcriptions` and `/v1/audio/translations` (files counted as they
//! stream, never held).

use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::content::{self, PlanInput};
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::stream::{self, Frame};
use crate::Shared;

/// Audio bytes per streamed chunk.
const AUDIO_CHUNK: usize = 1024;
/// Longest speech input, as OpenAI's.
const MAX_SPEECH_CHARS: usize = 4096;
/// Upload bytes per second of audio, for the duration the fake reports.
const BYTES_PER_SECOND: u64 = 16_000;

pub(crate) async fn speech(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run_speech(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

fn bad(message: &str, param: &str) -> Response {
    error::bad_request(Flavor::OpenAi, message, Some(param))
}

/// Container magic and content type of each `response_format`.
fn audio_format(format: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match format {
        "mp3" => (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
        "opus" => (b"OggS", "audio/ogg"),
        "aac" => (b"\xFF\xF1", "audio/aac"),
        "flac" => (b"fLaC", "audio/flac"),
        "wav" => (b"RIFF\x00\x00\x00\x00WAVE", "audio/wav"),
        "pcm" => (b"", "audio/pcm"),
        _ => return None,
    })
}

/// `1024 + 64 × chars(input)` deterministic bytes, starting with the format's magic.
fn audio_bytes(input: &str, magic: &[u8]) -> Vec<u8> {
    let len = 1024 + 64 * input.chars().count();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&magic[..magic.len().min(len)]);
    let mut i = out.len();
    while out.len() < len {
        out.push(((i * 31 + 7) % 251) as u8);
        i += 1;
    }
    out
}

async fn run_speech(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    let req = http::parse_json(Flavor::OpenAi, body)?;
    http::require_model(Flavor::OpenAi, &req)?;
    let Some(input) = req.get("input").and_then(Value::as_str) else {
        return Err(bad("Missing required parameter: 'input'.", "input"));
    };
    if input.chars().count() > MAX_SPEECH_CHARS {
        return Err(bad(
            "string too long. Expected a string with maximum length 4096.",
            "input",
        ));
    }
    if req.get("voice").is_none() {
        return Err(bad("Missing required parameter: 'voice'.", "voice"));
    }
    let format = req
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("mp3");
    let Some((magic, content_type)) = audio_format(format) else {
        return Err(bad(
            "Invalid value for 'response_format': must be mp3, opus, aac, flac, wav or pcm.",
            "response_format",
        ));
    };
    let dirs = http::directives(Flavor::OpenAi, [input])?;
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if dirs.malformed {
        return Ok(http::malformed());
    }
    let audio = Bytes::from(audio_bytes(input, magic));
    let frames = (0..audio.len())
        .step_by(AUDIO_CHUNK)
        .map(|start| Frame::content(audio.slice(start..(start + AUDIO_CHUNK).min(audio.len()))))
        .collect();
    // Binary audio has no in-stream error format: `error_after` cuts like `cut_after`.
    let fault = dirs
        .cut_after
        .or(dirs.error_after)
        .map(stream::Fault::CutAfter);
    let delay = dirs.chunk_delay.unwrap_or(s.opts.chunk_delay);
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        stream::body(s.clone(), frames, delay, fault),
    )
        .into_response())
}

pub(crate) async fn transcriptions(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match run_upload(&s, req, "transcribe").await {
        Ok(r) | Err(r) => r,
    }
}

pub(crate) async fn translations(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match run_upload(&s, req, "translate").await {
        Ok(r) | Err(r) => r,
    }
}

/// The fields of an upload; the file is only counted.
#[derive(Default)]
struct Upload {
    file_bytes: Option<u64>,
    model: Option<String>,
    prompt: Option<String>,
    response_format: Option<String>,
    language: Option<String>,
}

fn multipart_error(e: impl std::fmt::Display) -> Response {
    error::openai(
        StatusCode::BAD_REQUEST,
        &format!("Could not parse multipart form: {e}"),
        None,
        None,
    )
}

async fn read_upload(mut form: Multipart) -> Result<Upload, Response> {
    let mut up = Upload::default();
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                let mut n = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    n += chunk.len() as u64;
                }
                up.file_bytes = Some(n);
            }
            "model" | "prompt" | "response_format" | "language" => {
                let text = field.text().await.map_err(multipart_error)?;
                let slot = match name.as_str() {
                    "model" => &mut up.model,
                    "prompt" => &mut up.prompt,
                    "response_format" => &mut up.response_format,
                    _ => &mut up.language,
                };
                *slot = Some(text);
            }
            _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
        }
    }
    Ok(up)
}

async fn run_upload(
    s: &Arc<Shared>,
    req: Request,
    task: &'static str,
) -> Result<Response, Response> {
    let (parts, body) = req.into_parts();
    let ctx = Ctx::from_parts(&parts);
    http::check_openai_key(s, &ctx)?;
    let form = Multipart::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|e| multipart_error(e.body_text()))?;
    let up = read_upload(form).await?;
    let Some(file_bytes) = up.file_bytes else {
        return Err(bad("Missing required parameter: 'file'.", "file"));
    };
    if up.model.as_deref().is_none_or(str::is_empty) {
        return Err(error::openai(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            None,
            None,
        ));
    }
    let format = up.response_format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "text" | "verbose_json" | "srt" | "vtt") {
        return Err(bad(
            "Invalid value for 'response_format': must be json, text, srt, verbose_json or vtt.",
            "response_format",
        ));
    }
    let dirs = http::directives(Flavor::OpenAi, up.prompt.as_deref())?;
    if let Some(r) = http::prelude(s, &ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if dirs.malformed {
        return Ok(http::malformed());
    }
    let seconds = file_bytes.div_ceil(BYTES_PER_SECOND);
    let text = content::plan(
        PlanInput {
            words: dirs.words,
            ..PlanInput::default()
        },
        String::new,
    )
    .text();
    let usage = DurationUsage {
        kind: "duration",
        seconds,
    };
    let plain = |body: String| {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    };
    Ok(match format {
        "text" => plain(format!("{text}\n")),
        "srt" => plain(format!(
            "1\n00:00:00,000 --> {}\n{text}\n\n",
            timestamp(seconds, ',')
        )),
        "vtt" => plain(format!(
            "WEBVTT\n\n00:00:00.000 --> {}\n{text}\n\n",
            timestamp(seconds, '.')
        )),
        "verbose_json" => http::json_bytes(http::pretty(&Verbose {
            task,
            language: up.language.as_deref().unwrap_or("english"),
            duration: seconds as f64,
            text: &text,
            segments: [Segment {
                id: 0,
                seek: 0,
                start: 0.0,
                end: seconds as f64,
                text: &text,
                tokens: [],
                temperature: 0.0,
                avg_logprob: -0.25,
                compression_ratio: 1.0,
                no_speech_prob: 0.0,
            }],
            usage,
        })),
        _ => http::json_bytes(http::pretty(&Plain { text: &text, usage })),
    })
}

fn timestamp(seconds: u64, sep: char) -> String {
    format!(
        "{:02}:{:02}:{:02}{sep}000",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[derive(Serialize, Clone, Copy)]
struct DurationUsage {
    #[serde(rename = "type")]
    kind: &'static str,
    seconds: u64,
}

#[derive(Serialize)]
struct Plain<'a> {
    text: &'a str,
    usage: DurationUsage,
}

#[derive(Serialize)]
struct Verbose<'a> {
    task: &'static str,
    language: &'a str,
    duration: f64,
    text: &'a str,
    segments: [Segment<'a>; 1],
    usage: DurationUsage,
}

#[derive(Serialize)]
struct Segment<'a> {
    id: u32,
    seek: u32,
    start: f64,
    end: f64,
    text: &'a str,
    tokens: [u32; 0],
    temperature: f64,
    avg_logprob: f64,
    compression_ratio: f64,
    no_speech_prob: f64,
}
