//! An honest fake OpenAI + Anthropic upstream provider, for tests and benchmarks.
//!
//! It speaks the real wire formats (field order, `usage: null` on every chunk when
//! `stream_options.include_usage` is set, `obfuscation`, `event:` names, Responses
//! sequence numbers, Anthropic `message_start` … `message_stop` with `ping`), answers
//! deterministically, and injects faults on request.
//!
//! # Endpoints (all under `/v1`)
//! OpenAI: `POST /chat/completions`, `/responses`, `/embeddings`, `/images/generations`,
//! `/audio/speech`, `/audio/transcriptions`, `/audio/translations`, `/moderations`,
//! `GET /models`, `GET /models/{id}`. Anthropic: `POST /messages` and
//! `POST /messages/count_tokens` (both need `anthropic-version` and `x-api-key`);
//! `GET /models` and `GET /models/{id}` answer in Anthropic's shape when `anthropic-version`
//! is sent. An unknown model id is a 404 in the provider's shape (OpenAI: `The model 'x' does
//! not exist`, code `model_not_found`; Anthropic: `not_found_error`, `model: x`).
//!
//! Azure OpenAI: `/openai/deployments/{deployment}/…?api-version=…`, `/openai/responses`
//! and `/openai/v1/…`, with Azure's `api-key` and `api-version` checks (see `azure.rs`).
//!
//! Gemini: `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:embedContent`, `:batchEmbedContents`, with `x-goog-api-key` (see `gemini.rs`).
//!
//! AWS Bedrock: `POST /model/{modelId}/converse`, `/converse-stream`, `/invoke`,
//! `/invoke-with-response-stream`, SigV4-verified, event-stream framed (see `bedrock/`).
//!
//! Google Vertex AI: `POST /token` (the service-account JWT flow) and
//! `/v1/projects/{p}/locations/{r}/publishers/{anthropic|google}/models/{model}:{method}`
//! with the bearer token it issued (see `vertex/`).
//!
//! # What Anthropic refuses
//! `/messages` and `/messages/count_tokens` refuse, with a 400 `invalid_request_error`, what
//! the real API refuses, so a gateway that drops the `anthropic-beta` header fails a test:
//! - `context_management` without the `context-management-2025-06-27` beta, and
//!   `output_config.effort` without `effort-2025-11-24`: `context_management: Extra inputs
//!   are not permitted` (pydantic's wording, as Anthropic answers);
//! - `defer_loading` on a tool without `advanced-tool-use-2025-11-20`:
//!   `tools.N.custom.defer_loading: Extra inputs are not permitted`;
//! - `role: "system"` inside `messages`: without the `mid-conversation-system-2026-04-07` beta
//!   Anthropic's `Unexpected role "system"` message; with it, on a model older than Opus 4.8,
//!   `role 'system' is not supported on this model`; at `messages.0` with content, the
//!   "use the top-level 'system' parameter" message (the directive-only form, `content: []`
//!   with `output_config`, is accepted anywhere);
//! - `thinking: {"type": "adaptive"}` on a model older than Opus / Sonnet 4.6 (the message is
//!   the fake's own). Several betas may be sent comma-separated, in one header or several.
//!
//! # What OpenAI refuses
//! `/responses` refuses `max_output_tokens` below 16 with OpenAI's 400 (`param:
//! "max_output_tokens"`, `code: "integer_below_min_value"`), in fast mode too.
//!
//! `count_tokens` answers `{"input_tokens": T}` with `T` from the input formula below (the
//! `input_tokens` of a `/messages` answer to the same body without cache directives).
//! Outside fast mode, JSON requests get the provider's request id header
//! (`x-request-id` for OpenAI, `request-id` for Anthropic).
//!
//! # Content
//! A text reply is `words` words (default 12) cycled from a fixed list, starting with
//! `Hello from the fake upstream, a café of deterministic words for tests that count
//! every token.`; one stream chunk per word (the first without, the others with a leading
//! space). `max_tokens` / `max_completion_tokens` / `max_output_tokens` cap it, and a cap
//! that bites gives `finish_reason: "length"`, `stop_reason: "max_tokens"`, or Responses
//! `status: "incomplete"`. A stop sequence (`stop`, `stop_sequences`) equal to a whole word
//! of the reply ends it before that word (`stop_reason: "stop_sequence"`).
//!
//! With the `tool` directive and at least one tool in the request, the reply is a call
//! of the first tool. Its arguments are a JSON object with one value per property of the
//! tool's required properties (all of them when it names none; sorted by name: enum →
//! first value, string → `"Paris"` (`cmd` or `command` → `"echo tollgate-tool-round-trip"`,
//! as a string or an argument array), integer → `3`, number → `21`, boolean → `true`, array
//! → `[]`, object → `{}`), or
//! `{"location":"Paris"}` when the schema has no `properties`; streamed in fragments of
//! 8 characters. When the last message is a tool result (OpenAI `role: "tool"`, Responses
//! `function_call_output`, Anthropic `tool_result` block), the reply is text.
//!
//! # Usage formulas
//! - `words(s)` = number of whitespace-separated words in `s`.
//! - Chat / Responses / Messages input tokens `T` = Σ over messages of
//!   (4 + words of the message's text). The system prompt (OpenAI `system`/`developer`
//!   message, Responses `instructions`, Anthropic `system`) counts as one message. An
//!   Anthropic `tool_result` block counts as its own message (as OpenAI's `tool` message
//!   does); other blocks of one Anthropic message count as one message. Text is every
//!   `text` string of the content (string content, text parts, tool-result content);
//!   tool-call arguments, images and tool definitions count nothing. Responses `input`
//!   given as a string is one message.
//! - Output tokens = words generated; for a tool call, the number of argument fragments
//!   (`ceil(chars(arguments) / 8)`); plus `ceil(N / 4)` with `pad_bytes=N`.
//! - `cached=N` reports `C = min(N, T)` cached tokens, `cache_write=W` reports
//!   `Wc = min(W, T - C)` (Anthropic only). OpenAI `prompt_tokens` = `T` (cached
//!   included); Anthropic `input_tokens` = `T - C - Wc`, `cache_read_input_tokens` = `C`,
//!   `cache_creation_input_tokens` = `Wc`. So every format adds up to the same `T`.
//! - Embeddings: Σ words of each string input (at least 1 each) + length of each token
//!   array. Images: input tokens = words of the prompt; output tokens per image as
//!   gpt-image-1 (by quality low/medium/high × size, e.g. 1024x1024 medium = 1056).
//! - Speech: `1024 + 64 × chars(input)` bytes, streamed in 1024-byte chunks.
//! - Transcriptions / translations: `seconds = ceil(file bytes / 16000)` for models
//!   billed by duration; for `gpt-4o*` models billed by tokens: `audio_tokens =
//!   ceil(file bytes / 1000)` (≈ 16 per second, near the ≈ 1,000 per minute OpenAI's
//!   $0.006/min estimate for gpt-4o-transcribe implies), `text_tokens` = words of the
//!   `prompt`, `input_tokens` = text + audio, `output_tokens` = words of the text.
//!
//! # Transcriptions and translations
//! `whisper-1`, and any model not starting with `gpt-4o`, is billed by duration and
//! ignores `stream`: `json` (default) = `{"text", "usage": {"type": "duration",
//! "seconds"}}`; `text` = the text and `\n`; `srt` / `vtt` = one cue per 8 words, the
//! cues spread evenly so the last ends at the duration (both `text/plain`);
//! `verbose_json` = `{"task", "language", "duration", "text", "segments": [{"id",
//! "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
//! "compression_ratio", "no_speech_prob"}], "usage"}` (translations: `task`
//! `translate`, `language` `english`). `gpt-4o-transcribe` / `gpt-4o-mini-transcribe`
//! (any `gpt-4o*` model) are billed by tokens: `json` = `{"text", "usage": {"type":
//! "tokens", "input_tokens", "input_token_details": {"text_tokens", "audio_tokens"},
//! "output_tokens", "total_tokens"}}`, `text` as above; `verbose_json`, `srt` and `vtt`
//! are OpenAI's 400 (`response_format '…' is not compatible with model '…'. Use 'json'
//! or 'text' instead.`, code `unsupported_value`); on `/translations` they are a 400
//! (whisper-1 only; the message is the fake's own). With `stream=true` they answer
//! SSE data lines (no `event:`, no `[DONE]`): one `{"type": "transcript.text.delta",
//! "delta"}` per word, then `{"type": "transcript.text.done", "text", "usage"}`.
//! Directives come from the `prompt`; `no_usage` drops the usage, `report_*` set token
//! usage, the stream directives (`cut_after`, `no_terminator`, `endless`…) apply to the
//! transcription stream.
//!
//! # Stateful and priced features
//! Answered as the real APIs answer them, so tests can show a gateway refusing or
//! pricing them:
//! - Responses `"background": true`: the non-streamed answer is `status: "queued"`,
//!   `background: true`, `output: []`, `usage: null`; streamed, `response.created`
//!   says `queued` and the stream then runs as usual with `background: true`.
//! - `service_tier` (chat, Responses) is echoed in the answer's `service_tier` (every
//!   chunk too): absent or `auto` → `default`; `default`, `flex`, `scale`, `priority`
//!   kept; another value is OpenAI's 400 (`param: service_tier`). Anthropic's
//!   `service_tier` shows in `usage.service_tier`: `auto` → `priority` (as for an
//!   organisation with Priority Tier capacity), `standard_only` or absent →
//!   `standard`; another value is a 400.
//! - Hosted tools on Responses: for each hosted tool type in `tools` (`web_search`,
//!   `web_search_preview` and dated versions, `file_search`, `code_interpreter`,
//!   `image_generation`), in order of first appearance, the output starts with one
//!   completed call item (`web_search_call` with `action: {type: search, query}`,
//!   `file_search_call` with `queries` and `results: null`, `code_interpreter_call`
//!   with `code`, `container_id` and `outputs: null`, `image_generation_call` with a
//!   base64 PNG `result`, `size`, `quality`, `output_format`…), then the reply. Streamed,
//!   each call is `output_item.added`, `response.<type>.in_progress`, `.searching` /
//!   `.interpreting` / `.generating`, `.completed`, `output_item.done`, and the reply's
//!   `output_index` follows the calls. Hosted calls add no tokens (OpenAI bills them
//!   per call).
//! - Anthropic's web search server tool (`tools` with a `type` starting `web_search_`,
//!   e.g. `web_search_20250305`): the content starts with a `server_tool_use` block
//!   (`name: web_search`, `input: {query}`) and its `web_search_tool_result` block (one
//!   `web_search_result`), then the reply (block index 2 when streamed), and
//!   `usage.server_tool_use` is `{"web_search_requests": 1}` (in `message_delta` when
//!   streamed).
//!
//! # Directives
//! Written in the text of the last user message that has text (Responses/embeddings/
//! moderations/speech: `input`; images and audio uploads: `prompt`) as
//! `[[fake:key=value,key2=value2,flag]]`; several blocks merge. Unknown keys are a 400.
//! - `status=N` (400..=599): that status with an error body in the provider's shape
//!   (`retry_after=S` adds a `retry-after` header);
//! - `echo_headers` (with `status=N` only): the error's message ends with
//!   `Request headers: name: value, name: value…`, every request header verbatim,
//!   `authorization` and `x-api-key` included, as some providers quote the request in
//!   validation errors (a gateway must scrub its secrets);
//! - `reset`: the TCP connection is reset before any response byte;
//! - `malformed`: 200 with a body that is not JSON (streams: one `data:` line of broken
//!   JSON after the first content chunk, the stream then ends normally);
//! - `first_byte_ms=N`, `chunk_ms=N`: override [`Options::latency`] / [`Options::chunk_delay`];
//! - `words=N`, `tool`, `cached=N`, `cache_write=N`: shape the reply (see above);
//!   `tool_name=NAME` calls the tool of that name (else the first one offered);
//! - `comments`: put an SSE `: keep-alive` comment line before every content event;
//! - `flagged` (moderations): the input is flagged for harassment.
//!
//! Misbehaving providers (chat completions, Responses and Messages, streamed or not
//! unless said otherwise):
//! - `no_usage`: the answer reports no usage at all. JSON: no `usage` member. Chat
//!   streams: no usage chunk even with `include_usage` (the other chunks keep their
//!   `"usage": null`). Responses streams: `response.completed` without `usage`.
//!   Messages streams: `message_start` and `message_delta` without `usage`.
//! - `wrong_type`: a success is served as `content-type: text/plain; charset=utf-8`,
//!   the body (JSON or the SSE stream) unchanged.
//! - `no_terminator`: a stream sends all its content, then closes cleanly without its
//!   terminal events and final usage: chat ends after the finish chunk (no usage chunk,
//!   no `[DONE]`), Responses after `response.output_item.done` (no
//!   `response.completed`), Messages after `content_block_stop` (no `message_delta`,
//!   no `message_stop`). Counted in [`Stats::streams_aborted`].
//! - `cut_after=N`: stream N content chunks, then abort the connection (no end, no
//!   usage; Messages keeps `message_start`'s initial usage, as a real cut would);
//! - `error_after=N`: stream N content chunks, then the provider's in-stream error
//!   event (chat: `data: {"error": …}`, Responses: `event: error` with the next
//!   sequence number, Messages: `event: error` `overloaded_error`), then end (speech
//!   audio has no error event: it is cut like `cut_after`);
//! - `ignore_max_tokens`: the reply has `words` words whatever `max_tokens`,
//!   `max_completion_tokens` or `max_output_tokens` say, and reports them all as output.
//! - `report_input=N`, `report_output=N` (any `u64`, e.g. `1000000000000000000`): the
//!   input / output tokens the usage reports, whatever was generated (totals saturate).
//!   `cached` then reports at most `N` cached tokens.
//! - `endless`: a stream that never ends: after the events that open the reply, one
//!   text content chunk (the reply's words, cycling) every `chunk_ms` (default
//!   [`Options::chunk_delay`], at least 1 ms) until the client goes away (counted in
//!   [`Stats::streams_cancelled`]); Responses sequence numbers keep counting. A
//!   non-streamed answer with `endless` is a 200 JSON body that never finishes: its
//!   opening up to the reply's text, then 1 KiB of ` pad pad…` every `chunk_ms`. Both
//!   run in constant memory.
//! - `pad_bytes=N` (non-streamed only, at most 2 GiB; a streamed request with it is a
//!   400): the reply's text is followed by `N` bytes of ` pad pad pad…` (the last unit
//!   cut to fit), written in 64 KiB chunks so the fake never holds them; the rest of
//!   the JSON, with its usage, follows as usual (usage after the content, as the real
//!   APIs put it). Output tokens reported = words generated + `ceil(N / 4)`.
//! - `trickle_ms=N`: the whole answer (JSON bodies, streams, errors) is written at most
//!   16 bytes at a time, N ms apart (each write is one HTTP chunk).
//!
//! # Faults on command
//! For routing tests with several fakes, a fault applies to whole requests whatever
//! their text, for the next N model requests or for a while ([`FakeUpstream::faults`]):
//! ```no_run
//! # use std::time::Duration;
//! # use fake_upstream::{Fault, Options};
//! # async fn demo() -> anyhow::Result<()> {
//! let up = fake_upstream::start(Options::default()).await?;
//! up.faults().next(3, Fault::Status { status: 429, retry_after: Some(2) }).await?;
//! up.faults().for_duration(Duration::from_secs(5), Fault::Refuse).await?;
//! up.faults().clear().await?;
//! # Ok(()) }
//! ```
//! - [`Fault::Status`]: that status with the provider's error body (Anthropic's on
//!   `/v1/messages`), `retry-after` when set;
//! - [`Fault::Reset`]: a TCP reset before any response byte;
//! - [`Fault::FirstByte`]: the answer starts that much later;
//! - [`Fault::Refuse`]: connection refused: the listener is closed (open connections
//!   are reset, as when a host dies) and re-bound on the same port when the time is
//!   up or on [`Faults::clear`]. Only with [`Faults::for_duration`] (`next` refuses it:
//!   refused connections never reach the fake to be counted). [`FakeUpstream::stop`]
//!   and [`FakeUpstream::restart`] do the same by hand.
//!
//! One fault at a time: a new one replaces the one in force. Faulted requests are
//! counted in [`Stats::requests`] and [`Stats::faulted`], and recorded in
//! [`FakeUpstream::received`], so a test can tell how many attempts reached each
//! instance; [`FakeUpstream::requests_by_endpoint`] splits them per path.
//!
//! The same over HTTP, for a fake in another process (e.g. the `fake-upstream`
//! binary). These `/__fake` paths are never counted, recorded or faulted:
//! - `POST /__fake/faults` with `{"fault": "status", "status": 503, "retry_after": 2,
//!   "count": 3}`, `{"fault": "reset", "for_ms": 5000}` or `{"fault": "first_byte",
//!   "ms": 1000, "count": 1}` (exactly one of `count` and `for_ms`; a bad request is a
//!   400 `{"error": "…"}`). `refuse` is a 400: a refusing fake could not be reached to
//!   end it.
//! - `DELETE /__fake/faults`: ends the fault in force.
//! - `GET /__fake/stats`: `{"requests", "faulted", "streams_started",
//!   "streams_completed", "streams_cancelled", "streams_aborted", "endpoints":
//!   {"/v1/chat/completions": N, …}}`.
//!
//! # Fast mode
//! [`Options::fast`] answers chat, Responses, embeddings and messages with bytes built
//! once at start; only `"stream": true`, `"include_usage": true` and an output cap are
//! looked for in the body (a byte search), and requests are counted but not recorded in
//! [`FakeUpstream::received`]. A cap (`max_tokens`, `max_completion_tokens`,
//! `max_output_tokens`) below the canned answer's length gets the full path, which obeys
//! it as a provider does. Other endpoints behave as usual. Faults work in fast mode too;
//! directives do not (the text is not read).

