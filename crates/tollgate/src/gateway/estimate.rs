//! The worst case of a request, reserved before the upstream call: what it could cost at
//! most, from what the request says and what the catalog knows of the model.

use std::sync::Arc;

use tollgate_formats::Format;

use tollgate_formats::estimate::{
    estimate_completions_input, estimate_embeddings_input, estimate_input,
    estimate_moderation_input, Profile, Tokenizer,
};

use super::demands::{self, Demands};
use super::measure::{Billing, Hosted};
use super::plan::Asked;
use super::request::RequestFields;
use crate::billing::{Credits, HostedTool, Pricing, Usage};
use crate::config::{Endpoint, Model};
use crate::error::ApiError;
use crate::routing::Target;

/// Fallback output bound when neither the request nor the catalog gives one.
pub(super) const DEFAULT_OUTPUT_BOUND: u64 = 4096;
/// Output tokens of one generated image when the catalog gives no `max_output_tokens`:
/// gpt-image-1's largest (1536x1024 or 1024x1536 at high quality, 6,240 tokens).
pub(super) const DEFAULT_IMAGE_OUTPUT_BOUND: u64 = 6240;
/// Assumed audio tokens per second, to bound token-priced transcription.
pub(super) const AUDIO_TOKENS_PER_SECOND: u64 = 50;

/// Context window assumed for a model whose catalog entry gives none, to bound a request
/// that refers to content the gateway cannot see.
pub(super) const DEFAULT_CONTEXT_WINDOW: u64 = 128_000;

/// How closely the input is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counting {
    /// The text's bytes, plus allowances: a few microseconds, never below the provider's
    /// count.
    Bytes,
    /// Exactly, where the model's tokenizer is public (tiktoken): tighter, slower.
    Exact,
}

/// The input tokens a JSON request's body may cost on a model served by a deployment of
/// `profile`: the estimate of what the body contains; where it refers to content the
/// gateway cannot see (a previous response, a conversation, a stored prompt, a file), the
/// model's context window. Signed thinking sent back in a tool loop (Anthropic may count
/// the whole reasoning it stands for) adds the request's own output bound: the reasoning
/// of the turn it continues was at most that.
pub(super) fn input_bound(
    endpoint: Endpoint,
    body: &[u8],
    profile: Profile,
    counting: Counting,
    model: &Model,
    demands: &Demands,
) -> Result<u64, ApiError> {
    let profile = match counting {
        Counting::Bytes => profile.with_bytes(),
        Counting::Exact => profile,
    };
    let estimate = match endpoint {
        Endpoint::ChatCompletions => estimate_input(Format::ChatCompletions, body, &profile),
        Endpoint::Responses => estimate_input(Format::Responses, body, &profile),
        Endpoint::Messages => estimate_input(Format::AnthropicMessages, body, &profile),
        Endpoint::Completions => estimate_completions_input(body, &profile),
        Endpoint::Embeddings => estimate_embeddings_input(body, &profile),
        Endpoint::Moderations => estimate_moderation_input(body, &profile),
        // An image prompt's bytes bound its tokens; speech is priced by characters.
        Endpoint::ImagesGenerations => return Ok(body.len() as u64),
        _ => return Ok(0),
    }
    .map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("The request body could not be read: {e}."),
        )
    })?;
    if estimate.is_bounded() {
        return Ok(estimate.tokens);
    }
    if estimate.files == 0 && estimate.references == ["thinking_signature"] {
        return Ok(estimate
            .tokens
            .saturating_add(demands::output_bound(demands, model)));
    }
    let window = model.context_window.unwrap_or(DEFAULT_CONTEXT_WINDOW);
    Ok(estimate.tokens.max(window))
}

/// What a JSON request could cost at most on `model`, at `pricing`, with `input_bound`
/// input tokens.
pub(super) fn worst_case(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    input_bound: u64,
    model: &Model,
    demands: &Demands,
    pricing: &Pricing,
) -> Result<Usage, ApiError> {
    let output_bound = demands::output_bound(demands, model);
    let choices = demands::choices(endpoint, request)?;
    Ok(match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Responses
        | Endpoint::Messages
        | Endpoint::Completions => {
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
            output_tokens: model
                .max_output_tokens
                .unwrap_or(DEFAULT_IMAGE_OUTPUT_BOUND)
                .saturating_mul(choices),
            images: choices,
            ..Usage::default()
        },
        Endpoint::AudioSpeech => Usage {
            characters: speech_characters(request)?,
            ..Usage::default()
        },
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations | Endpoint::ImagesEdits => {
            return Err(not_json())
        }
    })
}

