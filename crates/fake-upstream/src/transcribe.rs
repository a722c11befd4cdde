//! `POST /v1/audio/transcriptions` and `/v1/audio/translations`: multipart uploads
//! (the file counted as it streams, never held), answered per model family as OpenAI
//! does. `whisper-1` (and any model not starting with `gpt-4o`) is billed by duration
//! and speaks json, text, srt, vtt and verbose_json; `gpt-4o-transcribe` and
//! `gpt-4o-mini-transcribe` are billed by tokens, speak json and text, and stream.

use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::content::{self, PlanInput, Usage};
use crate::directives::Directives;
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::stream::Frame;
use crate::{misbehave, Shared};

/// Upload bytes per second of audio, for the duration the fake reports.
const BYTES_PER_SECOND: u64 = 16_000;
/// Upload bytes per audio token of a token-billed model (≈ 16 tokens per second).
const BYTES_PER_AUDIO_TOKEN: u64 = 1_000;
/// Words per segment (one subtitle cue each).
const WORDS_PER_SEGMENT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Transcribe,
    Translate,
}

pub(crate) async fn transcriptions(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match run(&s, req, Task::Transcribe).await {
        Ok(r) | Err(r) => r,
    }
}

pub(crate) async fn translations(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match run(&s, req, Task::Translate).await {
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
    stream: Option<String>,
}

fn multipart_error(e: impl std::fmt::Display) -> Response {
    error::openai(
        StatusCode::BAD_REQUEST,
        &format!("Could not parse multipart form: {e}"),
        None,
        None,
    )
}

fn bad(message: &str, param: &str, code: Option<&str>) -> Response {
    error::openai(StatusCode::BAD_REQUEST, message, Some(param), code)
}

async fn read_upload(mut form: Multipart) -> Result<Upload, Response> {
    let mut up = Upload::default();
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        let slot = match name.as_str() {
            "file" => {
                let mut n = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    n += chunk.len() as u64;
                }
                up.file_bytes = Some(n);
                continue;
            }
            "model" => &mut up.model,
            "prompt" => &mut up.prompt,
            "response_format" => &mut up.response_format,
            "language" => &mut up.language,
            "stream" => &mut up.stream,
            _ => {
                while field.chunk().await.map_err(multipart_error)?.is_some() {}
                continue;
            }
        };
        *slot = Some(field.text().await.map_err(multipart_error)?);
    }
    Ok(up)
}

async fn run(s: &Arc<Shared>, req: Request, task: Task) -> Result<Response, Response> {
    let (parts, body) = req.into_parts();
    let ctx = Ctx::from_parts(&parts);
    http::check_openai_key(s, &ctx)?;
    let form = Multipart::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|e| multipart_error(e.body_text()))?;
    let up = read_upload(form).await?;
    let Some(file_bytes) = up.file_bytes else {
        return Err(bad("Missing required parameter: 'file'.", "file", None));
    };
    let model = up.model.as_deref().unwrap_or_default();
    if model.is_empty() {
        return Err(error::openai(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            None,
            None,
        ));
    }
    let by_tokens = model.starts_with("gpt-4o");
    if by_tokens && task == Task::Translate {
        return Err(bad(
            &format!("Invalid model '{model}': translations support only whisper-1."),
            "model",
            Some("unsupported_value"),
        ));
    }
    let format = up.response_format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "text" | "verbose_json" | "srt" | "vtt") {
        return Err(bad(
            "Invalid value for 'response_format': must be json, text, srt, verbose_json or vtt.",
            "response_format",
            None,
        ));
    }
    if by_tokens && !matches!(format, "json" | "text") {
        return Err(bad(
            &format!(
                "response_format '{format}' is not compatible with model '{model}'. \
                 Use 'json' or 'text' instead."
            ),
            "response_format",
            Some("unsupported_value"),
        ));
    }
    let dirs = http::directives(Flavor::OpenAi, up.prompt.as_deref())?;
    if let Some(r) = http::prelude(s, &ctx, &dirs, Flavor::OpenAi).await {
        return Ok(misbehave::finish(&dirs, r));
    }
    if dirs.malformed {
        return Ok(http::malformed());
    }
    let chunks = match content::plan(
        PlanInput {
            words: dirs.words,
            ..PlanInput::default()
        },
        String::new,
    )
    .reply
    {
        content::Reply::Text(chunks) => chunks,
        content::Reply::Tool(_) => Vec::new(),
    };
    let resp = if by_tokens {
        let text_tokens = up.prompt.as_deref().map_or(0, content::count_words);
        let audio_tokens = file_bytes.div_ceil(BYTES_PER_AUDIO_TOKEN);
        let usage = dirs.usage(text_tokens + audio_tokens, chunks.len() as u64, 0);
        let usage = usage.map(|u| TokenUsage::new(&u, text_tokens, audio_tokens));
        // `stream` is honoured by the token-billed models only; whisper-1 ignores it.
        if up.stream.as_deref() == Some("true") {
            stream(s, &dirs, &chunks, usage)
        } else {
            let text = chunks.concat();
            match format {
                "text" => plain(format!("{text}\n")),
                _ => http::json_bytes(http::pretty(&Plain { text: &text, usage })),
            }
        }
    } else {
        let seconds = file_bytes.div_ceil(BYTES_PER_SECOND);
        let usage = (!dirs.no_usage).then_some(DurationUsage {
            kind: "duration",
            seconds,
        });
        let language = match task {
            Task::Translate => "english",
            Task::Transcribe => up.language.as_deref().unwrap_or("english"),
        };
        by_duration(format, task, language, seconds, &chunks, usage)
    };
    Ok(misbehave::finish(&dirs, resp))
}

