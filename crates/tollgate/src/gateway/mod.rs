//! The path of one model request: read just what is needed from the body, plan the route,
//! reserve the worst-case cost, attempt the upstream call, relay the answer while reading
//! its usage, settle the actual cost and record it — exactly once.
//!
//! | module | step |
//! |---|---|
//! | `request` | the top-level members of the client's JSON, the rest left raw |
//! | `plan` | the model, its deployment, the wire format there, the translation, the upstream body |
//! | `demands` | what the request asks beyond tokens (tier, hosted tools, output limit); refusals of what cannot be priced |
//! | `estimate` | the worst case reserved before the call |
//! | `settlement` | the reservation until it is settled and recorded, exactly once |
//! | `attempt` | one upstream call and its classified failure |
//! | `relay` | the answer back: event streams, whole JSON answers, binary audio |
//! | `measure` | billable quantities of an answer |
//! | `translate` | the converters between client and provider formats |
//! | `multipart` | audio uploads and image edits, streamed through |
//! | `count` | `/v1/messages/count_tokens`: forwarded, or counted locally; free |
//! | `clamp` | a key's `clamp_max_tokens`: the output limit its budget pays for, instead of a 402 |

mod attempt;
mod clamp;
mod count;
mod demands;
mod estimate;
mod measure;
mod multipart;
mod plan;
mod relay;
mod request;
mod settlement;
mod transcript;
mod translate;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tollgate_formats::conversion::DROPPED_FIELDS_HEADER;
use tollgate_formats::estimate::Profile;

use crate::billing::meter::{Meter, QuotaError, ReserveError};
use crate::billing::Credits;
use crate::config::{Config, Endpoint, Model};
use crate::error::ApiError;
use crate::providers::{ClientHeaders, ProviderClient, Upstreams};
use crate::routing::{Router, Target};
use crate::store::KeyRecord;
use crate::usage::UsageWriter;
use attempt::Unanswered;
pub use clamp::MAX_TOKENS_HEADER;
use estimate::Counting;
pub use plan::unknown_model;
use plan::Prepared;
use relay::Answering;
use request::RequestFields;
use settlement::Settlement;

/// Header carrying the exact cost of a (non-streamed) request, in credits.
pub const COST_HEADER: &str = "x-tollgate-cost";
/// Header naming the model that served a request (its public id).
pub const MODEL_HEADER: &str = "x-tollgate-model";
/// Header naming the provider that served a request.
pub const PROVIDER_HEADER: &str = "x-tollgate-provider";
/// Header counting the upstream attempts a request made.
pub const ATTEMPTS_HEADER: &str = "x-tollgate-attempts";

/// The gateway: catalog, meter, upstream clients and usage writer.
pub struct Gateway {
    config: Arc<Config>,
    meter: Arc<Meter>,
    writer: UsageWriter,
    upstreams: Upstreams,
    router: Router,
    /// How each deployment's upstream model counts input (by `Deployment::id`).
    profiles: Vec<Profile>,
}

/// Who is calling, on which endpoint.
pub struct Inbound {
    pub endpoint: Endpoint,
    /// The client's headers that a provider may receive.
    pub headers: ClientHeaders,
    pub key: Arc<KeyRecord>,
    pub request_id: Arc<str>,
    pub started: Instant,
}

impl Gateway {
    pub fn new(config: Arc<Config>, meter: Arc<Meter>, writer: UsageWriter) -> Self {
        let mut profiles = Vec::new();
        for d in config.models.iter().flat_map(|m| m.deployments.iter()) {
            if profiles.len() <= d.id {
                profiles.resize(d.id + 1, Profile::for_model(""));
            }
            profiles[d.id] = Profile::for_model(&d.upstream_model);
        }
        Gateway {
            upstreams: Upstreams::new(&config),
            router: Router::new(&config),
            profiles,
            config,
            meter,
            writer,
        }
    }

    /// A JSON model request (every endpoint but the multipart uploads).
    pub async fn json_call(&self, inbound: Inbound, body: Bytes) -> Result<Response, ApiError> {
        self.json_call_limited(inbound, body, None).await
    }