// Handlers return finished error responses through `?`; that path is cold, so the size
// of `Response` in `Err` does not matter.
#![allow(clippy::result_large_err)]

mod audio;
mod azure;
mod bedrock;
mod chat;
mod completions;
mod conn;
mod content;
mod control;
mod directives;
mod embeddings;
mod error;
mod fast;
mod faults;
mod gemini;
mod http;
mod images;
mod messages;
mod misbehave;
mod misc;
mod responses;
mod server;
mod shared;
mod stream;
mod tier;
mod transcribe;
mod vertex;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use faults::{Fault, Faults};
use server::Server;
pub(crate) use shared::Shared;
pub use vertex::{TEST_VERTEX_CLIENT_EMAIL, TEST_VERTEX_PRIVATE_KEY_PEM};

/// How the fake upstream behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Delay before the response headers (first byte).
    pub latency: Duration,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// Pre-serialized canned answers and minimal parsing, for benchmarks.
    pub fast: bool,
    /// When set, OpenAI endpoints require `Authorization: Bearer <key>`.
    pub openai_api_key: Option<String>,
    /// When set, `/v1/messages` requires `x-api-key: <key>` (otherwise any `x-api-key`).
    pub anthropic_api_key: Option<String>,
    /// When set, the Azure paths require `api-key: <key>` or `Authorization: Bearer <key>`
    /// (otherwise any key, but one must be sent).
    pub azure_api_key: Option<String>,
    /// When set, the Gemini paths require `x-goog-api-key: <key>` (otherwise any key, but
    /// one must be sent).
    pub gemini_api_key: Option<String>,
    /// Bedrock: the access key whose signatures are accepted (default
    /// [`TEST_AWS_ACCESS_KEY_ID`] / [`TEST_AWS_SECRET_ACCESS_KEY`]).
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    /// Bedrock: when set, requests must carry and sign this `x-amz-security-token`.
    pub aws_session_token: Option<String>,
    /// Vertex: a bearer token accepted besides those the token endpoint issues.
    pub vertex_access_token: Option<String>,
    /// Vertex: the lifetime of the tokens `/token` issues (default 3599 s).
    pub vertex_token_lifetime: Option<Duration>,
}

