//! Reading a client's JSON request: only the top-level members the gateway needs are
//! parsed; the rest stays raw text, passed on as it came.

use serde_json::Value;
use tollgate_formats::RawObject;

use crate::config::Endpoint;
use crate::error::ApiError;

/// The top-level members of a client's JSON request.
pub(super) struct RequestFields<'a>(pub(super) RawObject<'a>);

impl<'a> RequestFields<'a> {
    pub(super) fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "invalid_json",
                "The request body is empty; send a JSON object.",
            ));
        }
        serde_json::from_slice(body)
            .map(RequestFields)
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("The request body is not a valid JSON object: {e}."),
                )
            })
    }

    pub(super) fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.typed(name, "a string")
    }

    pub(super) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        Ok(self
            .typed::<Option<bool>>(name, "a boolean")?
            .flatten()
            .unwrap_or(false))
    }

    pub(super) fn count(&self, name: &str) -> Result<Option<u64>, ApiError> {
        Ok(self
            .typed::<Option<u64>>(name, "a whole number of 0 or more")?
            .flatten())
    }

    pub(super) fn typed<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .map(|raw| {
                serde_json::from_str::<T>(raw.get())
                    .map_err(|_| ApiError::invalid_field(name, format!("'{name}' must be {what}.")))
            })
            .transpose()
    }

    /// The output limit the client set, under the endpoint's name for it.
    pub(super) fn output_limit(&self, endpoint: Endpoint) -> Result<Option<u64>, ApiError> {
        match endpoint {
            Endpoint::Responses => self.count("max_output_tokens"),
            // Both given: the larger bounds the answer, whichever the provider reads.
            Endpoint::ChatCompletions => Ok(self
                .count("max_completion_tokens")?
                .max(self.count("max_tokens")?)),
            _ => self.count("max_tokens"),
        }
    }

    /// `stream_options` as an object (absent or null: empty).
    pub(super) fn stream_options(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        match self.typed::<Value>("stream_options", "an object")? {
            Some(Value::Object(map)) => Ok(map),
            None | Some(Value::Null) => Ok(serde_json::Map::new()),
            Some(_) => Err(ApiError::invalid_field(
                "stream_options",
                "'stream_options' must be an object.",
            )),
        }
    }
}
