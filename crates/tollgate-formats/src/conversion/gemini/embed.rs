//! OpenAI embeddings ↔ Gemini's `batchEmbedContents`: each string of `input` is one
//! `EmbedContentRequest` (`model: "models/{model}"`, its text as the one part,
//! `dimensions` as `outputDimensionality`); the answer's `embeddings[].values` become
//! `data[].embedding` (base64 of little-endian `f32`s with `encoding_format: "base64"`).
//! Gemini reports no token usage for embeddings: the answer carries none, and the gateway
//! charges it by estimate. Token arrays as `input` are refused (Gemini takes text).

use serde_json::{json, Value};

use crate::conversion::{ConversionError, Converted};

/// The `batchEmbedContents` request of an OpenAI embeddings request for `upstream_model`.
pub fn convert_request(
    request: &Value,
    upstream_model: &str,
) -> Result<Converted, ConversionError> {
    let input = request
        .get("input")
        .ok_or_else(|| ConversionError::new("input", "is required"))?;
    let texts: Vec<&str> = match input {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    ConversionError::new(format!("input[{i}]"), "must be text for a Gemini model")
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ConversionError::new(
                "input",
                "must be a string or an array of strings",
            ))
        }
    };
    let dimensions = request.get("dimensions").and_then(Value::as_u64);
    let model = format!("models/{upstream_model}");
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut one = json!({"model": model, "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions {
                one["outputDimensionality"] = d.into();
            }
            one
        })
        .collect();
    let mut dropped = Vec::new();
    if request.get("user").is_some() {
        dropped.push("user".to_string());
    }
    Ok(Converted {
        body: json!({"requests": requests}),
        dropped,
    })
}

/// The OpenAI embeddings answer of a `batchEmbedContents` answer.
pub fn convert_answer(answer: &Value, public_model: &str, base64: bool) -> Result<Value, String> {
    let embeddings = answer
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or("an answer without embeddings")?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (i, embedding) in embeddings.iter().enumerate() {
        let values = embedding
            .get("values")
            .and_then(Value::as_array)
            .ok_or("an embedding without values")?;
        let vector = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for v in values {
                let f = v
                    .as_f64()
                    .ok_or("an embedding value that is not a number")?
                    as f32;
                bytes.extend_from_slice(&f.to_le_bytes());
            }
            Value::String(crate::conversion::native::base64(&bytes))
        } else {
            Value::Array(values.clone())
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": vector}));
    }
    Ok(json!({"object": "list", "data": data, "model": public_model}))
}
