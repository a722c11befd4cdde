//! The path of one model request: read just what is needed from the body, look the
//! model up, reserve the worst-case cost, forward to the provider, read the usage in
//! flight, settle the actual cost and record it — exactly once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tollgate_formats::conversion::{chat_to_messages, messages_to_chat, responses_to_chat};
use tollgate_formats::sse::{self, SseDecoder, SseEvent};
use tollgate_formats::usage as wire_usage;
use tollgate_formats::{ConversionError, Format, RawObject, StreamConverter, UsageTracker};

use crate::billing::meter::{Meter, Reservation};
use crate::billing::{Credits, Usage};
use crate::config::{Config, Endpoint, Model, Provider, ProviderKind};
use crate::error::ApiError;
use crate::providers::{self, UpstreamBody, UpstreamChunks, UpstreamResponse, Upstreams};
use crate::store::{KeyRecord, UsageRecord};
use crate::usage::{Coming, LedgerError, UsageWriter};

/// Header carrying the exact cost of a (non-streamed) request, in credits.
pub const COST_HEADER: &str = "x-tollgate-cost";
/// Largest upstream answer read whole (JSON answers; streams are not bounded).
const MAX_UPSTREAM_BODY: usize = 256 << 20;
/// Assumed audio tokens per second, to bound token-priced transcription.
const AUDIO_TOKENS_PER_SECOND: u64 = 50;
/// Fallback output bound when neither the request nor the catalog gives one.
const DEFAULT_OUTPUT_BOUND: u64 = 4096;

/// The gateway: catalog, meter, upstream clients and usage writer.
pub struct Gateway {
    config: Arc<Config>,
    meter: Arc<Meter>,
    writer: UsageWriter,
    upstreams: Upstreams,
}

/// Who is calling, on which endpoint.
pub struct Inbound {
    pub endpoint: Endpoint,
    pub key: Arc<KeyRecord>,
    pub request_id: Arc<str>,
    pub started: Instant,
}

/// The top-level members of a client's JSON request; only what the gateway needs is
/// parsed, the rest stays raw text.
struct RequestFields<'a>(RawObject<'a>);

impl<'a> RequestFields<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "invalid_json",
                "The request body is empty; send a JSON object.",
            ));
        }
        serde_json::from_slice(body)
            .map(RequestFields)
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("The request body is not a valid JSON object: {e}."),
                )
            })
    }

    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.typed(name, "a string")
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        Ok(self
            .typed::<Option<bool>>(name, "a boolean")?
            .flatten()
            .unwrap_or(false))
    }

    fn count(&self, name: &str) -> Result<Option<u64>, ApiError> {
        Ok(self
            .typed::<Option<u64>>(name, "a whole number of 0 or more")?
            .flatten())
    }

    fn typed<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .map(|raw| {
                serde_json::from_str::<T>(raw.get())
                    .map_err(|_| ApiError::invalid_field(name, format!("'{name}' must be {what}.")))
            })
            .transpose()
    }
}

/// How a response's usage becomes billable quantities.
#[derive(Debug, Clone, Copy)]
enum Billing {
    /// Token usage in a text-generation format.
    Tokens(Format),
    Embeddings,
    Images {
        n: u64,
    },
    Speech {
        characters: u64,
    },
    Transcription,
    Moderation,
}

/// One request's charge from reservation to record. Settling consumes it, so a
/// request is charged at most once; dropping it unsettled releases the reservation.
struct Settlement {
    meter: Arc<Meter>,
    /// Taken with the reservation: tells the usage writer a record is on its way.
    coming: Option<Coming>,
    reservation: Option<Reservation>,
    model: Arc<Model>,
    endpoint: Endpoint,
    request_id: Arc<str>,
    key: Arc<KeyRecord>,
    started: Instant,
}

impl Settlement {
    /// Charges `usage` (failed calls pass zero usage and a failure status), and waits
    /// until the record is safe, at most the ledger's bound.
    async fn settle(self, usage: Usage, status: u16) -> Credits {
        self.settle_recorded(usage, status).await.0
    }

    /// `settle` for an answer about to be delivered: `Err` means its record was not
    /// safe within the ledger's bound, and the answer must not be delivered as a success.
    async fn settle_delivered(self, usage: Usage) -> Result<Credits, LedgerError> {
        let (cost, recorded) = self.settle_recorded(usage, 200).await;
        recorded.map(|()| cost)
    }

    async fn settle_recorded(
        mut self,
        usage: Usage,
        status: u16,
    ) -> (Credits, Result<(), LedgerError>) {
        let (cost, record) = self.charge(usage, status);
        if let Some(reservation) = self.reservation.take() {
            self.meter.settle(reservation, cost).await;
        }
        let recorded = match self.coming.take() {
            Some(coming) => coming.record(record).await,
            None => Ok(()),
        };
        (cost, recorded)
    }

