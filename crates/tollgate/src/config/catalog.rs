//! The `[[models]]` section: the catalog of models, their endpoints, prices, deployments
//! (where each is served) and fallbacks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::pricing::{self, FilePricing, FileTierPricing};
use super::providers::Provider;
use super::ConfigError;
use crate::billing::Pricing;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileModel {
    id: String,
    /// The single-route form: one deployment on this provider.
    provider: Option<String>,
    upstream_model: Option<String>,
    #[serde(default)]
    deployments: Vec<FileDeployment>,
    #[serde(default)]
    fallbacks: Vec<String>,
    endpoints: Option<Vec<String>>,
    display_name: Option<String>,
    owned_by: Option<String>,
    created: Option<i64>,
    context_window: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(default)]
    pricing: FilePricing,
    #[serde(default)]
    service_tiers: BTreeMap<String, FileTierPricing>,
    /// Served at no charge: the only way to serve a model without complete prices.
    #[serde(default)]
    free: bool,
}

impl FileModel {
    /// The model's public id.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The model served by one provider (the built-in catalog's models).
    pub(super) fn on_provider(mut self, provider: &str) -> Self {
        self.provider = Some(provider.to_string());
        self
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDeployment {
    provider: String,
    upstream_model: Option<String>,
    weight: Option<u32>,
    priority: Option<u32>,
}

/// The model endpoints a catalog entry may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Messages,
    /// The legacy OpenAI completions (`prompt` in, `text` out).
    Completions,
    Embeddings,
    ImagesGenerations,
    /// Image edits: a multipart upload of the images, a prompt and the model.
    ImagesEdits,
    AudioSpeech,
    AudioTranscriptions,
    AudioTranslations,
    Moderations,
}

impl Endpoint {
    pub const ALL: [Endpoint; 11] = [
        Endpoint::ChatCompletions,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::ImagesGenerations,
        Endpoint::ImagesEdits,
        Endpoint::AudioSpeech,
        Endpoint::AudioTranscriptions,
        Endpoint::AudioTranslations,
        Endpoint::Moderations,
    ];

    /// The name used in the config and in `/v1/models`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ImagesGenerations => "images.generations",
            Endpoint::ImagesEdits => "images.edits",
            Endpoint::AudioSpeech => "audio.speech",
            Endpoint::AudioTranscriptions => "audio.transcriptions",
            Endpoint::AudioTranslations => "audio.translations",
            Endpoint::Moderations => "moderations",
        }
    }

    /// The path below `/v1` of the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Responses => "/responses",
            Endpoint::Messages => "/messages",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::ImagesGenerations => "/images/generations",
            Endpoint::ImagesEdits => "/images/edits",
            Endpoint::AudioSpeech => "/audio/speech",
            Endpoint::AudioTranscriptions => "/audio/transcriptions",
            Endpoint::AudioTranslations => "/audio/translations",
            Endpoint::Moderations => "/moderations",
        }
    }

    /// Whether the endpoint takes a multipart upload (streamed through, never translated).
    pub fn is_upload(self) -> bool {
        matches!(
            self,
            Endpoint::AudioTranscriptions | Endpoint::AudioTranslations | Endpoint::ImagesEdits
        )
    }

    pub(super) fn parse(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// One place a model is served: a provider and the model's name there.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Unique over the whole catalog: indexes per-deployment state (URLs, health).
    pub id: usize,
    /// Index into `Config::providers`.
    pub provider: usize,
    /// The model's name at the provider.
    pub upstream_model: String,
    /// Share of the traffic among the deployments of one priority.
    pub weight: u32,
    /// Lower first; a higher priority only when every lower one failed or cools down.
    pub priority: u32,
}

/// One model of the catalog.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    /// Where the model is served.
    pub deployments: Vec<Deployment>,
    /// Models tried, in order, once every deployment of this one failed.
    pub fallbacks: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    pub display_name: String,
    pub owned_by: String,
    pub created: i64,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub pricing: Pricing,
    /// Prices per service tier other than the standard one (`priority`, `flex` ...).
    pub service_tiers: Vec<(String, Pricing)>,
    /// Served at no charge (the catalog says `free = true`).
    pub free: bool,
}

impl Model {
    /// The prices of a service tier (the standard ones for `None` or a tier the model
    /// does not price).
    pub fn pricing_for(&self, tier: Option<&str>) -> &Pricing {
        tier.and_then(|tier| self.service_tiers.iter().find(|(name, _)| name == tier))
            .map_or(&self.pricing, |(_, pricing)| pricing)
    }
}

