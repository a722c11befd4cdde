//! `POST /v1/moderations`, `GET /v1/models` and `GET /v1/models/{id}` (OpenAI shape, or
//! Anthropic's when the request carries `anthropic-version`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::error::Flavor;
use crate::http::{self, Ctx};
use crate::{content, Shared};

const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

pub(crate) async fn moderations(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run_moderations(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run_moderations(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    // One result per string; a multimodal array (objects) is one input.
    let inputs: Vec<Vec<&str>> = match req.get("input") {
        Some(Value::String(s)) => vec![vec![s.as_str()]],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| vec![s])
            .collect(),
        Some(v @ Value::Array(a)) if !a.is_empty() => vec![content::content_texts(v)],
        _ => {
            return Err(crate::error::bad_request(
                Flavor::OpenAi,
                "'input' is a required property",
                Some("input"),
            ))
        }
    };
    let dirs = http::directives(Flavor::OpenAi, inputs.iter().flatten().copied())?;
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if dirs.malformed {
        return Ok(http::malformed());
    }
    let flagged = dirs.flagged;
    let results = inputs
        .iter()
        .map(|_| Moderation {
            flagged,
            categories: Categories(flagged, |c, f| Value::Bool(f && c == "harassment")),
            category_scores: Categories(flagged, |c, f| {
                Value::from(if f && c == "harassment" { 0.93 } else { 0.0001 })
            }),
            category_applied_input_types: Categories(flagged, |_, _| Value::from(vec!["text"])),
        })
        .collect();
    Ok(http::json_bytes(http::pretty(&ModerationList {
        id: s.id("modr-", 24),
        model,
        results,
    })))
}

#[derive(Serialize)]
struct ModerationList<'a> {
    id: String,
    model: &'a str,
    results: Vec<Moderation>,
}

#[derive(Serialize)]
struct Moderation {
    flagged: bool,
    categories: Categories,
    category_scores: Categories,
    category_applied_input_types: Categories,
}

/// A map from each category, in OpenAI's order, to a value of (category, flagged).
struct Categories(bool, fn(&str, bool) -> Value);

impl Serialize for Categories {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(CATEGORIES.len()))?;
        for c in CATEGORIES {
            map.serialize_entry(c, &(self.1)(c, self.0))?;
        }
        map.end()
    }
}

const OPENAI_MODELS: [&str; 10] = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1-mini",
    "gpt-5-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "gpt-image-1",
    "tts-1",
    "whisper-1",
    "omni-moderation-latest",
];

const ANTHROPIC_MODELS: [(&str, &str); 5] = [
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("claude-opus-4-1", "Claude Opus 4.1"),
    ("claude-opus-4-6", "Claude Opus 4.6"),
    ("claude-opus-4-8", "Claude Opus 4.8"),
];

/// `GET /v1/models/{id}`: one model, or the provider's 404.
pub(crate) async fn model(
    State(s): State<Arc<Shared>>,
    ctx: Ctx,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if ctx.headers.contains_key("anthropic-version") {
        if let Err(r) = http::check_anthropic(&s, &ctx) {
            return r;
        }
        return match ANTHROPIC_MODELS.iter().find(|(m, _)| *m == id) {
            Some((id, name)) => http::json_bytes(http::compact(&AnthropicModel {
                kind: "model",
                id,
                display_name: name,
                created_at: "2025-01-01T00:00:00Z",
            })),
            None => {
                crate::error::anthropic(axum::http::StatusCode::NOT_FOUND, &format!("model: {id}"))
            }
        };
    }
    if let Err(r) = http::check_openai_key(&s, &ctx) {
        return r;
    }
    match OPENAI_MODELS.iter().find(|m| **m == id) {
        Some(id) => http::json_bytes(http::pretty(&OpenAiModel {
            id,
            object: "model",
            created: 1_700_000_000,
            owned_by: "system",
        })),
        None => crate::error::openai(
            axum::http::StatusCode::NOT_FOUND,
            &format!("The model '{id}' does not exist"),
            Some("model"),
            Some("model_not_found"),
        ),
    }
}

pub(crate) async fn models(State(s): State<Arc<Shared>>, ctx: Ctx) -> Response {
    if ctx.headers.contains_key("anthropic-version") {
        if let Err(r) = http::check_anthropic(&s, &ctx) {
            return r;
        }
        let data: Vec<_> = ANTHROPIC_MODELS
            .iter()
            .map(|(id, name)| AnthropicModel {
                kind: "model",
                id,
                display_name: name,
                created_at: "2025-01-01T00:00:00Z",
            })
            .collect();
        return http::json_bytes(http::compact(&AnthropicList {
            first_id: data.first().map(|m| m.id),
            last_id: data.last().map(|m| m.id),
            data: &data,
            has_more: false,
        }));
    }
    if let Err(r) = http::check_openai_key(&s, &ctx) {
        return r;
    }
    let data = OPENAI_MODELS
        .iter()
        .map(|id| OpenAiModel {
            id,
            object: "model",
            created: 1_700_000_000,
            owned_by: "system",
        })
        .collect();
    http::json_bytes(http::pretty(&OpenAiList {
        object: "list",
        data,
    }))
}

#[derive(Serialize)]
struct OpenAiList<'a> {
    object: &'static str,
    data: Vec<OpenAiModel<'a>>,
}

#[derive(Serialize)]
struct OpenAiModel<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct AnthropicList<'a> {
    data: &'a [AnthropicModel<'a>],
    has_more: bool,
    first_id: Option<&'a str>,
    last_id: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    display_name: &'a str,
    created_at: &'static str,
}