/// The worst case over every model the request may end up on: the reservation must
/// cover the most expensive. `profiles` are the deployments' (by `Deployment::id`).
pub(super) fn most_expensive(
    asked: &Asked<'_>,
    targets: &[Target],
    profiles: &[Profile],
    counting: Counting,
) -> Result<Credits, ApiError> {
    most_expensive_of(asked, &input_bounds(asked, targets, profiles, counting)?)
}

/// The input bound of each distinct model among `targets` (the first target of each).
pub(super) fn input_bounds<'t>(
    asked: &Asked<'_>,
    targets: &'t [Target],
    profiles: &[Profile],
    counting: Counting,
) -> Result<Vec<(&'t Target, u64)>, ApiError> {
    let mut bounds = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        if targets[..i]
            .iter()
            .any(|t| Arc::ptr_eq(&t.model, &target.model))
        {
            continue;
        }
        let input = input_bound(
            asked.endpoint,
            asked.body,
            profiles[target.deployment().id],
            counting,
            &target.model,
            asked.demands,
        )?;
        bounds.push((target, input));
    }
    Ok(bounds)
}

/// The most expensive worst case of a request over its models, given their input bounds.
pub(super) fn most_expensive_of(
    asked: &Asked<'_>,
    input_bounds: &[(&Target, u64)],
) -> Result<Credits, ApiError> {
    let mut most = Credits::ZERO;
    for (target, input) in input_bounds {
        let model = &target.model;
        let pricing = demands::pricing(asked.demands, model)?;
        let worst = worst_case(
            asked.endpoint,
            asked.request,
            *input,
            model,
            asked.demands,
            pricing,
        )?;
        most = most.max(pricing.cost(&worst));
    }
    Ok(most)
}

/// Whether counting exactly could lower a request's worst case: some target's model has
/// a public tokenizer.
pub(super) fn exact_is_tighter(targets: &[Target], profiles: &[Profile]) -> bool {
    targets
        .iter()
        .any(|t| profiles[t.deployment().id].tokenizer != Tokenizer::Bytes)
}

/// How the answer of a JSON request is measured, when it comes in `upstream_format`.
pub(super) fn billing(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    upstream_format: Option<Format>,
    demands: &Demands,
    model: &Model,
) -> Result<Billing, ApiError> {
    let input_priced = model.pricing.input.is_some();
    Ok(match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Responses
        | Endpoint::Messages
        | Endpoint::Completions => Billing::Tokens {
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
        Endpoint::Moderations => Billing::Moderation { input_priced },
        Endpoint::ImagesGenerations => Billing::Images {
            n: request.count("n")?.unwrap_or(1).max(1),
        },
        Endpoint::AudioSpeech => Billing::Speech {
            characters: speech_characters(request)?,
        },
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations | Endpoint::ImagesEdits => {
            return Err(not_json())
        }
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

/// Input tokens one input image (or mask) of an image edit may cost: gpt-image-1's largest
/// image at high input fidelity (765 tokens of tiles and 6,240 of fidelity), rounded up.
pub(super) const IMAGE_INPUT_BOUND: u64 = 8000;

/// Most images an image edit may ask for (OpenAI's limit of `n`); reserved for when the
/// form gives no `n`.
pub(super) const MAX_EDITED_IMAGES: u64 = 10;

/// The worst case of an image edit: every input image at [`IMAGE_INPUT_BOUND`], the
/// prompt's bytes, and `n` images out at the model's image output bound.
pub(super) fn image_edit_worst_case(
    n: Option<u64>,
    input_images: u64,
    prompt_bytes: u64,
    model: &Model,
) -> Usage {
    let n = n.unwrap_or(MAX_EDITED_IMAGES).max(1);
    Usage {
        input_tokens: input_images
            .saturating_mul(IMAGE_INPUT_BOUND)
            .saturating_add(prompt_bytes),
        output_tokens: model
            .max_output_tokens
            .unwrap_or(DEFAULT_IMAGE_OUTPUT_BOUND)
            .saturating_mul(n),
        images: n,
        ..Usage::default()
    }
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
