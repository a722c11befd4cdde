//! `POST /v1/images/generations` and `POST /v1/images/edits` (multipart: `image` files,
//! an optional `mask`, a `prompt`): a tiny valid PNG per image, with gpt-image-1 style
//! usage. An edit counts [`INPUT_IMAGE_TOKENS`] image tokens per input image and mask.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::content;
use crate::error::{self, Flavor};
use crate::http::{self, Ctx};
use crate::Shared;

/// A 1×1 transparent PNG.
pub(crate) const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

pub(crate) async fn handle(State(s): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> Response {
    match run(&s, &ctx, &body).await {
        Ok(r) | Err(r) => r,
    }
}

/// Image tokens the fake counts for each input image (and mask) of an edit.
pub(crate) const INPUT_IMAGE_TOKENS: u64 = 194;

/// `POST /v1/images/edits`.
pub(crate) async fn edits(State(s): State<Arc<Shared>>, req: axum::extract::Request) -> Response {
    match run_edit(&s, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run_edit(s: &Arc<Shared>, req: axum::extract::Request) -> Result<Response, Response> {
    use axum::extract::FromRequest;
    let (parts, body) = req.into_parts();
    let ctx = Ctx::from_parts(&parts);
    http::check_openai_key(s, &ctx)?;
    let multipart_error = |e: String| {
        error::bad_request(
            Flavor::OpenAi,
            &format!("Could not parse multipart form: {e}"),
            None,
        )
    };
    let mut form = axum::extract::Multipart::from_request(
        axum::extract::Request::from_parts(parts, body),
        &(),
    )
    .await
    .map_err(|e| multipart_error(e.body_text()))?;
    let mut fields = serde_json::Map::new();
    let mut images = 0u64;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some();
        let data = field
            .bytes()
            .await
            .map_err(|e| multipart_error(e.body_text()))?;
        match name.as_str() {
            "image" | "image[]" | "mask" if is_file => {
                if data.is_empty() {
                    return Err(bad("The uploaded image is empty.", &name));
                }
                images += 1;
            }
            _ => {
                fields.insert(
                    name,
                    Value::from(String::from_utf8_lossy(&data).into_owned()),
                );
            }
        }
    }
    if images == 0 {
        return Err(bad("Missing required parameter: 'image'.", "image"));
    }
    let number = |name: &str| -> Result<Option<Value>, Response> {
        match fields.get(name).and_then(Value::as_str) {
            None => Ok(None),
            Some(text) => text
                .parse::<u64>()
                .map(|n| Some(Value::from(n)))
                .map_err(|_| bad(&format!("Invalid value for '{name}'."), name)),
        }
    };
    if let Some(n) = number("n")? {
        fields.insert("n".into(), n);
    }
    if fields.get("stream").and_then(Value::as_str) == Some("true") {
        return Err(bad(
            "Streamed edits are not supported by this fake.",
            "stream",
        ));
    }
    let request = Value::Object(fields);
    let body = serde_json::to_vec(&request).unwrap_or_default();
    generate(s, &ctx, &body, images).await
}

fn bad(message: &str, param: &str) -> Response {
    error::bad_request(Flavor::OpenAi, message, Some(param))
}

/// Output tokens of one gpt-image-1 image, by quality and size.
fn image_tokens(quality: &str, size: &str) -> u64 {
    let row = match quality {
        "low" => [272, 408, 400],
        "high" => [4160, 6240, 6208],
        _ => [1056, 1584, 1568],
    };
    match size {
        "1024x1536" => row[1],
        "1536x1024" => row[2],
        _ => row[0],
    }
}

fn valid_size(size: &str) -> bool {
    size == "auto"
        || size.split_once('x').is_some_and(|(w, h)| {
            w.parse::<u32>().is_ok_and(|w| w > 0) && h.parse::<u32>().is_ok_and(|h| h > 0)
        })
}

async fn run(s: &Arc<Shared>, ctx: &Ctx, body: &Bytes) -> Result<Response, Response> {
    http::check_openai_key(s, ctx)?;
    generate(s, ctx, body, 0).await
}

/// Generates images for a request's JSON fields; `input_images` are an edit's images.
async fn generate(
    s: &Arc<Shared>,
    ctx: &Ctx,
    body: &[u8],
    input_images: u64,
) -> Result<Response, Response> {
    let req = http::parse_json(Flavor::OpenAi, body)?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("dall-e-2");
    let Some(prompt) = req.get("prompt").and_then(Value::as_str) else {
        return Err(bad("Missing required parameter: 'prompt'.", "prompt"));
    };
    let dirs = http::directives(Flavor::OpenAi, [prompt])?;
    let n = match req.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10) => n,
            _ => return Err(bad("Invalid value for 'n': must be 1..=10.", "n")),
        },
    };
    let size = req
        .get("size")
        .and_then(Value::as_str)
        .unwrap_or("1024x1024");
    if !valid_size(size) {
        return Err(bad("Invalid value for 'size'.", "size"));
    }
    let gpt_image = model.starts_with("gpt-image");
    let b64 = match req.get("response_format").and_then(Value::as_str) {
        None => gpt_image,
        Some("b64_json") => true,
        Some("url") => false,
        Some(_) => {
            return Err(bad(
                "Invalid value for 'response_format': must be 'url' or 'b64_json'.",
                "response_format",
            ))
        }
    };
    if let Some(r) = http::prelude(s, ctx, &dirs, Flavor::OpenAi).await {
        return Ok(r);
    }
    if dirs.malformed {
        return Ok(http::malformed());
    }
    let data = (0..n)
        .map(|i| Image {
            url: (!b64).then(|| format!("https://fake-upstream.invalid/images/img-{i}.png")),
            b64_json: b64.then_some(PNG_B64),
            revised_prompt: model.starts_with("dall-e-3").then_some(prompt),
        })
        .collect();
    let body = if gpt_image {
        let quality = req
            .get("quality")
            .and_then(Value::as_str)
            .filter(|q| matches!(*q, "low" | "medium" | "high"))
            .unwrap_or("medium");
        let size = if size == "auto" { "1024x1024" } else { size };
        let text_input = content::count_words(prompt);
        let image_input = input_images * INPUT_IMAGE_TOKENS;
        let input = text_input + image_input;
        let output = image_tokens(quality, size) * n;
        http::pretty(&GptImages {
            created: content::now(),
            background: "opaque",
            data,
            output_format: "png",
            quality,
            size,
            usage: ImageUsage {
                input_tokens: input,
                input_tokens_details: InputDetails {
                    image_tokens: image_input,
                    text_tokens: text_input,
                },
                output_tokens: output,
                total_tokens: input + output,
            },
        })
    } else {
        http::pretty(&Images {
            created: content::now(),
            data,
        })
    };
    Ok(http::json_bytes(body))
}

#[derive(Serialize)]
struct Images<'a> {
    created: u64,
    data: Vec<Image<'a>>,
}

#[derive(Serialize)]
struct GptImages<'a> {
    created: u64,
    background: &'static str,
    data: Vec<Image<'a>>,
    output_format: &'static str,
    quality: &'a str,
    size: &'a str,
    usage: ImageUsage,
}

#[derive(Serialize)]
struct Image<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64_json: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revised_prompt: Option<&'a str>,
}

#[derive(Serialize)]
struct ImageUsage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetails {
    image_tokens: u64,
    text_tokens: u64,
}