/// The AWS access key the fake's Bedrock accepts unless told otherwise (test-only).
pub const TEST_AWS_ACCESS_KEY_ID: &str = "AKIATOLLGATEFAKETEST";
/// The secret of [`TEST_AWS_ACCESS_KEY_ID`] (test-only; not an AWS credential).
pub const TEST_AWS_SECRET_ACCESS_KEY: &str = "tollgate/fake+upstream/test-only/secret/0123";

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every model request received (every path under `/v1`), including rejected and
    /// faulted ones; never the `/__fake` control paths.
    pub requests: u64,
    /// Requests answered by a [`Fault`] (set with [`FakeUpstream::faults`] or
    /// `POST /__fake/faults`), included in `requests`.
    pub faulted: u64,
    /// Streamed response bodies begun (SSE streams and speech audio).
    pub streams_started: u64,
    /// Streams whose final chunk was handed to the connection.
    pub streams_completed: u64,
    /// Streams dropped before their final chunk: the client went away.
    pub streams_cancelled: u64,
    /// Streams ended early on purpose by `cut_after`, `error_after` or `no_terminator`.
    pub streams_aborted: u64,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Raw body; empty for multipart uploads (see `body_len`).
    pub body: Bytes,
    /// Body size in bytes (for multipart: the bytes the handler consumed).
    pub body_len: u64,
}