fn plain(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// A token-billed transcription as SSE: one `transcript.text.delta` per word, then
/// `transcript.text.done` with the text and usage. Data lines only, no `[DONE]`.
fn stream(
    s: &Arc<Shared>,
    dirs: &Directives,
    chunks: &[String],
    usage: Option<TokenUsage>,
) -> Response {
    let delta = |text: &str| http::sse(None, &Delta::new(text));
    let mut frames: Vec<Frame> = chunks
        .iter()
        .map(|c| Frame::content(http::with_comment(dirs.comments, delta(c))))
        .collect();
    let text = chunks.concat();
    frames.push(Frame::terminal(http::sse(
        None,
        &Done {
            kind: "transcript.text.done",
            text: &text,
            usage,
        },
    )));
    if dirs.endless {
        let comments = dirs.comments;
        let next = Box::new(move |i| {
            let word = content::word_chunk(i);
            http::with_comment(comments, http::sse(None, &Delta::new(&word)))
        });
        return http::sse_endless(s, dirs, frames, next);
    }
    http::sse_stream(s, dirs, frames, error::chat_stream_event)
}

/// A duration-billed answer in one of whisper-1's five formats. The text is cut into
/// segments of [`WORDS_PER_SEGMENT`] words spread evenly over the duration, so the
/// last cue ends at the duration.
fn by_duration(
    format: &str,
    task: Task,
    language: &str,
    seconds: u64,
    chunks: &[String],
    usage: Option<DurationUsage>,
) -> Response {
    let text = chunks.concat();
    let groups: Vec<String> = if chunks.is_empty() {
        vec![String::new()]
    } else {
        chunks
            .chunks(WORDS_PER_SEGMENT)
            .map(<[String]>::concat)
            .collect()
    };
    let total_ms = seconds * 1000;
    let n = groups.len() as u64;
    let span = |i: u64| (total_ms * i / n, total_ms * (i + 1) / n);
    let cues = |sep: char, numbered: bool| {
        let mut out = String::new();
        for (i, g) in groups.iter().enumerate() {
            let (start, end) = span(i as u64);
            if numbered {
                out.push_str(&format!("{}\n", i + 1));
            }
            let (a, b) = (timestamp(start, sep), timestamp(end, sep));
            out.push_str(&format!("{a} --> {b}\n{}\n\n", g.trim()));
        }
        out
    };
    match format {
        "text" => plain(format!("{text}\n")),
        "srt" => plain(cues(',', true)),
        "vtt" => plain(format!("WEBVTT\n\n{}", cues('.', false))),
        "verbose_json" => {
            let mut next_token = 0u32;
            let segments = groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let (start, end) = span(i as u64);
                    let words = content::count_words(g) as u32;
                    let tokens = (next_token..next_token + words)
                        .map(|t| 50_364 + t)
                        .collect();
                    next_token += words;
                    Segment {
                        id: i as u32,
                        seek: 0,
                        start: start as f64 / 1000.0,
                        end: end as f64 / 1000.0,
                        text: g,
                        tokens,
                        temperature: 0.0,
                        avg_logprob: -0.25,
                        compression_ratio: 1.2,
                        no_speech_prob: 0.01,
                    }
                })
                .collect();
            http::json_bytes(http::pretty(&Verbose {
                task: match task {
                    Task::Transcribe => "transcribe",
                    Task::Translate => "translate",
                },
                language,
                duration: seconds as f64,
                text: &text,
                segments,
                usage,
            }))
        }
        _ => http::json_bytes(http::pretty(&Plain { text: &text, usage })),
    }
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (VTT).
fn timestamp(ms: u64, sep: char) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

#[derive(Serialize, Clone, Copy)]
struct DurationUsage {
    #[serde(rename = "type")]
    kind: &'static str,
    seconds: u64,
}

#[derive(Serialize, Clone, Copy)]
struct TokenUsage {
    #[serde(rename = "type")]
    kind: &'static str,
    input_tokens: u64,
    input_token_details: InputDetails,
    output_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct InputDetails {
    text_tokens: u64,
    audio_tokens: u64,
}

impl TokenUsage {
    fn new(u: &Usage, text_tokens: u64, audio_tokens: u64) -> Self {
        Self {
            kind: "tokens",
            input_tokens: u.input,
            input_token_details: InputDetails {
                text_tokens,
                audio_tokens,
            },
            output_tokens: u.output,
            total_tokens: u.total(),
        }
    }
}

#[derive(Serialize)]
struct Plain<'a, U> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<U>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: &'a str,
}

impl<'a> Delta<'a> {
    fn new(delta: &'a str) -> Self {
        Self {
            kind: "transcript.text.delta",
            delta,
        }
    }
}

#[derive(Serialize)]
struct Done<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<TokenUsage>,
}

#[derive(Serialize)]
struct Verbose<'a> {
    task: &'static str,
    language: &'a str,
    duration: f64,
    text: &'a str,
    segments: Vec<Segment<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<DurationUsage>,
}

#[derive(Serialize)]
struct Segment<'a> {
    id: u32,
    seek: u32,
    start: f64,
    end: f64,
    text: &'a str,
    tokens: Vec<u32>,
    temperature: f64,
    avg_logprob: f64,
    compression_ratio: f64,
    no_speech_prob: f64,
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(3_723_045, ','), "01:02:03,045");
        assert_eq!(timestamp(500, '.'), "00:00:00.500");
    }
}