/// Validates the catalog: every model, its deployments on known providers, and its
/// fallbacks (other models of the catalog).
pub(super) fn parse(
    file: Vec<FileModel>,
    origin: &str,
    providers: &[Provider],
) -> Result<Catalog, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::at(origin, key, msg);
    let mut models = Vec::new();
    let mut model_index = HashMap::new();
    let mut deployment_count = 0;
    for (i, m) in file.into_iter().enumerate() {
        let key = |field: &str| format!("models[{i}].{field}");
        if m.id.is_empty() || m.id.len() > 255 {
            return Err(err(&key("id"), "must be 1 to 255 characters".into()));
        }
        if model_index.contains_key(&m.id) {
            return Err(err(&key("id"), format!("'{}' is used twice", m.id)));
        }
        let provider_index = |name: &str, field: &str| {
            providers
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| err(&key(field), format!("no provider named '{name}'")))
        };
        let mut deployments = Vec::new();
        match (&m.provider, m.deployments.is_empty()) {
            (Some(name), true) => deployments.push(Deployment {
                id: deployment_count,
                provider: provider_index(name, "provider")?,
                upstream_model: m.upstream_model.clone().unwrap_or_else(|| m.id.clone()),
                weight: 1,
                priority: 0,
            }),
            (None, false) => {
                if m.upstream_model.is_some() {
                    return Err(err(
                        &key("upstream_model"),
                        "belongs on each [[models.deployments]] when the model has deployments"
                            .into(),
                    ));
                }
                for (j, d) in m.deployments.iter().enumerate() {
                    let field = |f: &str| format!("deployments[{j}].{f}");
                    let weight = d.weight.unwrap_or(1);
                    if weight == 0 {
                        return Err(err(&key(&field("weight")), "must be above 0".into()));
                    }
                    deployments.push(Deployment {
                        id: deployment_count + j,
                        provider: provider_index(&d.provider, &field("provider"))?,
                        upstream_model: d.upstream_model.clone().unwrap_or_else(|| m.id.clone()),
                        weight,
                        priority: d.priority.unwrap_or(0),
                    });
                }
            }
            (Some(_), false) => {
                return Err(err(
                    &key("provider"),
                    "give either `provider` (one deployment) or [[models.deployments]], not both"
                        .into(),
                ))
            }
            (None, true) => {
                return Err(err(
                    &key("provider"),
                    "missing: give `provider`, or one or more [[models.deployments]]".into(),
                ))
            }
        }
        let provider = deployments[0].provider;
        let endpoints = match m.endpoints {
            Some(names) => names
                .iter()
                .map(|n| {
                    Endpoint::parse(n).ok_or_else(|| {
                        err(
                            &key("endpoints"),
                            format!(
                                "unknown endpoint '{n}' (one of: {})",
                                Endpoint::ALL.map(Endpoint::name).join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![
                Endpoint::ChatCompletions,
                Endpoint::Responses,
                Endpoint::Messages,
            ],
        };
        let priced = |(field, message): (String, String)| err(&key(&field), message);
        let pricing = pricing::parse(&m.pricing).map_err(priced)?;
        let service_tiers = pricing::parse_tiers(&m.service_tiers, &pricing).map_err(priced)?;
        if !m.free {
            for endpoint in &endpoints {
                if let Some(needed) = pricing::missing(*endpoint, &pricing) {
                    return Err(err(
                        &key("pricing"),
                        format!(
                            "the model '{}' serves {} but has no price for it: give {needed}, or set `free = true` to serve it at no charge",
                            m.id,
                            endpoint.name()
                        ),
                    ));
                }
            }
        }
        model_index.insert(m.id.clone(), models.len());
        deployment_count += deployments.len();
        models.push(Arc::new(Model {
            deployments,
            fallbacks: m.fallbacks,
            display_name: m.display_name.unwrap_or_else(|| m.id.clone()),
            owned_by: m
                .owned_by
                .unwrap_or_else(|| providers[provider].name.clone()),
            created: m.created.unwrap_or(0),
            id: m.id,
            endpoints,
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            pricing,
            service_tiers,
            free: m.free,
        }));
    }

    for (i, model) in models.iter().enumerate() {
        for (j, fallback) in model.fallbacks.iter().enumerate() {
            let key = format!("models[{i}].fallbacks[{j}]");
            if fallback == &model.id {
                return Err(err(&key, format!("'{fallback}' is the model itself")));
            }
            if !model_index.contains_key(fallback) {
                return Err(err(&key, format!("no model named '{fallback}'")));
            }
            if model.fallbacks[..j].contains(fallback) {
                return Err(err(&key, format!("'{fallback}' is listed twice")));
            }
        }
    }
    Ok(Catalog {
        models,
        index: model_index,
    })
}

/// The validated models, and their positions by id.
pub(super) struct Catalog {
    pub(super) models: Vec<Arc<Model>>,
    pub(super) index: HashMap<String, usize>,
}