    /// Like `settle`, from a place that cannot wait (a dropped stream).
    fn settle_detached(mut self, usage: Usage, status: u16) {
        let (cost, record) = self.charge(usage, status);
        let reservation = self.reservation.take();
        let meter = self.meter.clone();
        let coming = self.coming.take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Some(reservation) = reservation {
                    meter.settle(reservation, cost).await;
                }
                if let Some(coming) = coming {
                    let _ = coming.record(record).await;
                }
            });
        }
    }

    /// The cost of `usage` and its ledger record (nothing is charged for failures).
    fn charge(&self, usage: Usage, status: u16) -> (Credits, UsageRecord) {
        let success = (200..300).contains(&status) || status == 499;
        let cost = if success {
            self.model.pricing.cost(&usage)
        } else {
            Credits::ZERO
        };
        let record = UsageRecord {
            request_id: self.request_id.to_string(),
            account_id: self.key.account_id,
            key_id: self.key.id,
            model: self.model.id.clone(),
            endpoint: self.endpoint.name().to_string(),
            input_tokens: saturating_i64(usage.input_tokens),
            cached_input_tokens: saturating_i64(usage.cached_input_tokens),
            output_tokens: saturating_i64(usage.output_tokens),
            cost,
            status: i64::from(status),
            latency_ms: saturating_i64(self.started.elapsed().as_millis() as u64),
            created_at: crate::now(),
        };
        (cost, record)
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.meter.release_detached(reservation);
        }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn tokens_usage(u: wire_usage::Usage) -> Usage {
    Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        cache_write_tokens: u.cache_write_tokens,
        output_tokens: u.output_tokens,
        ..Usage::default()
    }
}

/// Billable quantities of a whole JSON answer.
fn usage_of(billing: Billing, answer: &Value) -> Usage {
    let tokens = |u: Option<wire_usage::Usage>| u.map(tokens_usage).unwrap_or_default();
    match billing {
        Billing::Tokens(format) => tokens(wire_usage::from_response(format, answer)),
        Billing::Embeddings => tokens(wire_usage::from_embeddings_response(answer)),
        Billing::Images { n } => {
            let mut usage = tokens(answer.get("usage").map(wire_usage::from_responses_usage));
            let made = answer
                .get("data")
                .and_then(Value::as_array)
                .map_or(n, |d| d.len() as u64);
            usage.images = made;
            usage
        }
        Billing::Speech { characters } => Usage {
            characters,
            ..Usage::default()
        },
        Billing::Transcription => match answer.get("usage") {
            Some(u) if u.get("type").and_then(Value::as_str) == Some("duration") => Usage {
                audio_seconds: u
                    .get("seconds")
                    .and_then(Value::as_f64)
                    .map_or(0, |s| s.max(0.0).ceil() as u64),
                ..Usage::default()
            },
            Some(u) => tokens_usage(wire_usage::from_responses_usage(u)),
            None => Usage::default(),
        },
        Billing::Moderation => tokens(answer.get("usage").map(wire_usage::from_chat_usage)),
    }
}

