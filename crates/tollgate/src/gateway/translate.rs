//! Translation between the client's format and the provider's: which direction a pair of
//! formats needs, and the request, answer and stream converters of each direction.

use bytes::Bytes;
use serde_json::Value;
use tollgate_formats::conversion::{
    chat_to_messages, messages_to_chat, responses_to_chat, responses_to_messages, Converted,
};
use tollgate_formats::usage as wire_usage;
use tollgate_formats::{ConversionError, Format, StreamConverter};

use crate::error::ApiError;

/// A translation between the client's format and the provider's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Translation {
    /// A Messages client, a Chat Completions provider.
    MessagesToChat,
    /// A Chat Completions client, a Messages provider.
    ChatToMessages,
    /// A Responses client, a provider that only speaks Chat Completions.
    ResponsesToChat,
    /// A Responses client, a Messages provider.
    ResponsesToMessages,
}

impl Translation {
    /// The translation from `client` to `upstream`: `Ok(None)` when they are the same,
    /// `Err(())` when no translation exists.
    pub(super) fn between(client: Format, upstream: Format) -> Result<Option<Translation>, ()> {
        match (client, upstream) {
            (a, b) if a == b => Ok(None),
            (Format::AnthropicMessages, Format::ChatCompletions) => {
                Ok(Some(Translation::MessagesToChat))
            }
            (Format::ChatCompletions, Format::AnthropicMessages) => {
                Ok(Some(Translation::ChatToMessages))
            }
            (Format::Responses, Format::ChatCompletions) => Ok(Some(Translation::ResponsesToChat)),
            (Format::Responses, Format::AnthropicMessages) => {
                Ok(Some(Translation::ResponsesToMessages))
            }
            _ => Err(()),
        }
    }

    /// Translates a client request: the upstream body and the parsed original (the
    /// answer's translation needs it).
    /// The hints the target could not honour are listed in `Converted::dropped`.
    pub(super) fn request(
        self,
        body: &[u8],
        upstream_model: &str,
        output_bound: u64,
    ) -> Result<(Converted, Value), ApiError> {
        let original: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("The request body is not valid JSON: {e}."),
            )
        })?;
        let converted = match self {
            Translation::MessagesToChat => {
                messages_to_chat::convert_request(&original, upstream_model)
            }
            Translation::ChatToMessages => {
                chat_to_messages::convert_request(&original, upstream_model, output_bound)
            }
            Translation::ResponsesToChat => {
                responses_to_chat::convert_request(&original, upstream_model)
            }
            Translation::ResponsesToMessages => {
                responses_to_messages::convert_request(&original, upstream_model, output_bound)
            }
        }
        .map_err(untranslatable)?;
        Ok((converted, original))
    }

    /// Translates a whole answer back to the client's format.
    pub(super) fn answer(
        self,
        answer: &Value,
        original: &Value,
        public_model: &str,
    ) -> Result<Bytes, ConversionError> {
        let converted = match self {
            Translation::MessagesToChat => {
                messages_to_chat::convert_response(answer, public_model)?
            }
            Translation::ChatToMessages => chat_to_messages::convert_response(
                answer,
                public_model,
                tollgate_formats::conversion::unix_now(),
            )?,
            Translation::ResponsesToChat => {
                responses_to_chat::convert_response(answer, original, public_model)?
            }
            Translation::ResponsesToMessages => responses_to_messages::convert_response(
                answer,
                original,
                public_model,
                tollgate_formats::conversion::unix_now(),
            )?,
        };
        serde_json::to_vec(&converted)
            .map(Bytes::from)
            .map_err(|e| ConversionError::new("", e.to_string()))
    }

    /// A converter of the provider's stream into the client's format.
    pub(super) fn stream(
        self,
        original: &Value,
        public_model: &str,
    ) -> Box<dyn StreamConverter + Send> {
        match self {
            Translation::MessagesToChat => {
                Box::new(messages_to_chat::ResponseStream::new(public_model))
            }
            Translation::ChatToMessages => Box::new(chat_to_messages::ResponseStream::new(
                public_model,
                tollgate_formats::conversion::unix_now(),
                wire_usage::chat_request_wants_usage(original),
            )),
            Translation::ResponsesToChat => Box::new(responses_to_chat::ResponseStream::new(
                original,
                public_model,
            )),
            Translation::ResponsesToMessages => {
                Box::new(responses_to_messages::ResponseStream::new(
                    original,
                    public_model,
                    tollgate_formats::conversion::unix_now(),
                ))
            }
        }
    }
}

/// A translation that cannot be made is the client's 400, naming the field.
pub(super) fn untranslatable(e: ConversionError) -> ApiError {
    ApiError {
        code: "untranslatable",
        ..ApiError::invalid_field(&e.param, e.to_string())
    }
}
