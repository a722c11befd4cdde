//! `POST /v1/messages/count_tokens`: forwarded to the model's provider when it speaks
//! Messages (Anthropic counts exactly, its betas passed on); counted locally for an
//! OpenAI-compatible one (exactly where the tokenizer is public, else an upper bound; see
//! `tollgate_formats::estimate::count_tokens_upper_bound`). Free, as Anthropic's is: no
//! reservation, no charge, no usage record; the key and its rate limit still apply.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tollgate_formats::estimate::{count_tokens_upper_bound, EstimateError};
use tollgate_formats::Format;

use super::attempt::refusal;
use super::relay::json::read_limited;
use super::request::RequestFields;
use super::{plan, Gateway, Inbound};
use crate::config::Endpoint;
use crate::error::ApiError;
use crate::observe::labels::AttemptOutcome;
use crate::providers::UpstreamError;

/// Largest count_tokens answer read from a provider (it is `{"input_tokens": N}`).
const MAX_ANSWER: usize = 64 << 10;

impl Gateway {
    /// Counts the input tokens of a Messages request for its model.
    pub async fn count_tokens(&self, inbound: Inbound, body: Bytes) -> Result<Response, ApiError> {
        let request = RequestFields::parse(&body)?;
        let model = plan::model_for(&self.config, Endpoint::Messages, request.string("model")?)?;
        inbound.obs.asked(&model, None);
        self.admit(&inbound, &model).await?;
        let targets =
            self.router
                .route_allowed(&self.config, &model, Endpoint::Messages, &|m| {
                    inbound.key.may_use(&m.id)
                })?;
        let mut last: Option<UpstreamError> = None;
        for target in &targets {
            let deployment = target.deployment();
            let provider = self.upstreams.provider(deployment);
            let native = provider.adapter.counts_tokens()
                && provider
                    .adapter
                    .wire(Endpoint::Messages, &deployment.upstream_model)
                    .is_some_and(|w| w.format == Some(Format::AnthropicMessages));
            if !native {
                let profile = self.profiles[deployment.id];
                let tokens = count_tokens_upper_bound(&body, &profile).map_err(|e| match e {
                    EstimateError::Unbounded(what) => ApiError::invalid_field(
                        what,
                        format!("The model '{}' is served by a provider without a token count, and the gateway cannot count '{what}' locally.", model.id),
                    ),
                    EstimateError::Json(e) => ApiError::bad_request(
                        "invalid_json",
                        format!("The request body is not valid JSON: {e}."),
                    ),
                })?;
                return Ok(counted(tokens));
            }
            let upstream_body = if deployment.upstream_model == model.id {
                body.clone()
            } else {
                let name = Value::String(deployment.upstream_model.clone()).to_string();
                Bytes::from(request.0.rewrite(&[("model", name)], &[]))
            };
            let forwarded = inbound.headers.for_provider(provider.config.kind, false);
            let sent = self
                .upstreams
                .send_path(
                    deployment,
                    "/messages/count_tokens",
                    upstream_body,
                    &forwarded,
                )
                .await;
            let sent = match sent {
                Ok(response) if response.status().is_success() => Ok(response),
                Ok(refused) => Err(refusal(&self.upstreams, deployment, refused).await),
                Err(e) => Err(e),
            };
            inbound.obs.attempt(
                &provider.name,
                sent.as_ref()
                    .map_or_else(AttemptOutcome::of, |_| AttemptOutcome::success),
            );
            let error = match sent {
                Ok(response) => {
                    let answer =
                        read_limited(response, MAX_ANSWER, provider.config.idle_timeout).await;
                    match answer {
                        Ok(answer) => return Ok(json(answer)),
                        Err(_) => UpstreamError::malformed(
                            &provider.config.name,
                            "a token count that could not be read",
                        ),
                    }
                }
                Err(e) => e,
            };
            let again = error.retryable(false);
            last = Some(error);
            if !again {
                break;
            }
        }
        Err(last
            .map(ApiError::from)
            .unwrap_or_else(|| ApiError::internal("count_tokens with no target")))
    }
}

fn counted(tokens: u64) -> Response {
    json(Bytes::from(format!("{{\"input_tokens\":{tokens}}}")))
}

fn json(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
