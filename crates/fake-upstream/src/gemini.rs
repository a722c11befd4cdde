//! Google's Gemini API, as `generativelanguage.googleapis.com/v1beta` answers it:
//! `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE with
//! `alt=sse`, `data: {…}\r\n\r\n` frames; without it a JSON array of the chunks),
//! `:embedContent` and `:batchEmbedContents`.
//!
//! - **Key**: `x-goog-api-key` (or `?key=`); none is Google's 403 `PERMISSION_DENIED`, a
//!   wrong one (when [`crate::Options::gemini_api_key`] is set) the 400 `INVALID_ARGUMENT`
//!   `API key not valid` with `reason: API_KEY_INVALID`.
//! - **Refused as Gemini refuses**: an unknown top-level field (`Invalid JSON payload
//!   received. Unknown name "x"`), no `contents`, a role other than `user` / `model`, a
//!   content without parts; errors are `{"error": {"code", "message", "status"}}`.
//! - **Input tokens** `T` = Σ over `contents` and `systemInstruction` of (4 + words of
//!   their `text` parts and `functionResponse.response` values as text). Output tokens as
//!   the other formats (words; for a call, the fragments of its arguments).
//! - **`usageMetadata`**: `promptTokenCount` `T` (cached included),
//!   `candidatesTokenCount`, `totalTokenCount`, `cachedContentTokenCount` (`cached=N`,
//!   at most `T`), `thoughtsTokenCount` (`thoughts=N`, with one thought part when
//!   `generationConfig.thinkingConfig.includeThoughts`), `promptTokensDetails`.
//!   Streams repeat the running usage on every chunk, the total on the last.
//! - **Directives**: `words`, `tool`, `tool_name`, `cached`, `thoughts`, `status`,
//!   `no_usage`, `cut_after`, `no_terminator` (the finishing chunk is left out),
//!   `malformed`, `blocked=prompt` (`promptFeedback.blockReason: SAFETY`, no candidates),
//!   `blocked=answer` (`finishReason: SAFETY`, no content).
//! - **Embeddings**: 16 values per text (`outputDimensionality` to choose), derived from
//!   the text; no usage, as Gemini reports none; each `requests[].model` must be the
//!   URL's `models/{model}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::content::{self, Finish, PlanInput, Reply, ToolSpec};
use crate::directives::Directives;
use crate::http::{self, Ctx};
use crate::stream::{self, Frame};
use crate::Shared;

pub(crate) type Params = std::collections::HashMap<String, String>;

const FIELDS: [&str; 7] = [
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
];

/// Google's error body.
pub(crate) fn error(code: u16, message: &str) -> Response {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    let http = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        http,
        axum::Json(json!({"error": {"code": code, "message": message, "status": status}})),
    )
        .into_response()
}

fn check_key(s: &Shared, ctx: &Ctx, params: &Params) -> Result<(), Response> {
    let sent = ctx
        .headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("key").cloned());
    match (sent, &s.opts.gemini_api_key) {
        (None, _) => Err(error(403, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")),
        (Some(got), Some(want)) if &got != want => {
            let body = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
            Err((StatusCode::BAD_REQUEST, axum::Json(body)).into_response())
        }
        _ => Ok(()),
    }
}

/// `POST /v1beta/models/{model}:{method}`.
pub(crate) async fn handle(
    State(s): State<Arc<Shared>>,
    Path(target): Path<String>,
    Query(params): Query<Params>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    match run(&s, &target, &params, &ctx, &body, true).await {
        Ok(r) | Err(r) => r,
    }
}

/// Answers `{model}:{method}`; `check_key`: the API key is required (Vertex AI
/// authenticates with a bearer token instead, checked by its caller).
pub(crate) async fn run(
    s: &Arc<Shared>,
    target: &str,
    params: &Params,
    ctx: &Ctx,
    body: &Bytes,
    check_key_first: bool,
) -> Result<Response, Response> {
    let Some((model, method)) = target.split_once(':') else {
        return Err(error(404, "Method not found."));
    };
    if check_key_first {
        check_key(s, ctx, params)?;
    }
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| error(400, &format!("Invalid JSON payload received. {e}")))?;
    match method {
        "generateContent" => generate(s, ctx, model, &req, None).await,
        "streamGenerateContent" => {
            let sse = params.get("alt").map(String::as_str) == Some("sse");
            generate(s, ctx, model, &req, Some(sse)).await
        }
        "embedContent" => {
            let content = req.get("content").ok_or_else(|| {
                error(400, "* EmbedContentRequest.content: content is required.\n")
            })?;
            let values = embedding(content, req.get("outputDimensionality"));
            Ok(axum::Json(json!({"embedding": {"values": values}})).into_response())
        }
        "batchEmbedContents" => {
            let requests = req
                .get("requests")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    error(
                        400,
                        "* BatchEmbedContentsRequest.requests: requests is required.\n",
                    )
                })?;
            let want = format!("models/{model}");
            let mut out = Vec::new();
            for (i, one) in requests.iter().enumerate() {
                if one.get("model").and_then(Value::as_str) != Some(want.as_str()) {
                    return Err(error(400, &format!("* BatchEmbedContentsRequest.requests[{i}].model: the model must be the same as in the URL ({want}).\n")));
                }
                let content = one.get("content").ok_or_else(|| error(400, &format!("* BatchEmbedContentsRequest.requests[{i}].content: content is required.\n")))?;
                out.push(json!({"values": embedding(content, one.get("outputDimensionality"))}));
            }
            Ok(axum::Json(json!({"embeddings": out})).into_response())
        }
        _ => Err(error(404, &format!("Method not found: {method}."))),
    }
}