/// Whether an event ends a stream of `format` (the charge is committed before it is sent).
fn is_terminal(format: Format, event: &SseEvent) -> bool {
    match format {
        Format::ChatCompletions => event.is_done(),
        Format::Responses => {
            matches!(
                event.event.as_deref(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            ) || event.data.starts_with("{\"type\":\"response.completed\"")
        }
        Format::AnthropicMessages => event.event.as_deref() == Some("message_stop"),
    }
}

/// The in-stream error event of a client format.
fn error_frame(format: Format, message: &str) -> Bytes {
    coded_error_frame(format, "upstream_error", "upstream_stream_failed", message)
}

/// An in-stream error event with its OpenAI `type` and `code`.
fn coded_error_frame(format: Format, kind: &str, code: &str, message: &str) -> Bytes {
    match format {
        Format::ChatCompletions => sse::encode_json(
            None,
            &serde_json::json!({"error": {"message": message, "type": kind,
                                          "code": code, "param": null}}),
        ),
        Format::Responses => sse::encode_json(
            Some("error"),
            &serde_json::json!({"type": "error", "code": code,
                                "message": message, "param": null}),
        ),
        Format::AnthropicMessages => sse::encode_json(
            Some("error"),
            &serde_json::json!({"type": "error",
                                "error": {"type": "api_error", "message": message}}),
        ),
    }
}

/// What is done to each upstream event on its way to the client.
enum Transform {
    /// Same format: passed on; `strip_usage` removes the usage the client did not ask for.
    Passthrough { strip_usage: bool },
    /// Another format: translated event by event.
    Convert(Box<dyn StreamConverter + Send>),
}

impl Transform {
    fn apply(&mut self, event: &SseEvent, out: &mut VecDeque<Bytes>) -> Result<(), String> {
        match self {
            Transform::Passthrough { strip_usage } => {
                if *strip_usage {
                    if wire_usage::is_usage_only_chunk_data(&event.data) {
                        return Ok(());
                    }
                    let data = wire_usage::strip_usage_field(&event.data);
                    out.push_back(sse::encode(event.event.as_deref(), &data));
                } else {
                    out.push_back(sse::encode(event.event.as_deref(), &event.data));
                }
                Ok(())
            }
            Transform::Convert(converter) => {
                let frames = converter.push(event).map_err(|e| e.to_string())?;
                out.extend(frames);
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Bytes>) {
        if let Transform::Convert(converter) = self {
            out.extend(converter.finish());
        }
    }
}

/// A translation between the client's format and the provider's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Translation {
    /// `/v1/messages` to an OpenAI-compatible provider.
    MessagesToChat,
    /// `/v1/chat/completions` to an Anthropic provider.
    ChatToMessages,
    /// `/v1/responses` to a provider that only speaks Chat Completions.
    ResponsesToChat,
}

/// Relays an upstream event stream to the client, frame by frame, reading usage as it
/// passes. Dropped early (the client went away), it charges what was generated.
struct Relay {
    upstream: UpstreamChunks,
    decoder: SseDecoder,
    tracker: UsageTracker,
    upstream_format: Format,
    client_format: Format,
    transform: Transform,
    out: VecDeque<Bytes>,
    settlement: Option<Settlement>,
    idle_timeout: Duration,
    input_estimate: u64,
    done: bool,
}

impl Relay {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            match tokio::time::timeout(self.idle_timeout, self.upstream.next()).await {
                Ok(Some(Ok(chunk))) => match self.decoder.push(&chunk) {
                    Ok(events) => {
                        for event in events {
                            self.handle(event).await;
                        }
                    }
                    Err(e) => {
                        self.fail(&format!("the provider's stream was unreadable ({e})"))
                            .await
                    }
                },
                Ok(Some(Err(_))) => self.fail("the provider's stream broke off").await,
                Ok(None) => {
                    if let Some(event) = self.decoder.finish() {
                        self.handle(event).await;
                    }
                    if self.settlement.is_some() {
                        if self.tracker.has_final_usage() {
                            self.settle_success().await;
                        } else {
                            self.fail("the provider's stream ended early").await;
                        }
                    }
                    if !self.done {
                        self.transform.finish(&mut self.out);
                    }
                    self.done = true;
                }
                Err(_) => self.fail("the provider's stream stalled").await,
            }
        }
    }

    async fn handle(&mut self, event: SseEvent) {
        if self.done {
            return;
        }
        if !event.is_done() && serde_json::from_str::<serde::de::IgnoredAny>(&event.data).is_err() {
            self.fail("the provider sent a malformed event").await;
            return;
        }
        self.tracker.observe(&event);
        if is_terminal(self.upstream_format, &event)
            && self.settlement.is_some()
            && !self.settle_success().await
        {
            return;
        }
        if let Err(message) = self.transform.apply(&event, &mut self.out) {
            self.fail(&format!(
                "the provider's stream could not be translated: {message}"
            ))
            .await;
        }
    }

    /// Settles before the terminal event. `false`: the charge could not be made safe,
    /// so the stream ends with an error event instead of its terminal event.
    async fn settle_success(&mut self) -> bool {
        if let Some(settlement) = self.settlement.take() {
            let usage = self.usage_so_far();
            // Boxed here and in `fail`: settling (meter, and in a cluster Redis, then
            // the ledger) is a large future that runs once per stream; inlined, its
            // space would sit in the state of every open stream while it waits.
            if let Err(e) = Box::pin(settlement.settle_delivered(usage)).await {
                let e = ApiError::from(e);
                let frame =
                    coded_error_frame(self.client_format, e.openai_type(), e.code, &e.message);
                self.out.push_back(frame);
                self.done = true;
                return false;
            }
        }
        true
    }

    /// The usage the stream reported; where it reported none (a server that ignores
    /// `include_usage`, or a stream cut short), an estimate: output at least the content
    /// deltas relayed, input a quarter of the request's bytes unless the stream gave it.
    fn usage_so_far(&self) -> Usage {
        let mut usage = tokens_usage(self.tracker.usage_or_estimate());
        if !self.tracker.has_final_usage() && usage.input_tokens == 0 {
            usage.input_tokens = self.input_estimate;
        }
        usage
    }

    async fn fail(&mut self, message: &str) {
        tracing::warn!(message, "upstream stream failed");
        if let Some(settlement) = self.settlement.take() {
            Box::pin(settlement.settle(Usage::default(), 502)).await;
        }
        self.out.push_back(error_frame(self.client_format, message));
        self.done = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: the upstream connection closes with this
        // value, and the request pays for what was generated up to now.
        if let Some(settlement) = self.settlement.take() {
            let usage = self.usage_so_far();
            settlement.settle_detached(usage, 499);
        }
    }
}

