//! The metrics of one server, in the Prometheus text format (OpenMetrics). Every name
//! is listed in docs/observability.md; the label values are bounded (see `labels`).
//! Counters are updated where things happen; the gauges of live state (the usage
//! writer's backlog, each deployment's health) are read when `/metrics` is scraped.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::*;
use crate::billing::{Credits, Usage};
use crate::config::Config;
use crate::routing::{DeploymentState, Router};
use crate::store::KeyId;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and upstream durations, in seconds: 5 ms to about 5 minutes.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Token counts of one request: the GenAI conventions' advice, 1 to 4^13.
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// The usage writer's commit time, in seconds: 100 µs to 5 s.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
];
/// Records per commit: 1 to the writer's largest batch (1,024).
pub const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn token_counts() -> Histogram {
    Histogram::new(TOKEN_BUCKETS)
}

/// The usage writer's histograms: made by the writer, registered with the metrics.
#[derive(Clone)]
pub struct WriterMetrics {
    pub commit_seconds: Histogram,
    pub records_per_commit: Histogram,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            records_per_commit: Histogram::new(BATCH_BUCKETS),
        }
    }
}

/// The key cache's counters: made by the authenticator, registered with the metrics.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
}

/// Every metric of one server.
pub struct Metrics {
    /// `[observability] metrics`: when off, nothing is recorded nor served.
    pub enabled: bool,
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histograms<GenAiLabels>,
    pub time_to_first_token: Histograms<GenAiLabels>,
    pub token_usage: Histograms<TokenUsageLabels>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub in_flight: Gauge,
    pub open_streams: Gauge,
    pub disconnects: Family<EndpointLabel, Counter>,
    pub backend_up: Family<BackendLabel, Gauge>,
    pub shared_reservations: Family<SourceLabel, Counter>,
    writer_backlog: Gauge,
    deployments: Family<DeploymentLabels, Gauge>,
    key_requests: Family<KeyLabel, Counter>,
    key_cost: Family<KeyLabel, Counter<f64, AtomicU64>>,
    /// The keys that have a label of their own (at most `key_labels`), made once.
    keys: Mutex<HashMap<KeyId, Name>>,
    key_labels: usize,
    /// Each model id's label, made once.
    models: HashMap<String, Name>,
    other_key: Name,
}