    /// A JSON model request; `clamped` is the output limit the gateway has already lowered
    /// it to (see `clamp`).
    async fn json_call_limited(
        &self,
        inbound: Inbound,
        body: Bytes,
        clamped: Option<u64>,
    ) -> Result<Response, ApiError> {
        let endpoint = inbound.endpoint;
        let request = RequestFields::parse(&body)?;
        let model = plan::model_for(&self.config, endpoint, request.string("model")?)?;
        let stream = request.flag("stream")?;
        let demands = demands::read(endpoint, &request)?;
        demands::pricing(&demands, &model)?;
        let mut targets = self.router.route(&self.config, &model, endpoint)?;
        // A fallback that cannot price what the request asks is no target for it.
        targets.retain(|t| demands::pricing(&demands, &t.model).is_ok());
        let asked = plan::Asked {
            endpoint,
            model: &model,
            request: &request,
            demands: &demands,
            stream,
            body: &body,
            headers: &inbound.headers,
        };
        let prepare = |target: &Target| plan::prepare(&self.upstreams, target, &asked);
        let first = prepare(&targets[0])?;
        let mut settlement = match self.reserve_worst(&inbound, &model, &asked, &targets).await {
            Ok(settlement) => settlement,
            Err(Unreserved::Quota(quota)) => {
                let limit = match self.clamp(&inbound, &asked, &targets, &quota)? {
                    Some(limit) if clamped.is_none_or(|c| limit < c) => limit,
                    _ => return Err(ReserveError::Quota(quota).into()),
                };
                let body = clamp::rewrite(endpoint, &request, &demands, limit);
                drop(request);
                return Box::pin(self.json_call_limited(inbound, body, Some(limit))).await;
            }
            Err(Unreserved::Refused(e)) => return Err(e),
        };
        settlement.tier = demands.tier.clone();
        let tried = attempt::first_answer(
            &self.upstreams,
            &self.router,
            &targets,
            first,
            prepare,
            &mut settlement,
        )
        .await;
        let (upstream, prepared) = match tried {
            Ok(answered) => answered,
            Err(unanswered) => {
                let (status, error) = match unanswered {
                    Unanswered::Upstream(e) => (e.ledger_status(), ApiError::from(e)),
                    Unanswered::Request(e) => (e.status.as_u16(), e),
                };
                let attempts = settlement.attempts;
                settlement.settle_undelivered(status).await;
                return Err(error.with_attempts(attempts));
            }
        };
        let billing = estimate::billing(
            endpoint,
            &request,
            prepared.wire.format,
            &demands,
            prepared.model(),
        )?;
        let choices = demands::choices(endpoint, &request)?;
        drop(request);
        let served = answer_headers(&prepared, &self.upstreams, settlement.attempts);
        let answering = Answering {
            upstreams: &self.upstreams,
            prepared: &prepared,
            billing,
            request_id: &inbound.request_id,
            max_frame_bytes: self.config.limits.max_stream_frame_bytes,
            input_estimate: body.len() as u64 / 4,
            output_cap: demands::output_bound(&demands, prepared.model()).saturating_mul(choices),
            timeout: self.config.limits.stream_timeout,
        };
        let mut response = relay::respond(upstream, settlement, answering).await?;
        response.headers_mut().extend(served);
        if let Some(limit) = clamped {
            response
                .headers_mut()
                .insert(MAX_TOKENS_HEADER, HeaderValue::from(limit));
        }
        Ok(response)
    }

    /// The output limit a refused request can be served with instead, for a key with
    /// `clamp_max_tokens`; `None` when the key has not opted in or nothing fits.
    fn clamp(
        &self,
        inbound: &Inbound,
        asked: &plan::Asked<'_>,
        targets: &[Target],
        quota: &QuotaError,
    ) -> Result<Option<u64>, ApiError> {
        if !inbound.key.clamp_max_tokens || !clamp::clampable(asked.endpoint) {
            return Ok(None);
        }
        let available = match quota {
            QuotaError::KeyLimit { remaining, .. } | QuotaError::Balance { remaining, .. } => {
                *remaining
            }
        };
        let asked_for = demands::output_bound(asked.demands, asked.model);
        clamp::affordable(asked, targets, &self.profiles, available, asked_for)
    }

