//! A model's prices in the catalog: per token, per unit, per call of a hosted tool and per
//! service tier; and the check that a model has every price its endpoints need, so that
//! nothing is served that the meter cannot price.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::catalog::Endpoint;
use crate::billing::{HostedTool, Pricing, UnitPrice};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePricing {
    input: Option<String>,
    cached_input: Option<String>,
    cache_write: Option<String>,
    output: Option<String>,
    per_image: Option<String>,
    per_request: Option<String>,
    per_audio_second: Option<String>,
    per_character: Option<String>,
    web_search: Option<String>,
    file_search: Option<String>,
    code_interpreter: Option<String>,
    image_generation: Option<String>,
}

/// The token prices of a service tier (`service_tiers.priority = { ... }`); the tier's
/// other prices are the model's.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTierPricing {
    input: Option<String>,
    cached_input: Option<String>,
    cache_write: Option<String>,
    output: Option<String>,
}

/// Parses one price, naming `pricing.FIELD` of the model in errors.
type PriceError = (String, String);

fn price(
    text: &Option<String>,
    field: &str,
    parse: fn(&str) -> Result<UnitPrice, crate::billing::money::MoneyError>,
) -> Result<Option<UnitPrice>, PriceError> {
    text.as_deref()
        .map(|t| parse(t).map_err(|e| (field.to_string(), format!("'{t}': {e}"))))
        .transpose()
}

/// A model's `pricing` table.
pub(super) fn parse(p: &FilePricing) -> Result<Pricing, PriceError> {
    let m = UnitPrice::per_million;
    let u = UnitPrice::per_unit;
    let mut tool_calls = [None; 4];
    for (tool, text) in [
        (HostedTool::WebSearch, &p.web_search),
        (HostedTool::FileSearch, &p.file_search),
        (HostedTool::CodeInterpreter, &p.code_interpreter),
        (HostedTool::ImageGeneration, &p.image_generation),
    ] {
        tool_calls[tool.index()] = price(text, &format!("pricing.{}", tool.name()), u)?;
    }
    Ok(Pricing {
        input: price(&p.input, "pricing.input", m)?,
        cached_input: price(&p.cached_input, "pricing.cached_input", m)?,
        cache_write: price(&p.cache_write, "pricing.cache_write", m)?,
        output: price(&p.output, "pricing.output", m)?,
        per_image: price(&p.per_image, "pricing.per_image", u)?,
        per_request: price(&p.per_request, "pricing.per_request", u)?,
        per_audio_second: price(&p.per_audio_second, "pricing.per_audio_second", u)?,
        per_character: price(&p.per_character, "pricing.per_character", u)?,
        tool_calls,
    })
}

/// A model's `service_tiers`: each tier's pricing, the model's own with the tier's token
/// prices in place.
pub(super) fn parse_tiers(
    tiers: &BTreeMap<String, FileTierPricing>,
    base: &Pricing,
) -> Result<Vec<(String, Pricing)>, PriceError> {
    let m = UnitPrice::per_million;
    tiers
        .iter()
        .map(|(name, t)| {
            let field = |f: &str| format!("service_tiers.{name}.{f}");
            let tier = Pricing {
                input: price(&t.input, &field("input"), m)?,
                cached_input: price(&t.cached_input, &field("cached_input"), m)?,
                cache_write: price(&t.cache_write, &field("cache_write"), m)?,
                output: price(&t.output, &field("output"), m)?,
                ..base.clone()
            };
            if tier.input.is_none() || tier.output.is_none() {
                return Err((
                    field("input"),
                    "a service tier needs its `input` and `output` prices".into(),
                ));
            }
            Ok((name.clone(), tier))
        })
        .collect()
}

/// The prices `endpoint` needs, by name, of which `pricing` lacks at least one of each
/// group: `None` when it has them all.
pub(super) fn missing(endpoint: Endpoint, pricing: &Pricing) -> Option<&'static str> {
    let tokens = pricing.input.is_some() && pricing.output.is_some();
    let complete = match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Responses
        | Endpoint::Messages
        | Endpoint::Completions => tokens,
        Endpoint::Embeddings => pricing.input.is_some() || pricing.per_request.is_some(),
        Endpoint::Moderations => pricing.input.is_some() || pricing.per_request.is_some(),
        Endpoint::ImagesGenerations | Endpoint::ImagesEdits => {
            pricing.per_image.is_some() || tokens
        }
        Endpoint::AudioSpeech => pricing.per_character.is_some(),
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
            pricing.per_audio_second.is_some() || tokens
        }
    };
    if complete {
        return None;
    }
    Some(match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Responses
        | Endpoint::Messages
        | Endpoint::Completions => "`input` and `output`",
        Endpoint::Embeddings | Endpoint::Moderations => "`input` or `per_request`",
        Endpoint::ImagesGenerations | Endpoint::ImagesEdits => {
            "`per_image`, or `input` and `output`"
        }
        Endpoint::AudioSpeech => "`per_character`",
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
            "`per_audio_second`, or `input` and `output`"
        }
    })
}