fn sse_response(relay: Relay, request_id: &str) -> Response {
    let stream = futures_util::stream::unfold(relay, |mut relay| async move {
        relay
            .next_frame()
            .await
            .map(|frame| (Ok::<_, std::io::Error>(frame), relay))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

/// Relays a binary answer (speech audio), holding back only its last chunk until the
/// charge is committed.
fn binary_response(
    upstream: UpstreamResponse,
    settlement: Settlement,
    usage: Usage,
    idle_timeout: Duration,
) -> Response {
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    struct State {
        upstream: UpstreamChunks,
        held: Option<Bytes>,
        settlement: Option<Settlement>,
        usage: Usage,
        idle_timeout: Duration,
    }
    impl Drop for State {
        fn drop(&mut self) {
            if let Some(settlement) = self.settlement.take() {
                settlement.settle_detached(self.usage, 499);
            }
        }
    }
    let state = State {
        upstream: providers::chunks(upstream),
        held: None,
        settlement: Some(settlement),
        usage,
        idle_timeout,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            match tokio::time::timeout(s.idle_timeout, s.upstream.next()).await {
                Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Ok(Some(Ok(chunk))) => {
                    if let Some(previous) = s.held.replace(chunk) {
                        return Some((Ok(previous), s));
                    }
                }
                Ok(None) => {
                    let last = s.held.take()?;
                    if let Some(settlement) = s.settlement.take() {
                        if let Err(e) = settlement.settle_delivered(s.usage).await {
                            // Not delivered as a success: the body breaks off instead.
                            return Some((Err(std::io::Error::other(e)), s));
                        }
                    }
                    return Some((Ok(last), s));
                }
                Ok(Some(Err(_))) | Err(_) => {
                    if let Some(settlement) = s.settlement.take() {
                        settlement.settle(Usage::default(), 502).await;
                    }
                    return Some((
                        Err(std::io::Error::other(
                            "the provider's audio stream broke off",
                        )),
                        s,
                    ));
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

impl Gateway {
    pub fn new(config: Arc<Config>, meter: Arc<Meter>, writer: UsageWriter) -> Self {
        Gateway {
            upstreams: Upstreams::new(&config),
            config,
            meter,
            writer,
        }
    }

    /// The catalog entry of a request's model, checked against the endpoint.
    fn model_for(
        &self,
        endpoint: Endpoint,
        model: Option<String>,
    ) -> Result<(Arc<Model>, &Provider), ApiError> {
        let Some(id) = model else {
            return Err(ApiError::invalid_field(
                "model",
                "'model' is required; GET /v1/models lists the models.",
            ));
        };
        let model = self.config.model(&id).ok_or_else(|| ApiError {
            code: "model_not_found",
            ..ApiError::invalid_field(
                "model",
                format!("The model '{id}' does not exist here; GET /v1/models lists the models."),
            )
        })?;
        if !model.endpoints.contains(&endpoint) {
            return Err(ApiError {
                code: "unsupported_endpoint",
                ..ApiError::invalid_field(
                    "model",
                    format!(
                        "The model '{id}' does not support {}; it supports: {}.",
                        endpoint.path(),
                        model
                            .endpoints
                            .iter()
                            .map(|e| e.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            });
        }
        Ok((model.clone(), self.config.provider_of(model)))
    }

    async fn reserve(
        &self,
        inbound: &Inbound,
        model: &Arc<Model>,
        worst: &Usage,
    ) -> Result<Settlement, ApiError> {
        // Nothing is generated that the ledger cannot record.
        self.writer.admit()?;
        let amount = model.pricing.cost(worst);
        let reservation = self
            .meter
            .reserve(&inbound.key, amount, &inbound.request_id)
            .await?;
        Ok(Settlement {
            meter: self.meter.clone(),
            coming: Some(self.writer.coming()),
            reservation: Some(reservation),
            model: model.clone(),
            endpoint: inbound.endpoint,
            request_id: inbound.request_id.clone(),
            key: inbound.key.clone(),
            started: inbound.started,
        })
    }

    /// A JSON model request (every endpoint but the multipart uploads).
    pub async fn json_call(&self, inbound: Inbound, body: Bytes) -> Result<Response, ApiError> {
        let request = RequestFields::parse(&body)?;
        let endpoint = inbound.endpoint;
        let (model, provider) = self.model_for(endpoint, request.string("model")?)?;
        let provider_index = model.provider;
        let stream = request.flag("stream")?;
        let client_format = match endpoint {
            Endpoint::ChatCompletions => Some(Format::ChatCompletions),
            Endpoint::Responses => Some(Format::Responses),
            Endpoint::Messages => Some(Format::AnthropicMessages),
            _ => None,
        };
        let (upstream_format, translation) = match (client_format, provider.kind) {
            (Some(Format::AnthropicMessages), ProviderKind::Anthropic) => {
                (Some(Format::AnthropicMessages), None)
            }
            (Some(Format::AnthropicMessages), ProviderKind::Openai) => (
                Some(Format::ChatCompletions),
                Some(Translation::MessagesToChat),
            ),
            (Some(Format::ChatCompletions), ProviderKind::Anthropic) => (
                Some(Format::AnthropicMessages),
                Some(Translation::ChatToMessages),
            ),
            (Some(Format::Responses), ProviderKind::Openai) if provider.chat_only => (
                Some(Format::ChatCompletions),
                Some(Translation::ResponsesToChat),
            ),
            (Some(format), ProviderKind::Openai) => (Some(format), None),
            (None, ProviderKind::Openai) => (None, None),
            _ => {
                return Err(ApiError::invalid_field(
                    "model",
                    format!(
                        "The model '{}' is served by a provider that does not speak {}.",
                        model.id,
                        endpoint.path()
                    ),
                ))
            }
        };

        // The worst case: every byte of the body an input token, the most output allowed.
        let input_bound = body.len() as u64;
        let output_limit = match endpoint {
            Endpoint::Responses => request.count("max_output_tokens")?,
            Endpoint::ChatCompletions => request
                .count("max_completion_tokens")?
                .or(request.count("max_tokens")?),
            _ => request.count("max_tokens")?,
        };
        let output_bound = output_limit
            .or(model.max_output_tokens)
            .unwrap_or(DEFAULT_OUTPUT_BOUND);
        let choices = request.count("n")?.unwrap_or(1).max(1);
        let (billing, worst) = match endpoint {
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => (
                Billing::Tokens(upstream_format.unwrap_or(Format::ChatCompletions)),
                Usage {
                    input_tokens: input_bound,
                    output_tokens: output_bound.saturating_mul(choices),
                    ..Usage::default()
                },
            ),
            Endpoint::Embeddings => (
                Billing::Embeddings,
                Usage {
                    input_tokens: input_bound,
                    ..Usage::default()
                },
            ),
            Endpoint::ImagesGenerations => (
                Billing::Images { n: choices },
                Usage {
                    input_tokens: input_bound,
                    output_tokens: model.max_output_tokens.unwrap_or(0).saturating_mul(choices),
                    images: choices,
                    ..Usage::default()
                },
            ),
            Endpoint::AudioSpeech => {
                let characters = request
                    .string("input")?
                    .map_or(0, |text| text.chars().count() as u64);
                (
                    Billing::Speech { characters },
                    Usage {
                        characters,
                        ..Usage::default()
                    },
                )
            }
            Endpoint::Moderations => (
                Billing::Moderation,
                Usage {
                    input_tokens: input_bound,
                    ..Usage::default()
                },
            ),
            Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
                return Err(ApiError::bad_request(
                    "invalid_content_type",
                    "This endpoint takes multipart/form-data.",
                ))
            }
        };

        // What goes upstream: the body as it came, but for the model's upstream name
        // and, on streamed chat, a request for usage in the stream.
        let mut replace: Vec<(&str, String)> = Vec::new();
        if model.upstream_model != model.id {
            replace.push((
                "model",
                Value::String(model.upstream_model.clone()).to_string(),
            ));
        }
        let mut strip_usage = false;
        if stream && upstream_format == Some(Format::ChatCompletions) {
            let options: Option<Value> = request.typed("stream_options", "an object")?;
            let mut options = match options {
                Some(Value::Object(map)) => map,
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(_) => {
                    return Err(ApiError::invalid_field(
                        "stream_options",
                        "'stream_options' must be an object.",
                    ))
                }
            };
            let wanted = options.get("include_usage").and_then(Value::as_bool) == Some(true);
            if !wanted {
                options.insert("include_usage".into(), Value::Bool(true));
                replace.push(("stream_options", Value::Object(options).to_string()));
                strip_usage = true;
            }
        }
        let translated = match translation {
            None => None,
            Some(translation) => Some(self.translate_request(translation, &body, &model)?),
        };
        let (upstream_body, upstream_path, original) = match translated {
            Some((bytes, path, original)) => (bytes, path, Some(original)),
            None if replace.is_empty() => (body.clone(), endpoint.path(), None),
            None => (
                Bytes::from(request.0.rewrite(&replace, &[])),
                endpoint.path(),
                None,
            ),
        };
        let input_estimate = body.len() as u64 / 4;
        drop(request);

        let settlement = self.reserve(&inbound, &model, &worst).await?;
        let upstream = self
            .upstreams
            .send(
                provider_index,
                provider,
                upstream_path,
                "application/json",
                UpstreamBody::Bytes(upstream_body),
                &[],
            )
            .await;
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(e) => {
                settlement.settle(Usage::default(), e.status.as_u16()).await;
                return Err(e);
            }
        };
        let status = upstream.status();
        if !status.is_success() {
            return Err(self.upstream_refusal(upstream, provider, settlement).await);
        }
        let is_sse = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));

        if is_sse {
            let (Some(upstream_format), Some(client_format)) = (upstream_format, client_format)
            else {
                settlement.settle(Usage::default(), 502).await;
                return Err(providers::malformed_upstream(
                    provider,
                    "an event stream where none was expected",
                ));
            };
            let relay = Relay {
                upstream: providers::chunks(upstream),
                decoder: SseDecoder::new(self.config.limits.max_stream_frame_bytes),
                tracker: UsageTracker::new(upstream_format),
                upstream_format,
                client_format,
                transform: match (translation, &original) {
                    (Some(translation), Some(original)) => {
                        Transform::Convert(stream_converter(translation, original, &model.id))
                    }
                    _ => Transform::Passthrough { strip_usage },
                },
                out: VecDeque::new(),
                settlement: Some(settlement),
                idle_timeout: provider.idle_timeout,
                input_estimate,
                done: false,
            };
            return Ok(sse_response(relay, &inbound.request_id));
        }
        if let Billing::Speech { .. } = billing {
            let usage = usage_of(billing, &Value::Null);
            return Ok(binary_response(
                upstream,
                settlement,
                usage,
                provider.idle_timeout,
            ));
        }
        let convert = match (translation, &original) {
            (Some(translation), Some(original)) => Some((translation, original, model.id.as_str())),
            _ => None,
        };
        self.finish_json(upstream, provider, settlement, billing, convert)
            .await
    }

    /// Parses a client request and translates it for the provider: the upstream body,
    /// the upstream path and the parsed original (the answer's translation needs it).
    fn translate_request(
        &self,
        translation: Translation,
        body: &[u8],
        model: &Model,
    ) -> Result<(Bytes, &'static str, Value), ApiError> {
        let original: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("The request body is not valid JSON: {e}."),
            )
        })?;
        let upstream = &model.upstream_model;
        let converted = match translation {
            Translation::MessagesToChat => messages_to_chat::convert_request(&original, upstream),
            Translation::ChatToMessages => chat_to_messages::convert_request(
                &original,
                upstream,
                model.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_BOUND),
            ),
            Translation::ResponsesToChat => responses_to_chat::convert_request(&original, upstream),
        }
        .map_err(untranslatable)?;
        let path = match translation {
            Translation::MessagesToChat | Translation::ResponsesToChat => {
                Endpoint::ChatCompletions.path()
            }
            Translation::ChatToMessages => Endpoint::Messages.path(),
        };
        let bytes = serde_json::to_vec(&converted).map_err(ApiError::internal)?;
        Ok((Bytes::from(bytes), path, original))
    }

    /// Reads a whole JSON answer, charges it, and answers it (translated if needed).
    async fn finish_json(
        &self,
        upstream: UpstreamResponse,
        provider: &Provider,
        settlement: Settlement,
        billing: Billing,
        convert: Option<(Translation, &Value, &str)>,
    ) -> Result<Response, ApiError> {
        let content_type = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json"));
        let bytes = match read_limited(upstream, MAX_UPSTREAM_BODY, provider.idle_timeout).await {
            Ok(bytes) => bytes,
            Err(what) => {
                settlement.settle(Usage::default(), 502).await;
                return Err(providers::malformed_upstream(provider, what));
            }
        };
        let is_json = content_type
            .to_str()
            .is_ok_and(|v| v.starts_with("application/json"));
        let answer: Value = if is_json {
            // Billing reads `usage` alone (images also count `data`), so an answer that is
            // passed on as it is gets checked but not built into a tree: an embeddings
            // answer is mostly numbers that would each be parsed and allocated.
            let view = match (convert, billing) {
                (None, Billing::Images { .. }) | (Some(_), _) => None,
                (None, _) => serde_json::from_slice::<RawObject>(&bytes).ok().map(|o| {
                    o.get("usage")
                        .and_then(|u| serde_json::from_str::<Value>(u.get()).ok())
                        .map(|u| Value::Object(serde_json::Map::from_iter([("usage".into(), u)])))
                        .unwrap_or(Value::Null)
                }),
            };
            match view
                .map(Ok)
                .unwrap_or_else(|| serde_json::from_slice(&bytes))
            {
                Ok(answer) => answer,
                Err(_) => {
                    settlement.settle(Usage::default(), 502).await;
                    return Err(providers::malformed_upstream(provider, "invalid JSON"));
                }
            }
        } else {
            Value::Null
        };
        let bytes = match convert {
            None => bytes,
            Some((translation, original, public_model)) => {
                match translate_answer(translation, &answer, original, public_model) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        settlement.settle(Usage::default(), 502).await;
                        return Err(providers::malformed_upstream(
                            provider,
                            &format!("untranslatable ({e})"),
                        ));
                    }
                }
            }
        };
        let usage = usage_of(billing, &answer);
        let cost = settlement.settle_delivered(usage).await?;
        let mut response = Response::new(Body::from(bytes));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, content_type);
        if let Ok(value) = HeaderValue::from_str(&cost.to_string()) {
            headers.insert(COST_HEADER, value);
        }
        Ok(response)
    }

    /// An upstream non-2xx answer: the call costs nothing; client errors pass through
    /// as the provider wrote them, provider failures become 502.
    async fn upstream_refusal(
        &self,
        upstream: UpstreamResponse,
        provider: &Provider,
        settlement: Settlement,
    ) -> ApiError {
        let status = upstream.status().as_u16();
        let retry_after = upstream
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = read_limited(upstream, 64 << 10, provider.idle_timeout)
            .await
            .unwrap_or_default();
        settlement.settle(Usage::default(), status).await;
        if (400..500).contains(&status) && status != 401 && status != 403 {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("The provider refused the request (HTTP {status})."));
            let mut error = ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                "upstream_refused",
                message,
            );
            error.retry_after = retry_after;
            return error;
        }
        if status == 401 || status == 403 {
            tracing::error!(provider = %provider.name, status, "the provider refused Tollgate's credentials");
        }
        providers::upstream_status_error(provider, status)
    }
}

