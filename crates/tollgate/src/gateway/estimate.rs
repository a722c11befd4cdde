//! The worst case of a request, reserved before the upstream call: what it could cost at
//! most, from what the request says and what the catalog knows of the model.

use tollgate_formats::Format;

use super::measure::Billing;
use super::request::RequestFields;
use crate::billing::Usage;
use crate::config::{Endpoint, Model};
use crate::error::ApiError;

/// Fallback output bound when neither the request nor the catalog gives one.
pub(super) const DEFAULT_OUTPUT_BOUND: u64 = 4096;
/// Assumed audio tokens per second, to bound token-priced transcription.
pub(super) const AUDIO_TOKENS_PER_SECOND: u64 = 50;

/// What a JSON request could cost at most, and how its answer is measured.
pub(super) fn worst_case(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    body_len: usize,
    model: &Model,
    upstream_format: Option<Format>,
) -> Result<(Billing, Usage), ApiError> {
    // Every byte of the body an input token, the most output allowed.
    let input_bound = body_len as u64;
    let output_bound = request
        .output_limit(endpoint)?
        .or(model.max_output_tokens)
        .unwrap_or(DEFAULT_OUTPUT_BOUND);
    let choices = request.count("n")?.unwrap_or(1).max(1);
    Ok(match endpoint {
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
    })
}

/// The worst case of an audio upload: audio at 8 kbit/s (1,000 bytes a second) for the
/// whole body.
pub(super) fn upload_worst_case(upload_bytes: usize, model: &Model) -> Usage {
    let seconds_bound = (upload_bytes as u64).div_ceil(1000);
    Usage {
        audio_seconds: seconds_bound,
        input_tokens: seconds_bound.saturating_mul(AUDIO_TOKENS_PER_SECOND),
        output_tokens: model.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_BOUND),
        ..Usage::default()
    }
}