fn embedding(content: &Value, dimensions: Option<&Value>) -> Vec<Value> {
    let n = dimensions.and_then(Value::as_u64).unwrap_or(16).min(3072);
    let text = texts(content).join(" ");
    let seed = content::fnv1a(text.as_bytes());
    (0..n)
        .map(|i| {
            let x = content::mix(seed ^ i) % 2001;
            json!((x as f64 - 1000.0) / 1000.0)
        })
        .collect()
}

/// The text of a content's parts (function responses as JSON text).
fn texts(content: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for part in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            out.push(t.to_string());
        }
        if let Some(r) = part.pointer("/functionResponse/response") {
            out.push(match r.get("result").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => r.to_string(),
            });
        }
    }
    out
}

fn validate(req: &Value) -> Result<&Vec<Value>, Response> {
    let Some(map) = req.as_object() else {
        return Err(error(400, "Invalid JSON payload received."));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(error(
            400,
            &format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ),
        ));
    }
    let contents = req
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            error(
                400,
                "* GenerateContentRequest.contents: contents is not specified\n",
            )
        })?;
    for (i, c) in contents.iter().enumerate() {
        match c.get("role").and_then(Value::as_str) {
            None | Some("user" | "model") => {}
            Some(_) => return Err(error(400, "Please use a valid role: user, model.")),
        }
        if c.get("parts")
            .and_then(Value::as_array)
            .is_none_or(|p| p.is_empty())
        {
            return Err(error(400, &format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")));
        }
    }
    Ok(contents)
}

async fn generate(
    s: &Arc<Shared>,
    ctx: &Ctx,
    model: &str,
    req: &Value,
    stream: Option<bool>,
) -> Result<Response, Response> {
    let contents = validate(req)?;
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c.get("role").and_then(Value::as_str) != Some("model"));
    let last_texts: Vec<String> = last_user.map(texts).unwrap_or_default();
    let dirs =
        Directives::parse(last_texts.iter().map(String::as_str)).map_err(|m| error(400, &m))?;
    if let Some(r) = http::prelude(s, ctx, &dirs, crate::error::Flavor::OpenAi).await {
        // A `status=N` directive: the error in Google's shape.
        if let Some(code) = dirs.status {
            return Err(error(
                code,
                "Fake upstream error injected by a [[fake:status]] directive.",
            ));
        }
        return Ok(r);
    }
    let mut input: u64 = contents
        .iter()
        .map(|c| {
            4 + texts(c)
                .iter()
                .map(|t| content::count_words(t))
                .sum::<u64>()
        })
        .sum();
    if let Some(system) = req.get("systemInstruction") {
        input += 4 + texts(system)
            .iter()
            .map(|t| content::count_words(t))
            .sum::<u64>();
    }
    let config = req.get("generationConfig");
    let declarations = req
        .pointer("/tools/0/functionDeclarations")
        .and_then(Value::as_array);
    let tool = declarations.and_then(|d| {
        let pick = match &dirs.tool_name {
            Some(name) => d
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name)),
            None => d.first(),
        }?;
        Some(ToolSpec {
            name: pick.get("name").and_then(Value::as_str)?,
            schema: pick
                .get("parametersJsonSchema")
                .or_else(|| pick.get("parameters")),
        })
    });
    let stops: Vec<&str> = config
        .and_then(|c| c.get("stopSequences"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let last_is_tool_result = last_user
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()));
    let plan = content::plan(
        PlanInput {
            words: dirs.words,
            want_tool: dirs.tool,
            max_tokens: dirs.max_tokens(
                config
                    .and_then(|c| c.get("maxOutputTokens"))
                    .and_then(Value::as_u64),
            ),
            stop: stops,
            tool,
            last_is_tool_result,
        },
        String::new,
    );
    let include_thoughts = config
        .and_then(|c| c.pointer("/thinkingConfig/includeThoughts"))
        .and_then(Value::as_bool)
        == Some(true);
    let response_id = s.id("", 22);
    let cached = dirs.cached.min(input);
    let output = plan.output_tokens();
    let usage = |prompt_only: bool| -> Value {
        let prompt = dirs.report_input.unwrap_or(input);
        if prompt_only {
            return json!({"promptTokenCount": prompt, "totalTokenCount": prompt,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
        }
        let candidates = dirs.report_output.unwrap_or(output);
        let mut u = json!({"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": prompt.saturating_add(candidates).saturating_add(dirs.thoughts),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
        if cached > 0 {
            u["cachedContentTokenCount"] = cached.into();
        }
        if dirs.thoughts > 0 {
            u["thoughtsTokenCount"] = dirs.thoughts.into();
        }
        u
    };
    let envelope = |candidate: Option<Value>, usage: Option<Value>| -> Value {
        let mut out = json!({});
        if let Some(c) = candidate {
            out["candidates"] = json!([c]);
        }
        if let Some(u) = usage.filter(|_| !dirs.no_usage) {
            out["usageMetadata"] = u;
        }
        out["modelVersion"] = model.into();
        out["responseId"] = response_id.clone().into();
        out
    };
    let blocked = match dirs.blocked.as_deref() {
        Some("prompt") => Some({
            let mut b = envelope(None, Some(usage(true)));
            b["promptFeedback"] = json!({"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}]});
            b
        }),
        Some(_) => Some(envelope(
            Some(
                json!({"finishReason": "SAFETY", "index": 0, "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}),
            ),
            Some(usage(true)),
        )),
        None => None,
    };
    let finish = match plan.finish {
        Finish::Length => "MAX_TOKENS",
        _ => "STOP",
    };
    let thought = (include_thoughts && dirs.thoughts > 0).then(
        || json!({"text": "**Considering the request** I will answer plainly.", "thought": true}),
    );
    let Some(sse) = stream else {
        if dirs.malformed {
            return Ok(http::malformed());
        }
        if let Some(b) = blocked {
            return Ok(axum::Json(b).into_response());
        }
        let mut parts: Vec<Value> = thought.into_iter().collect();
        match &plan.reply {
            Reply::Text(_) => parts.push(json!({"text": plan.text()})),
            Reply::Tool(call) => parts.push(json!({"functionCall": {"name": call.name,
                "args": serde_json::from_str::<Value>(&call.arguments).unwrap_or(json!({}))}})),
        }
        let answer = envelope(
            Some(
                json!({"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}),
            ),
            Some(usage(false)),
        );
        return Ok(axum::Json(answer).into_response());
    };
    // Streamed: one chunk per word (or one for the call), the running usage on each,
    // then the finishing chunk with the total.
    let frame = |v: &Value| -> Bytes {
        if sse {
            Bytes::from(format!("data: {v}\r\n\r\n"))
        } else {
            Bytes::from(v.to_string())
        }
    };
    let mut frames = Vec::new();
    if let Some(b) = blocked {
        frames.push(Frame::terminal(frame(&b)));
    } else {
        if let Some(t) = thought {
            frames.push(Frame::aside(frame(&envelope(
                Some(json!({"content": {"parts": [t], "role": "model"}, "index": 0})),
                Some(usage(true)),
            ))));
        }
        match &plan.reply {
            Reply::Text(words) => {
                for w in words {
                    frames.push(Frame::content(frame(&envelope(
                        Some(json!({"content": {"parts": [{"text": w}], "role": "model"}, "index": 0})),
                        Some(usage(true)),
                    ))));
                }
            }
            Reply::Tool(call) => frames.push(Frame::content(frame(&envelope(
                Some(
                    json!({"content": {"parts": [{"functionCall": {"name": call.name,
                    "args": serde_json::from_str::<Value>(&call.arguments).unwrap_or(json!({}))}}],
                    "role": "model"}, "index": 0}),
                ),
                Some(usage(true)),
            )))),
        }
        frames.push(Frame::terminal(frame(&envelope(
            Some(json!({"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": finish, "index": 0})),
            Some(usage(false)),
        ))));
    }
    let delay = dirs.chunk_delay(s.opts.chunk_delay);
    let fault = http::fault(&dirs, Bytes::new);
    if sse {
        return Ok(http::sse_response(stream::body(
            s.clone(),
            frames,
            delay,
            fault,
        )));
    }
    // Without `alt=sse`: one JSON array of the chunks.
    let mut array = Vec::from(&b"["[..]);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            array.extend_from_slice(b",\r\n");
        }
        array.extend_from_slice(&f.bytes);
    }
    array.push(b']');
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(array),
    )
        .into_response())
}
