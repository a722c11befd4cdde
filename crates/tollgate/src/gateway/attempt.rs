//! Trying a request's route: each target in turn until one answers with a 2xx status,
//! within the request's deadline. Another deployment is tried at once; a deployment
//! tried again (a route shorter than `max_attempts`) after a short jittered pause. A
//! failure that is the client's own fault, or a first-byte timeout (unless
//! `retry_on_timeout`), ends the tries; a non-2xx answer is read (at most 64 KB) and
//! classified by the provider's adapter. Every outcome is reported to the router.

use std::time::Duration;

use axum::http::StatusCode;
use rand::Rng;
use tokio::time::Instant;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::plan::Prepared;
use super::relay::json::read_limited;
use super::settlement::Settlement;
use crate::config::Deployment;
use crate::error::ApiError;
use crate::observe::labels::AttemptOutcome;
use crate::observe::trace;
use crate::providers::{UpstreamBody, UpstreamError, UpstreamResponse, Upstreams};
use crate::routing::{Router, Target};

/// Most of an error body read to classify it.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Why no target answered.
pub(super) enum Unanswered {
    /// The last attempt's failure.
    Upstream(UpstreamError),
    /// No target could even be prepared (the first one's reason).
    Request(ApiError),
}

/// Tries the targets in order (the first one already prepared) until one answers;
/// `settlement` learns of every attempt.
pub(super) async fn first_answer(
    upstreams: &Upstreams,
    router: &Router,
    targets: &[Target],
    first: Prepared,
    prepare: impl Fn(&Target) -> Result<Prepared, ApiError>,
    settlement: &mut Settlement,
) -> Result<(UpstreamResponse, Prepared), Unanswered> {
    let settings = router.settings();
    let deadline = Instant::now() + settings.request_timeout;
    let mut next = Some(first);
    let mut last: Option<UpstreamError> = None;
    let mut tried: Vec<&Target> = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let prepared = match next.take().map(Ok).unwrap_or_else(|| prepare(target)) {
            Ok(prepared) => prepared,
            // This target cannot take the request (say, a field its format lacks):
            // another may.
            Err(e) if last.is_some() || i + 1 < targets.len() => {
                tracing::debug!(model = %target.model.id, error = %e.message, "target skipped");
                continue;
            }
            Err(e) => return Err(Unanswered::Request(e)),
        };
        // Failing over to another deployment needs no pause: only the one that failed
        // may need time. Trying that one again waits, which also spreads out the retries
        // of many requests that failed at once.
        if tried.iter().any(|t| t.same_deployment(target)) {
            let pause = backoff(settings.backoff, settlement.attempts);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        tried.push(target);
        let deployment = prepared.deployment();
        let provider = upstreams.provider(deployment);
        settlement.attempted(prepared.model(), provider.name.clone());
        let span = trace::attempt_span(
            &provider.name,
            &deployment.upstream_model,
            settlement.attempts,
        );
        let sending = send(upstreams, &prepared, &span).instrument(span.clone());
        let outcome = match tokio::time::timeout_at(deadline, sending).await {
            Ok(outcome) => outcome,
            Err(_) => Err(UpstreamError::Deadline {
                seconds: settings.request_timeout.as_secs(),
            }),
        };
        let attempt_outcome = match &outcome {
            Ok(_) => AttemptOutcome::success,
            Err(e) => AttemptOutcome::of(e),
        };
        settlement.obs.attempt(&provider.name, attempt_outcome);
        if trace::enabled() {
            span.set_attribute("tollgate.attempt.outcome", attempt_outcome.name());
            if let Err(e) = &outcome {
                span.set_attribute("error.type", attempt_outcome.name());
                span.set_attribute("http.response.status_code", i64::from(e.ledger_status()));
            }
        }
        drop(span);
        match outcome {
            Ok(response) => {
                router.succeeded(deployment);
                return Ok((response, prepared));
            }
            Err(e) => {
                router.failed(deployment, &e);
                let again = e.retryable(settings.retry_on_timeout);
                last = Some(e);
                if !again {
                    break;
                }
            }
        }
    }
    Err(Unanswered::Upstream(last.unwrap_or(
        UpstreamError::Deadline {
            seconds: settings.request_timeout.as_secs(),
        },
    )))
}

/// The pause before attempt `n + 1`: `base` doubled per attempt, with full jitter.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempts.min(6));
    let millis = ceiling.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}

/// Sends a prepared request once; with traces on, the provider gets the attempt span's
/// trace context.
async fn send(
    upstreams: &Upstreams,
    prepared: &Prepared,
    span: &Span,
) -> Result<UpstreamResponse, UpstreamError> {
    let deployment = prepared.deployment();
    let traced;
    let forwarded = if trace::enabled() {
        traced = trace::with_context(span, &prepared.forwarded);
        &traced
    } else {
        &prepared.forwarded
    };
    let response = upstreams
        .send(
            deployment,
            prepared.wire.endpoint,
            prepared.stream,
            "application/json",
            UpstreamBody::Bytes(prepared.body.clone()),
            forwarded,
        )
        .await?;
    if response.status().is_success() {
        return Ok(response);
    }
    Err(refusal(upstreams, deployment, response).await)
}

/// Reads and classifies a non-2xx answer.
pub(super) async fn refusal(
    upstreams: &Upstreams,
    deployment: &Deployment,
    response: UpstreamResponse,
) -> UpstreamError {
    let provider = upstreams.provider(deployment);
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_limited(response, MAX_ERROR_BODY, provider.config.idle_timeout)
        .await
        .unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::error!(provider = %provider.config.name, status = status.as_u16(), "the provider refused Tollgate's credentials; check its api_key_env");
    }
    provider
        .adapter
        .refusal(&provider.config.name, status, &headers, &body)
        .scrubbed(|text| upstreams.scrubber.scrub(text).into_owned())
}
