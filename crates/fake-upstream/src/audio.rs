//! `POST /v1/audio/speech`: binary audio, streamed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::stream::{self, Frame};
use crate::Shared;

/// Audio bytes per streamed chunk.
const AUDIO_CHUNK: usize = 1024;
/// Longest speech input, as OpenAI's.
const MAX_SPEECH_CHARS: usize = 4096;

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
