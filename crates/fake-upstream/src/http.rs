//! Router, request recording, and the helpers every handler shares: auth, JSON
//! parsing, directives, the pre-response prelude, and response builders.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::conn::ConnHandle;
use crate::directives::Directives;
use crate::error::{self, Flavor};
use crate::{
    audio, azure, bedrock, chat, completions, control, embeddings, faults, gemini, images,
    messages, misc, responses, stream, transcribe, vertex, Received, Shared,
};

pub(crate) type AppState = State<Arc<Shared>>;

/// All routes: the model routes (counted, recorded, faulted) and the `/__fake`
/// control routes (none of that).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let model = Router::new()
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/responses", post(responses::handle))
        .route("/v1/embeddings", post(embeddings::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/images/generations", post(images::handle))
        .route("/v1/images/edits", post(images::edits))
        .route("/v1/audio/speech", post(audio::speech))
        .route("/v1/audio/transcriptions", post(transcribe::transcriptions))
        .route("/v1/audio/translations", post(transcribe::translations))
        .route("/v1/moderations", post(misc::moderations))
        .route("/v1/models", get(misc::models))
        .route("/v1/messages", post(messages::handle))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models/{id}", get(misc::model))
        .route(
            "/openai/deployments/{deployment}/{*operation}",
            post(azure::deployment),
        )
        .route("/openai/responses", post(azure::responses))
        .route("/v1beta/models/{*target}", post(gemini::handle))
        .route("/model/{model}/{operation}", post(bedrock::handle))
        .route("/token", post(vertex::issue))
        .route(
            "/v1/projects/{project}/locations/{region}/publishers/{publisher}/models/{target}",
            post(vertex::handle),
        )
        .route("/openai/v1/{*operation}", post(azure::v1))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            faults::apply,
        ))
        .layer(middleware::from_fn_with_state(shared.clone(), record));
    Router::new()
        .route(
            "/__fake/faults",
            post(control::set_fault).delete(control::clear_faults),
        )
        .route("/__fake/stats", get(control::stats))
        .merge(model)
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

async fn not_found(req: Request) -> Response {
    let message = format!("Invalid URL ({} {})", req.method(), req.uri().path());
    error::openai(StatusCode::NOT_FOUND, &message, None, None)
}

/// Counts every model request and, outside fast mode, records it.
async fn record(State(s): AppState, req: Request, next: Next) -> Response {
    s.counters.request(req.uri().path());
    if s.opts.fast {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let mut received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: Bytes::new(),
        body_len: 0,
    };
    let multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
    if multipart {
        // Uploads are counted as they stream through, never held.
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let counted = body.into_data_stream().map(move |chunk| {
            if let Ok(b) = &chunk {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            chunk
        });
        let resp = next
            .run(Request::from_parts(parts, Body::from_stream(counted)))
            .await;
        received.body_len = seen.load(Ordering::Relaxed);
        s.record(received);
        return resp;
    }
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => {
            return error::openai(
                StatusCode::BAD_REQUEST,
                "Could not read the request body.",
                None,
                None,
            )
        }
    };
    received.body_len = bytes.len() as u64;
    received.body = bytes.clone();
    let anthropic = received.path.starts_with("/v1/messages");
    s.record(received);
    let mut resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (name, id) = if anthropic {
        ("request-id", s.id("req_011C", 20))
    } else {
        ("x-request-id", s.id("req_", 32))
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// Request headers and the connection handle (for `reset`).
pub(crate) struct Ctx {
    pub(crate) headers: HeaderMap,
    pub(crate) conn: Option<ConnHandle>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self::from_parts(parts))
    }
}