impl Metrics {
    pub fn new(config: &Config, writer: &WriterMetrics, cache: &CacheMetrics) -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            enabled: config.observability.metrics,
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(durations),
            time_to_first_token: Family::new_with_constructor(durations),
            token_usage: Family::new_with_constructor(token_counts),
            tokens: Family::default(),
            cost: Family::default(),
            refusals: Family::default(),
            attempts: Family::default(),
            in_flight: Gauge::default(),
            open_streams: Gauge::default(),
            disconnects: Family::default(),
            backend_up: Family::default(),
            shared_reservations: Family::default(),
            writer_backlog: Gauge::default(),
            deployments: Family::default(),
            key_requests: Family::default(),
            key_cost: Family::default(),
            keys: Mutex::new(HashMap::new()),
            key_labels: config.observability.key_labels,
            models: config
                .models
                .iter()
                .map(|m| (m.id.clone(), Name::new(&m.id)))
                .collect(),
            other_key: Name::new("other"),
        };
        let r = &mut registry;
        r.register(
            "gen_ai_client_token_usage",
            "Tokens used per request (OpenTelemetry GenAI), by gen_ai_token_type input/output",
            metrics.token_usage.clone(),
        );
        r.register(
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival to the end of its answer (OpenTelemetry GenAI)",
            metrics.request_duration.clone(),
        );
        r.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first byte of answer (OpenTelemetry GenAI)",
            metrics.time_to_first_token.clone(),
        );
        r.register(
            "tollgate_requests",
            "Requests answered, by endpoint, model, provider, status class and error code",
            metrics.requests.clone(),
        );
        r.register(
            "tollgate_tokens",
            "Tokens charged, by model and type (input includes cached_input and cache_write, output includes reasoning)",
            metrics.tokens.clone(),
        );
        r.register(
            "tollgate_cost_usd",
            "Cost charged in USD (credits), by model",
            metrics.cost.clone(),
        );
        r.register(
            "tollgate_refusals",
            "Requests the gateway refused itself, by reason",
            metrics.refusals.clone(),
        );
        r.register(
            "tollgate_upstream_attempts",
            "Upstream attempts, by provider and outcome",
            metrics.attempts.clone(),
        );
        r.register(
            "tollgate_in_flight_requests",
            "Requests being served (streams until their end)",
            metrics.in_flight.clone(),
        );
        r.register(
            "tollgate_open_streams",
            "Event streams being relayed",
            metrics.open_streams.clone(),
        );
        r.register(
            "tollgate_client_disconnects",
            "Answers the client hung up on before their end, by endpoint",
            metrics.disconnects.clone(),
        );
        r.register(
            "tollgate_usage_writer_backlog",
            "Usage records handed to the writer and not yet committed",
            metrics.writer_backlog.clone(),
        );
        r.register(
            "tollgate_usage_commit_seconds",
            "Time of one usage-ledger commit",
            writer.commit_seconds.clone(),
        );
        r.register(
            "tollgate_usage_records_per_commit",
            "Usage records written by one commit",
            writer.records_per_commit.clone(),
        );
        r.register(
            "tollgate_key_cache_hits",
            "Inference keys found in the identity cache",
            cache.hits.clone(),
        );
        r.register(
            "tollgate_key_cache_misses",
            "Inference keys looked up in the database",
            cache.misses.clone(),
        );
        r.register(
            "tollgate_backend_up",
            "Whether the database (and Redis, in a cluster) answered the last check (1) or not (0)",
            metrics.backend_up.clone(),
        );
        r.register(
            "tollgate_shared_reservations",
            "In a cluster, this replica's reservations by where they were taken: a budget slice held here (slice) or Redis (redis); counted every 5 s",
            metrics.shared_reservations.clone(),
        );
        r.register(
            "tollgate_deployment_state",
            "Each deployment's routing state (1 for the current one): healthy, cooling_down or probing",
            metrics.deployments.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: Static(env!("CARGO_PKG_VERSION")),
            })
            .set(1);
        r.register("tollgate_build_info", "The running version", build);
        if metrics.key_labels > 0 {
            r.register(
                "tollgate_key_requests",
                "Model requests by key (opted in with [observability] key_labels; keys past the cap are `other`)",
                metrics.key_requests.clone(),
            );
            r.register(
                "tollgate_key_cost_usd",
                "Cost charged by key (opted in with [observability] key_labels; keys past the cap are `other`)",
                metrics.key_cost.clone(),
            );
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The label of a model of the catalog (an empty one for anything else).
    pub fn model(&self, id: &str) -> Name {
        self.models.get(id).cloned().unwrap_or_default()
    }

    /// Counts a settled charge: tokens and cost by the model that served, the GenAI
    /// token histogram by the model asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn charged(
        &self,
        operation: &'static str,
        model: &Name,
        requested: &Name,
        provider: &Name,
        usage: &Usage,
        cost: Credits,
        key: KeyId,
    ) {
        let tokens = [
            (TokenType::input, usage.input_tokens),
            (TokenType::output, usage.output_tokens),
            (TokenType::cached_input, usage.cached_input_tokens),
            (TokenType::cache_write, usage.cache_write_tokens),
            (TokenType::reasoning, usage.reasoning_tokens),
        ];
        for (kind, count) in tokens {
            if count > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.clone(),
                        r#type: kind,
                    })
                    .inc_by(count);
            }
        }
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            self.token_usage
                .get_or_create(&TokenUsageLabels {
                    gen_ai_operation_name: Static(operation),
                    gen_ai_request_model: requested.clone(),
                    gen_ai_provider_name: provider.clone(),
                    gen_ai_token_type: Static(kind),
                })
                .observe(count as f64);
        }
        let usd = cost.nanos() as f64 / 1e9;
        self.cost
            .get_or_create(&ModelLabel {
                model: model.clone(),
            })
            .inc_by(usd);
        if self.key_labels > 0 {
            let label = self.key_label(key);
            self.key_requests.get_or_create(&label).inc();
            self.key_cost.get_or_create(&label).inc_by(usd);
        }
    }

    fn key_label(&self, key: KeyId) -> KeyLabel {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let key_id = match keys.get(&key) {
            Some(name) => name.clone(),
            None if keys.len() < self.key_labels => {
                let name = Name::new(&key.0.to_string());
                keys.insert(key, name.clone());
                name
            }
            None => self.other_key.clone(),
        };
        KeyLabel { key_id }
    }

    /// Reads the live state into the gauges, then writes every metric.
    pub fn render(&self, config: &Config, router: &Router, backlog: u64) -> String {
        self.writer_backlog.set(backlog as i64);
        for model in &config.models {
            for d in &model.deployments {
                let deployment = Name::new(&format!(
                    "{}/{}",
                    config.providers[d.provider].name, d.upstream_model
                ));
                let now = match router.health(d) {
                    DeploymentState::Healthy { .. } => "healthy",
                    DeploymentState::CoolingDown { .. } => "cooling_down",
                    DeploymentState::Probing { .. } => "probing",
                };
                for state in ["healthy", "cooling_down", "probing"] {
                    self.deployments
                        .get_or_create(&DeploymentLabels {
                            model: self.model(&model.id),
                            deployment: deployment.clone(),
                            state: Static(state),
                        })
                        .set(i64::from(state == now));
                }
            }
        }
        let mut text = String::with_capacity(16 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