impl Received {
    /// The first value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running fake upstream; it stops accepting connections when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<Server>,
}

/// Starts a fake upstream on `127.0.0.1:0`.
pub async fn start(opts: Options) -> anyhow::Result<FakeUpstream> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
}

/// Starts a fake upstream on the given address.
pub async fn start_on(listen: SocketAddr, opts: Options) -> anyhow::Result<FakeUpstream> {
    let shared = Arc::new(Shared::new(opts));
    let server = Server::bind(listen, shared.clone()).await?;
    let addr = server.addr;
    tracing::info!(%addr, "fake upstream listening");
    Ok(FakeUpstream {
        addr,
        shared,
        server,
    })
}

impl FakeUpstream {
    /// The bound address (kept across [`stop`](Self::stop) and
    /// [`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client wants.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`, the base URL an Anthropic client wants.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Model requests received per path (`/v1/chat/completions`…; unknown paths under
    /// `other`), only the paths that got some.
    pub fn requests_by_endpoint(&self) -> BTreeMap<String, u64> {
        self.shared.counters.by_endpoint()
    }

    /// Every request received so far (not recorded in fast mode).
    pub fn received(&self) -> Vec<Received> {
        self.shared.received_lock().clone()
    }

    /// Forgets the recorded requests (counters are kept).
    pub fn clear_received(&self) {
        self.shared.received_lock().clear();
    }

    /// Sets and clears [`Fault`]s on this fake.
    pub fn faults(&self) -> Faults {
        Faults::new(self.server.clone())
    }

    /// Stops listening: the port refuses connections and open connections are reset,
    /// until [`restart`](Self::restart). Cancels a timed `Fault::Refuse`.
    pub async fn stop(&self) {
        self.server.stop().await;
        self.server
            .refusing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Listens again on the same port (does nothing when listening). Fails when the
    /// port was taken by another socket in the meantime.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.server.restart().await
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.server.close();
    }
}
