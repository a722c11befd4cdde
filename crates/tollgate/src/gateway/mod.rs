//! The path of one model request: read just what is needed from the body, plan the route,
//! reserve the worst-case cost, attempt the upstream call, relay the answer while reading
//! its usage, settle the actual cost and record it — exactly once.
//!
//! | module | step |
//! |---|---|
//! | `request` | the top-level members of the client's JSON, the rest left raw |
//! | `plan` | the model, its deployment, the wire format there, the translation, the upstream body |
//! | `estimate` | the worst case reserved before the call |
//! | `settlement` | the reservation until it is settled and recorded, exactly once |
//! | `attempt` | one upstream call and its classified failure |
//! | `relay` | the answer back: event streams, whole JSON answers, binary audio |
//! | `measure` | billable quantities of an answer |
//! | `translate` | the converters between client and provider formats |
//! | `multipart` | audio uploads, streamed through |

mod attempt;
mod estimate;
mod measure;
mod multipart;
mod plan;
mod relay;
mod request;
mod settlement;
mod translate;

use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::billing::meter::Meter;
use crate::billing::Usage;
use crate::config::{Config, Endpoint, Model};
use crate::error::ApiError;
use crate::providers::Upstreams;
use crate::store::KeyRecord;
use crate::usage::UsageWriter;
use relay::Answering;
use request::RequestFields;
use settlement::Settlement;

/// Header carrying the exact cost of a (non-streamed) request, in credits.
pub const COST_HEADER: &str = "x-tollgate-cost";

/// The gateway: catalog, meter, upstream clients and usage writer.
pub struct Gateway {
    config: Arc<Config>,
    meter: Arc<Meter>,
    writer: UsageWriter,
    upstreams: Upstreams,
}

/// Who is calling, on which endpoint.
pub struct Inbound {
    pub endpoint: Endpoint,
    pub key: Arc<KeyRecord>,
    pub request_id: Arc<str>,
    pub started: Instant,
}

impl Gateway {
    pub fn new(config: Arc<Config>, meter: Arc<Meter>, writer: UsageWriter) -> Self {
        Gateway {
            upstreams: Upstreams::new(&config),
            config,
            meter,
            writer,
        }
    }

    /// A JSON model request (every endpoint but the multipart uploads).
    pub async fn json_call(&self, inbound: Inbound, body: Bytes) -> Result<Response, ApiError> {
        let endpoint = inbound.endpoint;
        let request = RequestFields::parse(&body)?;
        let model = plan::model_for(&self.config, endpoint, request.string("model")?)?;
        let stream = request.flag("stream")?;
        let prepared = plan::prepare(
            &self.upstreams,
            endpoint,
            &model,
            0,
            &request,
            stream,
            &body,
        )?;
        let (billing, worst) =
            estimate::worst_case(endpoint, &request, body.len(), &model, prepared.wire.format)?;
        drop(request);

        let settlement = self.reserve(&inbound, &model, &worst).await?;
        let upstream = match attempt::send(&self.upstreams, &prepared).await {
            Ok(upstream) => upstream,
            Err(e) => {
                settlement.settle(Usage::default(), e.ledger_status()).await;
                return Err(e.into());
            }
        };
        let answering = Answering {
            upstreams: &self.upstreams,
            prepared: &prepared,
            billing,
            request_id: &inbound.request_id,
            max_frame_bytes: self.config.limits.max_stream_frame_bytes,
            input_estimate: body.len() as u64 / 4,
        };
        Ok(relay::respond(upstream, settlement, answering).await?)
    }

    /// Reserves the worst case of a request against its key and account.
    async fn reserve(
        &self,
        inbound: &Inbound,
        model: &Arc<Model>,
        worst: &Usage,
    ) -> Result<Settlement, ApiError> {
        let amount = model.pricing.cost(worst);
        let reservation = self
            .meter
            .reserve(&inbound.key, amount, &inbound.request_id)
            .await?;
        Ok(Settlement {
            meter: self.meter.clone(),
            coming: Some(self.writer.coming()),
            reservation: Some(reservation),
            model: model.clone(),
            endpoint: inbound.endpoint,
            request_id: inbound.request_id.clone(),
            key: inbound.key.clone(),
            started: inbound.started,
        })
    }
}

/// Refuses a request with the answer in an error shape; for handlers.
pub fn error_for(endpoint: Endpoint, error: ApiError) -> Response {
    if endpoint == Endpoint::Messages {
        error.into_anthropic_response()
    } else {
        error.into_response()
    }
}