    /// Reserves the worst case of a request over its targets: counted by the cheap bound,
    /// and, if that is refused for want of credit, counted exactly where the model's
    /// tokenizer is public (a request that fits only by its exact count goes through).
    async fn reserve_worst(
        &self,
        inbound: &Inbound,
        model: &Arc<Model>,
        asked: &plan::Asked<'_>,
        targets: &[Target],
    ) -> Result<Settlement, Unreserved> {
        let cheap = estimate::most_expensive(asked, targets, &self.profiles, Counting::Bytes)?;
        match self.reserve(inbound, model, cheap).await {
            Err(refused @ Unreserved::Quota(_))
                if estimate::exact_is_tighter(targets, &self.profiles) =>
            {
                let exact =
                    estimate::most_expensive(asked, targets, &self.profiles, Counting::Exact)?;
                if exact < cheap {
                    self.reserve(inbound, model, exact).await
                } else {
                    Err(refused)
                }
            }
            reserved => reserved,
        }
    }

    /// Reserves the worst case of a request against its key and account.
    async fn reserve(
        &self,
        inbound: &Inbound,
        model: &Arc<Model>,
        amount: Credits,
    ) -> Result<Settlement, Unreserved> {
        // Nothing is generated that the ledger cannot record.
        self.writer.admit().map_err(ApiError::from)?;
        let reservation = match self
            .meter
            .reserve(&inbound.key, amount, &inbound.request_id)
            .await
        {
            Ok(reservation) => reservation,
            Err(ReserveError::Quota(quota)) => return Err(Unreserved::Quota(quota)),
            Err(e) => return Err(Unreserved::Refused(e.into())),
        };
        Ok(Settlement {
            meter: self.meter.clone(),
            coming: Some(self.writer.coming()),
            reservation: Some(reservation),
            model: model.clone(),
            requested: model.clone(),
            provider: None,
            attempts: 0,
            tier: None,
            estimated: false,
            delivered: true,
            endpoint: inbound.endpoint,
            request_id: inbound.request_id.clone(),
            key: inbound.key.clone(),
            started: inbound.started,
        })
    }
}

/// Why no reservation was made: the budget's refusal (which a clamp may answer), or
/// another refusal.
enum Unreserved {
    Quota(QuotaError),
    Refused(ApiError),
}

impl From<ApiError> for Unreserved {
    fn from(e: ApiError) -> Self {
        Unreserved::Refused(e)
    }
}

impl From<Unreserved> for ApiError {
    fn from(e: Unreserved) -> Self {
        match e {
            Unreserved::Quota(quota) => ReserveError::Quota(quota).into(),
            Unreserved::Refused(e) => e,
        }
    }
}

/// The headers that say what served a request.
fn served_headers(prepared: &Prepared, upstreams: &Upstreams, attempts: u32) -> HeaderMap {
    served_headers_of(
        prepared.model(),
        upstreams.provider(prepared.deployment()),
        attempts,
    )
}

fn served_headers_of(model: &Model, provider: &ProviderClient, attempts: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (MODEL_HEADER, model.id.as_str()),
        (PROVIDER_HEADER, &provider.name),
        (ATTEMPTS_HEADER, &attempts.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers
}

/// The headers of a served request, with the hints its translation dropped.
fn answer_headers(prepared: &Prepared, upstreams: &Upstreams, attempts: u32) -> HeaderMap {
    let mut headers = served_headers(prepared, upstreams, attempts);
    if let Some(value) = prepared
        .dropped
        .as_deref()
        .and_then(|d| HeaderValue::from_str(d).ok())
    {
        headers.insert(DROPPED_FIELDS_HEADER, value);
    }
    headers
}

/// Refuses a request with the answer in an error shape; for handlers.
pub fn error_for(endpoint: Endpoint, error: ApiError) -> Response {
    if endpoint == Endpoint::Messages {
        error.into_anthropic_response()
    } else {
        error.into_response()
    }
}