impl Ctx {
    pub(crate) fn from_parts(parts: &Parts) -> Self {
        Self {
            headers: parts.headers.clone(),
            conn: parts
                .extensions
                .get::<ConnectInfo<ConnHandle>>()
                .map(|c| c.0.clone()),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// OpenAI auth: `Authorization: Bearer KEY` when a key is configured.
pub(crate) fn check_openai_key(s: &Shared, ctx: &Ctx) -> Result<(), Response> {
    let Some(want) = &s.opts.openai_api_key else {
        return Ok(());
    };
    match ctx
        .header("authorization")
        .map(|v| v.strip_prefix("Bearer "))
    {
        None | Some(None) => Err(error::openai(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            None,
            None,
        )),
        Some(Some(got)) if got.trim() == want => Ok(()),
        Some(Some(_)) => Err(error::openai(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            None,
            Some("invalid_api_key"),
        )),
    }
}

/// Anthropic auth: `x-api-key` (equal to the configured key, if any) and
/// `anthropic-version`.
pub(crate) fn check_anthropic(s: &Shared, ctx: &Ctx) -> Result<(), Response> {
    match (ctx.header("x-api-key"), &s.opts.anthropic_api_key) {
        (None, _) => {
            return Err(error::anthropic(
                StatusCode::UNAUTHORIZED,
                "x-api-key header is required",
            ))
        }
        (Some(got), Some(want)) if got != want => {
            return Err(error::anthropic(
                StatusCode::UNAUTHORIZED,
                "invalid x-api-key",
            ))
        }
        _ => {}
    }
    if ctx.header("anthropic-version").is_none() {
        return Err(error::anthropic(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        ));
    }
    Ok(())
}

/// Parses a JSON object body.
pub(crate) fn parse_json(flavor: Flavor, body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(error::bad_request(
            flavor,
            "The request body must be a JSON object.",
            None,
        )),
        Err(e) => {
            let message = match flavor {
                Flavor::OpenAi => format!(
                    "We could not parse the JSON body of your request. (HINT: This likely \
                     means you aren't using your HTTP library correctly. The OpenAI API \
                     expects a JSON payload, but what was sent was not valid JSON.) ({e})"
                ),
                Flavor::Anthropic => format!("invalid JSON body: {e}"),
            };
            Err(error::bad_request(flavor, &message, None))
        }
    }
}

/// The `model` field, required.
pub(crate) fn require_model(flavor: Flavor, req: &Value) -> Result<&str, Response> {
    match req.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(match flavor {
            Flavor::OpenAi => error::openai(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                None,
                None,
            ),
            Flavor::Anthropic => error::anthropic(StatusCode::BAD_REQUEST, "model: Field required"),
        }),
    }
}

/// Parses the directives of these texts; a bad one is a 400.
pub(crate) fn directives<'a>(
    flavor: Flavor,
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<Directives, Response> {
    Directives::parse(texts).map_err(|m| error::bad_request(flavor, &m, None))
}

/// Waits for the first byte, then answers `reset` and `status=N` directives.
pub(crate) async fn prelude(
    s: &Shared,
    ctx: &Ctx,
    dirs: &Directives,
    flavor: Flavor,
) -> Option<Response> {
    let wait = dirs.first_byte.unwrap_or(s.opts.latency);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if dirs.reset {
        if let Some(conn) = &ctx.conn {
            conn.kill();
            return Some(StatusCode::OK.into_response());
        }
        // No connection handle (not served by `start`): fail the body at once instead.
        let failing =
            futures_util::stream::once(async { Err::<Bytes, _>(std::io::Error::other("reset")) });
        return Some(Body::from_stream(failing).into_response());
    }
    let echo = dirs.echo_headers.then(|| echo_headers(&ctx.headers));
    dirs.status
        .map(|code| error::injected(flavor, code, dirs.retry_after, echo.as_deref()))
}

/// The request's headers as `name: value` pairs, verbatim (secrets included), the way
/// some providers quote the request in a validation error.
fn echo_headers(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(n, v)| format!("{}: {}", n.as_str(), String::from_utf8_lossy(v.as_bytes())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A 200 whose body claims to be JSON and is not.
pub(crate) fn malformed() -> Response {
    json_bytes(Bytes::from_static(
        b"{\n  \"id\": \"fake-malformed\",\n  \"object\": this isn't json!\n",
    ))
}

/// A 200 JSON response.
pub(crate) fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Pretty JSON with two-space indentation, as OpenAI sends non-streamed bodies.
pub(crate) fn pretty<T: Serialize>(v: &T) -> Bytes {
    serde_json::to_vec_pretty(v)
        .map(Bytes::from)
        .unwrap_or_default()
}

/// Compact JSON, as Anthropic sends.
pub(crate) fn compact<T: Serialize>(v: &T) -> Bytes {
    serde_json::to_vec(v).map(Bytes::from).unwrap_or_default()
}

/// One SSE event: an optional `event:` line, one `data:` line, a blank line.
pub(crate) fn sse<T: Serialize>(event: Option<&str>, data: &T) -> Bytes {
    let json = serde_json::to_vec(data).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 48);
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The SSE comment line the `comments` directive puts before content events.
pub(crate) fn with_comment(comments: bool, frame: Bytes) -> Bytes {
    if !comments {
        return frame;
    }
    let mut out = Vec::with_capacity(frame.len() + 14);
    out.extend_from_slice(b": keep-alive\n\n");
    out.extend_from_slice(&frame);
    Bytes::from(out)
}

/// An event-stream response.
pub(crate) fn sse_response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Streams `frames` as SSE with the configured or directed pacing and fault.
pub(crate) fn sse_stream(
    s: &Arc<Shared>,
    dirs: &Directives,
    frames: Vec<stream::Frame>,
    error_event: impl FnOnce() -> Bytes,
) -> Response {
    let fault = fault(dirs, error_event);
    let delay = dirs.chunk_delay(s.opts.chunk_delay);
    sse_response(stream::body(s.clone(), frames, delay, fault))
}

/// An endless SSE stream: the frames before the first content chunk, then content
/// chunks from `next` for ever (the `endless` directive).
pub(crate) fn sse_endless(
    s: &Arc<Shared>,
    dirs: &Directives,
    frames: Vec<stream::Frame>,
    next: stream::ContentGen,
) -> Response {
    let prefix = frames
        .into_iter()
        .take_while(|f| f.part != stream::Part::Content)
        .collect();
    let delay = dirs.chunk_delay(s.opts.chunk_delay);
    sse_response(stream::endless(s.clone(), prefix, next, delay))
}

/// The stream fault the directives ask for.
pub(crate) fn fault(
    dirs: &Directives,
    error_event: impl FnOnce() -> Bytes,
) -> Option<stream::Fault> {
    match (dirs.cut_after, dirs.error_after) {
        (Some(n), _) => Some(stream::Fault::CutAfter(n)),
        (None, Some(n)) => Some(stream::Fault::ErrorAfter(n, error_event())),
        (None, None) => dirs.no_terminator.then_some(stream::Fault::NoTerminator),
    }
}

/// `value` as a bool, false when absent.
pub(crate) fn flag(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}
