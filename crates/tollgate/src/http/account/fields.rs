//! The fields of a key's body in `POST` and `PATCH /v1/account/keys`: which are
//! accepted, and each one read and checked, with an error that names it.

use serde_json::value::RawValue;
use serde_json::Value;

use crate::billing::money::MoneyError;
use crate::billing::window::LimitReset;
use crate::billing::Credits;
use crate::error::ApiError;
use crate::http::extract::type_name;
use crate::http::AppState;

pub(crate) const CREATE_FIELDS: &[&str] = &[
    "name",
    "credit_limit",
    "expires_at",
    "rate_limit_rpm",
    "limit_reset",
    "allowed_models",
    "clamp_max_tokens",
];
pub(crate) const PATCH_FIELDS: &[&str] = &[
    "name",
    "is_enabled",
    "credit_limit",
    "expires_at",
    "rate_limit_rpm",
    "limit_reset",
    "allowed_models",
    "clamp_max_tokens",
];
/// The most model ids an allow-list may name.
const MAX_ALLOWED_MODELS: usize = 1000;

pub(super) fn parse_flag(name: &str, value: &Value) -> Result<bool, ApiError> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(ApiError::invalid_field(
            name,
            format!("'{name}' must be true or false, not {}.", type_name(other)),
        )),
    }
}

pub(crate) fn parse_name(value: &Value) -> Result<String, ApiError> {
    let Value::String(name) = value else {
        return Err(ApiError::invalid_field(
            "name",
            format!("'name' must be a string, not {}.", type_name(value)),
        ));
    };
    let length = name.chars().count();
    if name.trim().is_empty() || length > 255 {
        return Err(ApiError::invalid_field(
            "name",
            format!("'name' must be 1 to 255 characters long (got {length})."),
        ));
    }
    Ok(name.clone())
}

/// Reads `credit_limit` from the number as the client wrote it (`raw`), never through a
/// float: 12345678.123456789 is kept to the last digit, and anything finer than the money
/// unit, negative or above [`Credits::MAX_AMOUNT`] is refused.
pub(super) fn parse_credit_limit(
    value: &Value,
    raw: Option<&RawValue>,
) -> Result<Option<Credits>, ApiError> {
    match value {
        Value::Null => return Ok(None),
        Value::Number(_) => {}
        other => {
            return Err(ApiError::invalid_field(
                "credit_limit",
                format!(
                    "'credit_limit' must be a number of credits (USD) or null, not {}.",
                    type_name(other)
                ),
            ))
        }
    }
    let Some(raw) = raw else {
        return Err(ApiError::internal("credit_limit parsed without its text"));
    };
    exact_credit_limit(raw.get()).map(Some)
}

/// The number text of `credit_limit`, read exactly.
pub(super) fn exact_credit_limit(text: &str) -> Result<Credits, ApiError> {
    let text = text.trim();
    let shown = shorten(text);
    let refused = |why: String| ApiError::invalid_field("credit_limit", why);
    let limit = Credits::parse_amount(text).map_err(|e| match e {
        MoneyError::TooPrecise => refused(format!(
            "'credit_limit' has more than 9 decimal places; the smallest amount is 0.000000001 credits (got {shown})."
        )),
        MoneyError::TooLarge => refused(format!(
            "'credit_limit' is too large: the most is {} credits (got {shown}).",
            Credits::MAX_AMOUNT.to_decimal_string(0)
        )),
        MoneyError::NotDecimal => refused(format!(
            "'credit_limit' is not a decimal number of credits (got {shown})."
        )),
    })?;
    if limit.is_negative() {
        return Err(refused(format!(
            "'credit_limit' must be 0 or more (got {shown})."
        )));
    }
    Ok(limit)
}

/// A client's text as quoted in an error message: at most 40 characters.
pub(super) fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

pub(super) fn parse_expires_at(value: &Value) -> Result<Option<i64>, ApiError> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(text) => text,
        other => {
            return Err(ApiError::invalid_field(
                "expires_at",
                format!(
                    "'expires_at' must be an RFC 3339 time string or null, not {}.",
                    type_name(other)
                ),
            ))
        }
    };
    let at = crate::parse_rfc3339(text).ok_or_else(|| {
        ApiError::invalid_field(
            "expires_at",
            format!("'expires_at' is not an RFC 3339 time such as 2030-01-31T12:00:00Z: '{text}'."),
        )
    })?;
    if at <= crate::now() {
        return Err(ApiError::invalid_field(
            "expires_at",
            format!("'expires_at' must be in the future (got {text})."),
        ));
    }
    Ok(Some(at))
}

pub(super) fn parse_rate_limit(value: &Value) -> Result<Option<i64>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(rpm) if rpm >= 1 => Ok(Some(rpm)),
            _ => Err(ApiError::invalid_field(
                "rate_limit_rpm",
                format!("'rate_limit_rpm' must be a whole number of requests per minute, 1 or more (got {n})."),
            )),
        },
        other => Err(ApiError::invalid_field(
            "rate_limit_rpm",
            format!("'rate_limit_rpm' must be a number or null, not {}.", type_name(other)),
        )),
    }
}

pub(super) fn parse_limit_reset(value: &Value) -> Result<Option<LimitReset>, ApiError> {
    let refused = |got: String| {
        ApiError::invalid_field(
            "limit_reset",
            format!(
                "'limit_reset' must be \"daily\", \"weekly\", \"monthly\" or null (got {got})."
            ),
        )
    };
    match value {
        Value::Null => Ok(None),
        Value::String(text) => LimitReset::parse(text)
            .map(Some)
            .ok_or_else(|| refused(format!("'{}'", shorten(text)))),
        other => Err(refused(type_name(other).to_string())),
    }
}

/// A list of model ids of the catalog, each once (in the order given), or null.
pub(super) fn parse_allowed_models(
    state: &AppState,
    value: &Value,
) -> Result<Option<Vec<String>>, ApiError> {
    let refused = |why: String| ApiError::invalid_field("allowed_models", why);
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => {
            return Err(refused(format!(
                "'allowed_models' must be a list of model ids or null, not {}.",
                type_name(other)
            )))
        }
    };
    if items.len() > MAX_ALLOWED_MODELS {
        return Err(refused(format!(
            "'allowed_models' may name at most {MAX_ALLOWED_MODELS} models (got {}).",
            items.len()
        )));
    }
    let mut models: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(id) = item else {
            return Err(refused(format!(
                "'allowed_models' must hold model ids (strings), not {}.",
                type_name(item)
            )));
        };
        if state.config.model(id).is_none() {
            return Err(refused(format!(
                "'allowed_models' names '{}', which is not a model of this gateway (GET /v1/models lists them).",
                shorten(id)
            )));
        }
        if !models.contains(id) {
            models.push(id.clone());
        }
    }
    Ok(Some(models))
}