/// A translation that cannot be made is the client's 400, naming the field.
fn untranslatable(e: ConversionError) -> ApiError {
    ApiError {
        code: "untranslatable",
        ..ApiError::invalid_field(&e.param, e.to_string())
    }
}

fn translate_answer(
    translation: Translation,
    answer: &Value,
    original: &Value,
    public_model: &str,
) -> Result<Bytes, ConversionError> {
    let converted = match translation {
        Translation::MessagesToChat => messages_to_chat::convert_response(answer, public_model)?,
        Translation::ChatToMessages => chat_to_messages::convert_response(
            answer,
            public_model,
            tollgate_formats::conversion::unix_now(),
        )?,
        Translation::ResponsesToChat => {
            responses_to_chat::convert_response(answer, original, public_model)?
        }
    };
    serde_json::to_vec(&converted)
        .map(Bytes::from)
        .map_err(|e| ConversionError::new("", e.to_string()))
}

fn stream_converter(
    translation: Translation,
    original: &Value,
    public_model: &str,
) -> Box<dyn StreamConverter + Send> {
    match translation {
        Translation::MessagesToChat => {
            Box::new(messages_to_chat::ResponseStream::new(public_model))
        }
        Translation::ChatToMessages => Box::new(chat_to_messages::ResponseStream::new(
            public_model,
            tollgate_formats::conversion::unix_now(),
            wire_usage::chat_request_wants_usage(original),
        )),
        Translation::ResponsesToChat => Box::new(responses_to_chat::ResponseStream::new(
            original,
            public_model,
        )),
    }
}

