//! Reading request bodies: a size limit that answers 413, a client that stops sending
//! answered 408, and JSON parsing whose
//! failures are 400s in the API's own shape.

use axum::body::Body;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tollgate_formats::RawObject;

use crate::error::ApiError;

/// Reads a whole body up to `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::too_large(limit)
        } else if timed_out(&e) {
            body_timeout()
        } else {
            ApiError::bad_request("body_read_failed", "The request body could not be read.")
        }
    })
}

/// Whether reading a body failed because the client paused longer than
/// `[server] body_timeout_ms` (the connection layer's timeout).
pub fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// 408: the client stopped sending its body.
pub fn body_timeout() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "The request body stopped arriving before it was complete (see [server] body_timeout_ms).",
    )
}

/// Parses a body that must be a JSON object.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body is empty; send a JSON object.",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("The request body is not valid JSON: {e}."),
        )),
    }
}

/// The JSON text of a top-level member of an object body as the client wrote it (the
/// last one if the name repeats, as in the parsed object). A number read through
/// [`Value`] has gone through a float (12345678.123456789 becomes ...787); money is read
/// from this text instead.
pub fn raw_member<'a>(bytes: &'a [u8], name: &str) -> Option<&'a RawValue> {
    serde_json::from_slice::<RawObject<'a>>(bytes)
        .ok()?
        .get(name)
}

/// Refuses fields other than `allowed`, naming the first unknown one.
pub fn only_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid_field(
            unknown,
            format!(
                "Unknown field '{unknown}'. Allowed fields: {}.",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
