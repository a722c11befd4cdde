//! `POST /v1/embeddings`: deterministic unit vectors, float or base64.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::content;
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::{fast, Shared};

/// Largest `dimensions` accepted.
const MAX_DIMENSIONS: u64 = 8192;

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

/// One input to embed.
enum Input<'a> {
    Text(&'a str),
    Tokens(Vec<u64>),
}

fn invalid_input() -> Response {
    error::bad_request(
        Flavor::OpenAi,
        "'$.input' is invalid. Please check the API reference: \
         https://platform.openai.com/docs/api-reference.",
        Some("input"),
    )
}

fn tokens(v: &Value) -> Option<Vec<u64>> {
    v.as_array()?.iter().map(Value::as_u64).collect()
}

fn inputs(v: Option<&Value>) -> Result<Vec<Input<'_>>, Response> {
    let items = match v {
        None | Some(Value::Null) => {
            return Err(error::bad_request(
                Flavor::OpenAi,
                "'input' is a required property",
                Some("input"),
            ))
        }
        Some(Value::String(s)) => vec![Input::Text(s)],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            vec![Input::Tokens(a.iter().filter_map(Value::as_u64).collect())]
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            let mut out = Vec::with_capacity(a.len());
            for item in a {
                match item {
                    Value::String(s) => out.push(Input::Text(s)),
                    Value::Array(_) => {
                        out.push(Input::Tokens(tokens(item).ok_or_else(invalid_input)?))
                    }
                    _ => return Err(invalid_input()),
                }
            }
            out
        }
        Some(_) => return Err(invalid_input()),
    };
    let empty = items.iter().any(|i| match i {
        Input::Text(s) => s.is_empty(),
        Input::Tokens(t) => t.is_empty(),
    });
    if empty {
        return Err(invalid_input());
    }
    Ok(items)
}

async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    if let Some(canned) = &s.canned {
        return Ok(fast::embeddings(s, canned).await);
    }
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = http::require_model(Flavor::OpenAi, &req)?;
    let items = inputs(req.get("input"))?;
    let texts = items.iter().filter_map(|i| match i {
        Input::Text(s) => Some(*s),
        Input::Tokens(_) => None,
    });
    let dirs = http::directives(Flavor::OpenAi, texts)?;
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => default_dimensions(model),
        Some(v) => match v.as_u64() {
            Some(d) if (1..=MAX_DIMENSIONS).contains(&d) => d as usize,
            _ => {
                return Err(error::bad_request(
                    Flavor::OpenAi,
                    "Invalid value for 'dimensions': must be a positive integer.",
                    Some("dimensions"),
                ))
            }
        },
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(error::bad_request(
                Flavor::OpenAi,
                "Invalid value for 'encoding_format': must be 'float' or 'base64'.",
                Some("encoding_format"),
            ))
        }
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if dirs.malformed {
        return Ok(http::malformed());
    }
    let prompt_tokens = items
        .iter()
        .map(|i| match i {
            Input::Text(s) => content::count_words(s).max(1),
            Input::Tokens(t) => t.len() as u64,
        })
        .sum();
    let vectors = items
        .iter()
        .map(|i| {
            let seed = match i {
                Input::Text(s) => content::fnv1a(s.as_bytes()),
                Input::Tokens(t) => t.iter().fold(0, |h, x| content::mix(h ^ x)),
            };
            vector(seed, dims)
        })
        .collect::<Vec<_>>();
    Ok(http::json_bytes(render(
        model,
        &vectors,
        base64,
        prompt_tokens,
    )))
}

fn default_dimensions(model: &str) -> usize {
    if model.contains("large") {
        3072
    } else {
        1536
    }
}

/// A deterministic unit vector.
pub(crate) fn vector(seed: u64, dims: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dims as u64)
        .map(|i| {
            let x = content::mix(seed ^ i.wrapping_mul(0x9E37_79B9));
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    raw.iter().map(|x| (x / norm) as f32).collect()
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Item>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// The embeddings list, pretty-printed as OpenAI does.
pub(crate) fn render(model: &str, vectors: &[Vec<f32>], base64: bool, prompt_tokens: u64) -> Bytes {
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| Item {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Embedding::Base64(content::base64(&bytes))
            } else {
                Embedding::Floats(v.clone())
            },
        })
        .collect();
    http::pretty(&List {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
}