/// Reads a whole upstream body, at most `limit` bytes.
async fn read_limited(
    upstream: UpstreamResponse,
    limit: usize,
    idle_timeout: Duration,
) -> Result<Bytes, &'static str> {
    let mut stream = providers::chunks(upstream);
    let mut buffer = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle_timeout, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                if buffer.len() + chunk.len() > limit {
                    return Err("an answer too large");
                }
                buffer.extend_from_slice(&chunk);
            }
            Ok(Some(Err(_))) => return Err("the answer broke off"),
            Ok(None) => return Ok(buffer.freeze()),
            Err(_) => return Err("the answer stalled"),
        }
    }
}

/// Refuses a request with the answer in an error shape; for handlers.
pub fn error_for(endpoint: Endpoint, error: ApiError) -> Response {
    if endpoint == Endpoint::Messages {
        error.into_anthropic_response()
    } else {
        error.into_response()
    }
}

/// One form field read before the upload, re-encoded for the provider.
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

fn quote_header(text: &str) -> String {
    text.replace('"', "%22").replace(['\r', '\n'], " ")
}

fn part_header(
    boundary: &str,
    name: &str,
    file_name: Option<&str>,
    content_type: Option<&str>,
) -> String {
    let mut head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"",
        quote_header(name)
    );
    if let Some(file_name) = file_name {
        head.push_str(&format!("; filename=\"{}\"", quote_header(file_name)));
    }
    head.push_str("\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {}\r\n", quote_header(content_type)));
    }
    head.push_str("\r\n");
    head
}

