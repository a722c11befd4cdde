//! The worst case of a request, reserved before the upstream call: what it could cost at
//! most, from what the request says and what the catalog knows of the model.

use std::sync::Arc;

use tollgate_formats::Format;

use super::demands::{self, Demands};
use super::measure::{Billing, Hosted};
use super::request::RequestFields;
use crate::billing::{Credits, HostedTool, Pricing, Usage};
use crate::config::{Endpoint, Model};
use crate::error::ApiError;
use crate::routing::Target;

/// Fallback output bound when neither the request nor the catalog gives one.
pub(super) const DEFAULT_OUTPUT_BOUND: u64 = 4096;
/// Assumed audio tokens per second, to bound token-priced transcription.
pub(super) const AUDIO_TOKENS_PER_SECOND: u64 = 50;

/// What a JSON request could cost at most on `model`, at `pricing`.
pub(super) fn worst_case(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    body_len: usize,
    model: &Model,
    demands: &Demands,
    pricing: &Pricing,
) -> Result<Usage, ApiError> {
    // Every byte of the body an input token, the most output allowed.
    let input_bound = body_len as u64;
    let output_bound = demands::output_bound(demands, model);
    let choices = request.count("n")?.unwrap_or(1).max(1);
    Ok(match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => {
            let mut usage = Usage {
                input_tokens: input_bound,
                output_tokens: output_bound.saturating_mul(choices),
                ..Usage::default()
            };
            // Every hosted call on the dearest of the tools offered.
            let dearest = demands
                .hosted
                .iter()
                .max_by_key(|t| pricing.tool_calls[t.index()].map_or(0, |p| p.femtos()));
            if let Some(tool) = dearest {
                usage.tool_calls[tool.index()] = demands.hosted_calls;
            }
            usage
        }
        Endpoint::Embeddings | Endpoint::Moderations => Usage {
            input_tokens: input_bound,
            ..Usage::default()
        },
        Endpoint::ImagesGenerations => Usage {
            input_tokens: input_bound,
            output_tokens: model.max_output_tokens.unwrap_or(0).saturating_mul(choices),
            images: choices,
            ..Usage::default()
        },
        Endpoint::AudioSpeech => Usage {
            characters: speech_characters(request)?,
            ..Usage::default()
        },
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => return Err(not_json()),
    })
}

/// The worst case over every model the request may end up on: the reservation must
/// cover the most expensive.
pub(super) fn most_expensive(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    body_len: usize,
    targets: &[Target],
    demands: &Demands,
) -> Result<Credits, ApiError> {
    let mut most = Credits::ZERO;
    for (i, target) in targets.iter().enumerate() {
        if targets[..i]
            .iter()
            .any(|t| Arc::ptr_eq(&t.model, &target.model))
        {
            continue;
        }
        let pricing = demands::pricing(demands, &target.model)?;
        let worst = worst_case(endpoint, request, body_len, &target.model, demands, pricing)?;
        most = most.max(pricing.cost(&worst));
    }
    Ok(most)
}

/// How the answer of a JSON request is measured, when it comes in `upstream_format`.
pub(super) fn billing(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    upstream_format: Option<Format>,
    demands: &Demands,
) -> Result<Billing, ApiError> {
    Ok(match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => Billing::Tokens {
            format: upstream_format.unwrap_or(Format::ChatCompletions),
            hosted: if demands.hosted.is_empty() {
                Hosted::None
            } else if endpoint == Endpoint::ChatCompletions {
                Hosted::PerRequest(HostedTool::WebSearch)
            } else {
                Hosted::Counted
            },
        },
        Endpoint::Embeddings => Billing::Embeddings,
        Endpoint::Moderations => Billing::Moderation,
        Endpoint::ImagesGenerations => Billing::Images {
            n: request.count("n")?.unwrap_or(1).max(1),
        },
        Endpoint::AudioSpeech => Billing::Speech {
            characters: speech_characters(request)?,
        },
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => return Err(not_json()),
    })
}

/// The exact character count of a speech request's `input`.
fn speech_characters(request: &RequestFields<'_>) -> Result<u64, ApiError> {
    Ok(request
        .string("input")?
        .map_or(0, |text| text.chars().count() as u64))
}

fn not_json() -> ApiError {
    ApiError::bad_request(
        "invalid_content_type",
        "This endpoint takes multipart/form-data.",
    )
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
