//! `clamp_max_tokens`: a key that opts in gets, instead of a 402, its request with the
//! output limit lowered to what its budget pays for (said in `x-tollgate-max-tokens`).
//!
//! The limit is the largest whose worst case, over every model the request may end up on,
//! fits what the refusal said was left; the request is then served as if the client had
//! asked for that limit (the upstream body carries it, the reservation and the stream's
//! output cap follow from it). Nothing fits, not even one output token (16 on Responses,
//! the least its API takes): the 402 stands.

use bytes::Bytes;

use super::demands::Demands;
use super::estimate::{self, Counting};
use super::plan::Asked;
use super::request::RequestFields;
use crate::billing::Credits;
use crate::config::Endpoint;
use crate::error::ApiError;
use crate::routing::Target;
use tollgate_formats::estimate::Profile;

/// Header giving the output limit a clamped request was sent with.
pub const MAX_TOKENS_HEADER: &str = "x-tollgate-max-tokens";

/// The smallest output limit a request of an endpoint can carry: OpenAI's Responses API
/// refuses a `max_output_tokens` below 16 (a 400, `integer_below_min_value`), so a
/// clamp below it would turn the 402 into the provider's refusal.
fn least_limit(endpoint: Endpoint) -> u64 {
    match endpoint {
        Endpoint::Responses => 16,
        _ => 1,
    }
}

/// Whether an endpoint's output can be limited by the client (and so clamped).
pub(super) fn clampable(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions
            | Endpoint::Responses
            | Endpoint::Messages
            | Endpoint::Completions
    )
}

/// The largest output limit below `above` whose worst case fits `available`; `None` when
/// not even the endpoint's least limit (one token, 16 on Responses) does. The input is
/// counted once, exactly where the tokenizer is public (as the reservation that follows
/// will count it when the byte bound does not fit), at the limit asked for (signed
/// thinking adds it: a bound for every lower one).
pub(super) fn affordable(
    asked: &Asked<'_>,
    targets: &[Target],
    profiles: &[Profile],
    available: Credits,
    above: u64,
) -> Result<Option<u64>, ApiError> {
    let counting = if estimate::exact_is_tighter(targets, profiles) {
        Counting::Exact
    } else {
        Counting::Bytes
    };
    let inputs = estimate::input_bounds(asked, targets, profiles, counting)?;
    let fits = |limit: u64| -> Result<bool, ApiError> {
        let demands = Demands {
            output_limit: Some(limit),
            ..asked.demands.clone()
        };
        let asked = Asked {
            demands: &demands,
            ..*asked
        };
        Ok(estimate::most_expensive_of(&asked, &inputs)? <= available)
    };
    // The worst case only grows with the limit: a binary search.
    let least = least_limit(asked.endpoint);
    if above <= least || !fits(least)? {
        return Ok(None);
    }
    // Invariant: `lo` fits, `hi` does not.
    let (mut lo, mut hi) = (least, above);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}

/// The client's body with its output limit set to `limit`: every limit field it used
/// (Chat Completions has two), or the endpoint's own when it used none.
pub(super) fn rewrite(
    endpoint: Endpoint,
    request: &RequestFields<'_>,
    demands: &Demands,
    limit: u64,
) -> Bytes {
    let names: &[&str] = match endpoint {
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
        _ => &["max_tokens"],
    };
    let mut replace: Vec<(&str, String)> = names
        .iter()
        .filter(|name| request.0.get(name).is_some())
        .map(|name| (*name, limit.to_string()))
        .collect();
    if replace.is_empty() {
        replace.push((demands.limit_field, limit.to_string()));
    }
    Bytes::from(request.0.rewrite(&replace, &[]))
}