fn encode_part(boundary: &str, part: &FormPart) -> Bytes {
    let mut out = part_header(
        boundary,
        &part.name,
        part.file_name.as_deref(),
        part.content_type.as_deref(),
    )
    .into_bytes();
    out.extend_from_slice(&part.data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Streams the rest of a multipart upload to the provider: the upload's chunks as they
/// arrive, then the fields after it, then the closing boundary.
enum UploadState {
    File(multer::Multipart<'static>, Box<multer::Field<'static>>),
    Rest(multer::Multipart<'static>),
    Closing,
    Done,
}

impl Gateway {
    /// A multipart upload (transcriptions, translations), streamed through to the provider.
    pub async fn multipart_call(
        &self,
        inbound: Inbound,
        headers: &axum::http::HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multer::parse_boundary(content_type).map_err(|_| {
            ApiError::bad_request(
                "invalid_content_type",
                "This endpoint takes multipart/form-data with a boundary, a 'file' and a 'model' field.",
            )
        })?;
        let limit = self.config.limits.max_upload_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::too_large(limit));
        }
        let over_limit = Arc::new(AtomicBool::new(false));
        let flag = over_limit.clone();
        let mut seen = 0usize;
        let counted = body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            seen += chunk.len();
            if seen > limit {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("upload over the limit"));
            }
            Ok::<_, std::io::Error>(chunk)
        });
        let mut multipart = multer::Multipart::new(counted, boundary);
        let too_large = |e: multer::Error| {
            if over_limit.load(Ordering::Relaxed) {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(
                    "invalid_multipart",
                    format!("The multipart body could not be read: {e}."),
                )
            }
        };

        // Fields before the upload are small and read whole; the model must be known
        // before the upload can be streamed on (if it comes after, the upload is buffered).
        let mut parts: Vec<FormPart> = Vec::new();
        let mut model_id: Option<String> = None;
        let mut upload: Option<multer::Field<'static>> = None;
        while let Some(field) = multipart.next_field().await.map_err(too_large)? {
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(|m| m.to_string());
            if file_name.is_some() && model_id.is_some() {
                upload = Some(field);
                break;
            }
            let data = field.bytes().await.map_err(too_large)?;
            if name == "model" && file_name.is_none() {
                model_id = Some(
                    String::from_utf8(data.to_vec())
                        .map_err(|_| ApiError::invalid_field("model", "'model' must be text."))?,
                );
            }
            parts.push(FormPart {
                name,
                file_name,
                content_type,
                data,
            });
        }
        if upload.is_none() && !parts.iter().any(|p| p.file_name.is_some()) {
            return Err(ApiError::invalid_field(
                "file",
                "A 'file' field with the audio is required.",
            ));
        }
        let (model, provider) = self.model_for(inbound.endpoint, model_id)?;
        if provider.kind != ProviderKind::Openai {
            return Err(ApiError::invalid_field(
                "model",
                format!(
                    "The model '{}' is served by a provider without {}.",
                    model.id,
                    inbound.endpoint.path()
                ),
            ));
        }
        for part in &mut parts {
            if part.name == "model" && part.file_name.is_none() {
                part.data = Bytes::from(model.upstream_model.clone());
            }
        }

        // Worst case: audio at 8 kbit/s (1,000 bytes a second) for the whole body.
        let seconds_bound = (declared.unwrap_or(limit) as u64).div_ceil(1000);
        let worst = Usage {
            audio_seconds: seconds_bound,
            input_tokens: seconds_bound.saturating_mul(AUDIO_TOKENS_PER_SECOND),
            output_tokens: model.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_BOUND),
            ..Usage::default()
        };
        let settlement = self.reserve(&inbound, &model, &worst).await?;

        let boundary = format!("tollgate-{}", uuid::Uuid::new_v4().simple());
        let mut prefix = Vec::new();
        for part in &parts {
            prefix.extend_from_slice(&encode_part(&boundary, part));
        }
        let state = match upload {
            Some(field) => {
                prefix.extend_from_slice(
                    part_header(
                        &boundary,
                        field.name().unwrap_or("file"),
                        field.file_name(),
                        field.content_type().map(|m| m.to_string()).as_deref(),
                    )
                    .as_bytes(),
                );
                UploadState::File(multipart, Box::new(field))
            }
            None => UploadState::Closing,
        };
        let tail_boundary = boundary.clone();
        let rest = futures_util::stream::unfold(state, move |state| {
            let boundary = tail_boundary.clone();
            async move {
                match state {
                    UploadState::File(multipart, mut field) => match field.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), UploadState::File(multipart, field))),
                        Ok(None) => {
                            drop(field);
                            Some((
                                Ok(Bytes::from_static(b"\r\n")),
                                UploadState::Rest(multipart),
                            ))
                        }
                        Err(e) => {
                            Some((Err(std::io::Error::other(e.to_string())), UploadState::Done))
                        }
                    },
                    UploadState::Rest(mut multipart) => match multipart.next_field().await {
                        Ok(Some(field)) => {
                            let part = FormPart {
                                name: field.name().unwrap_or("").to_string(),
                                file_name: field.file_name().map(str::to_string),
                                content_type: field.content_type().map(|m| m.to_string()),
                                data: Bytes::new(),
                            };
                            match field.bytes().await {
                                Ok(data) => Some((
                                    Ok(encode_part(&boundary, &FormPart { data, ..part })),
                                    UploadState::Rest(multipart),
                                )),
                                Err(e) => Some((
                                    Err(std::io::Error::other(e.to_string())),
                                    UploadState::Done,
                                )),
                            }
                        }
                        Ok(None) => Some((Ok(Bytes::new()), UploadState::Closing)),
                        Err(e) => {
                            Some((Err(std::io::Error::other(e.to_string())), UploadState::Done))
                        }
                    },
                    UploadState::Closing => Some((
                        Ok(Bytes::from(format!("--{boundary}--\r\n"))),
                        UploadState::Done,
                    )),
                    UploadState::Done => None,
                }
            }
        });
        let stream =
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(prefix)) })
                .chain(rest);
        let upstream = self
            .upstreams
            .send(
                model.provider,
                provider,
                inbound.endpoint.path(),
                &format!("multipart/form-data; boundary={boundary}"),
                UpstreamBody::stream(stream),
                &[],
            )
            .await;
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(e) => {
                let status = e.status.as_u16();
                settlement.settle(Usage::default(), status).await;
                if over_limit.load(Ordering::Relaxed) {
                    return Err(ApiError::too_large(limit));
                }
                return Err(e);
            }
        };
        if !upstream.status().is_success() {
            let error = self.upstream_refusal(upstream, provider, settlement).await;
            if over_limit.load(Ordering::Relaxed) {
                return Err(ApiError::too_large(limit));
            }
            return Err(error);
        }
        self.finish_json(upstream, provider, settlement, Billing::Transcription, None)
            .await
    }
}
