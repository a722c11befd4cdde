//! Observability: metrics, traces and request-scoped logs (docs/observability.md).
//!
//! | module | concern |
//! |---|---|
//! | `labels` | the bounded label sets of the metrics |
//! | `metrics` | the metric families of one server and the scrape |
//! | `access` | per request: its id, its span, the access line, the request metrics |
//! | `trace` | the OTLP export, the client's trace context, the attempt spans |
//! | `logging` | the log subscriber: text or JSON, plus the trace layer |
//! | `endpoint` | `GET /metrics`, on the main listener or its own |
//!
//! What a request did is gathered in its [`RequestObs`] (put in the request's
//! extensions by `access`), filled by the gateway as it goes (the model asked for, each
//! upstream attempt, the settled charge) and read once when the answer's body ends.
//! Prompts and answers are never recorded, only counts.

pub mod access;
pub mod endpoint;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod trace;

use std::sync::{Arc, Mutex};

use crate::billing::{Credits, Usage};
use crate::config::{Endpoint, Model};
use crate::store::KeyId;
use labels::{AttemptLabels, AttemptOutcome, Name, Route};
pub use metrics::Metrics;

/// What one request did, for its metrics, span and access line.
pub struct RequestObs {
    pub metrics: Arc<Metrics>,
    facts: Mutex<Facts>,
}

/// The facts gathered so far.
#[derive(Default, Clone)]
pub struct Facts {
    /// The model asked for (its catalog label; empty when none was resolved).
    pub model: Name,
    /// The model that served, when one did.
    pub served: Name,
    /// The provider that served, or was tried last.
    pub provider: Name,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Credits,
    pub key: Option<KeyId>,
    pub max_tokens: Option<u64>,
    pub attempts: u32,
}

impl RequestObs {
    pub fn new(metrics: Arc<Metrics>) -> RequestObs {
        RequestObs {
            metrics,
            facts: Mutex::new(Facts::default()),
        }
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what is known now.
    pub fn snapshot(&self) -> Facts {
        self.facts().clone()
    }

    /// The request names `model` (of the catalog) and asks for at most `max_tokens`.
    pub fn asked(&self, model: &Model, max_tokens: Option<u64>) {
        let label = self.metrics.model(&model.id);
        let mut facts = self.facts();
        facts.model = label;
        facts.max_tokens = max_tokens;
    }

    /// An upstream attempt on `provider` ended with `outcome`.
    pub fn attempt(&self, provider: &Arc<str>, outcome: AttemptOutcome) {
        let provider = Name(provider.clone());
        if self.metrics.enabled {
            self.metrics
                .attempts
                .get_or_create(&AttemptLabels {
                    provider: provider.clone(),
                    outcome,
                })
                .inc();
        }
        let mut facts = self.facts();
        facts.provider = provider;
        facts.attempts += 1;
    }

    /// The request was charged `cost` for `usage` delivered by `served` (counted once:
    /// a settlement is consumed by its charge).
    #[allow(clippy::too_many_arguments)]
    pub fn charged(
        &self,
        endpoint: Endpoint,
        requested: &Model,
        served: &Model,
        provider: Option<&Arc<str>>,
        usage: &Usage,
        cost: Credits,
        key: KeyId,
    ) {
        let provider = provider.map(|p| Name(p.clone())).unwrap_or_default();
        let served_label = self.metrics.model(&served.id);
        let requested_label = if std::ptr::eq(requested, served) {
            served_label.clone()
        } else {
            self.metrics.model(&requested.id)
        };
        if self.metrics.enabled {
            self.metrics.charged(
                Route::Model(endpoint).operation(),
                &served_label,
                &requested_label,
                &provider,
                usage,
                cost,
                key,
            );
        }
        let mut facts = self.facts();
        facts.model = requested_label;
        facts.served = served_label;
        facts.provider = provider;
        facts.input_tokens = usage.input_tokens;
        facts.output_tokens = usage.output_tokens;
        facts.cost = cost;
        facts.key = Some(key);
    }
}

/// The request extension carrying a request's [`RequestObs`].
#[derive(Clone)]
pub struct Observed(pub Arc<RequestObs>);
