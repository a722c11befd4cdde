//! Planning a request's route: the catalog entry of its model, the deployment that serves
//! it, the wire format spoken there and the translation it needs, and the upstream body.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use serde_json::Value;
use tollgate_formats::Format;

use super::demands::{self, Demands, DEFAULT_HOSTED_CALLS};
use super::request::RequestFields;
use super::translate::Translation;
use crate::config::{Config, Deployment, Endpoint, Model};
use crate::error::{quoted, ApiError};
use crate::providers::{ClientHeaders, Upstreams, Wire};
use crate::routing::Target;
use crate::store::KeyRecord;

/// The format a client speaks on an endpoint (text generation only).
pub(super) fn client_format(endpoint: Endpoint) -> Option<Format> {
    match endpoint {
        Endpoint::ChatCompletions => Some(Format::ChatCompletions),
        Endpoint::Responses => Some(Format::Responses),
        Endpoint::Messages => Some(Format::AnthropicMessages),
        // Legacy completions share Chat Completions' usage, stream framing and errors.
        Endpoint::Completions => Some(Format::ChatCompletions),
        _ => None,
    }
}

/// The catalog entry of a request's model, checked against the endpoint.
pub(super) fn model_for(
    config: &Config,
    endpoint: Endpoint,
    model: Option<String>,
) -> Result<Arc<Model>, ApiError> {
    let Some(id) = model else {
        return Err(ApiError::invalid_field(
            "model",
            "'model' is required; GET /v1/models lists the models.",
        ));
    };
    let model = config.model(&id).ok_or_else(|| unknown_model(&id))?;
    if !model.endpoints.contains(&endpoint) {
        return Err(ApiError {
            code: "unsupported_endpoint",
            ..ApiError::invalid_field(
                "model",
                format!(
                    "The model '{}' does not support {}; it supports: {}.",
                    model.id,
                    endpoint.path(),
                    model
                        .endpoints
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        });
    }
    Ok(model.clone())
}

/// The 403 of a model the key may not use: it names the model and the key's allowed ones.
pub fn check_allowed(key: &KeyRecord, model: &Model) -> Result<(), ApiError> {
    match &key.allowed_models {
        Some(allowed) if !allowed.contains(&model.id) => Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "model_not_allowed",
                format!(
                    "This key may not use the model '{}'; it may use: {}. Change allowed_models with PATCH /v1/account/keys/{{id}}.",
                    model.id,
                    if allowed.is_empty() {
                        "no model".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            )
        }),
        _ => Ok(()),
    }
}

/// The 404 of a model the catalog does not have (as OpenAI and Anthropic answer, so the
/// SDKs raise their not-found error); the name is quoted up to [`crate::error::QUOTED_NAME_CHARS`].
pub fn unknown_model(id: &str) -> ApiError {
    ApiError {
        param: Some("model".into()),
        ..ApiError::not_found(
            "model_not_found",
            format!(
                "The model '{}' does not exist here; GET /v1/models lists the models.",
                quoted(id)
            ),
        )
    }
}

/// One upstream request, ready to send: where, in which format, with which body.
pub(super) struct Prepared {
    pub(super) target: Target,
    pub(super) wire: Wire,
    pub(super) client_format: Option<Format>,
    pub(super) translation: Option<Translation>,
    /// The client did not ask for the usage the gateway asked the provider to stream.
    pub(super) strip_usage: bool,
    pub(super) body: Bytes,
    /// The client's request, parsed, when the answer must be translated.
    pub(super) original: Option<Value>,
    /// The public id to put where the provider's answer names its own model (passed-on
    /// answers only; translated ones are written with it).
    pub(super) rename: Option<String>,
    /// The hints the translation could not carry (`x-tollgate-dropped-fields`).
    pub(super) dropped: Option<String>,
    /// The client's headers this provider receives.
    pub(super) forwarded: Vec<(HeaderName, HeaderValue)>,
    /// The client asked for an event stream.
    pub(super) stream: bool,
    /// The body was translated to the provider's native format (see
    /// `providers::Native`); `base64`: the embeddings client asked for base64 vectors.
    pub(super) native: Option<NativeCall>,
}

/// What reading a native provider's answer needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct NativeCall {
    pub(super) base64: bool,
}

impl Prepared {
    /// The deployment this request goes to.
    pub(super) fn deployment(&self) -> &Deployment {
        self.target.deployment()
    }

    /// The model this request is served by.
    pub(super) fn model(&self) -> &Arc<Model> {
        &self.target.model
    }
}

/// What the client asked, as every target's upstream request is prepared from it.
pub(super) struct Asked<'a> {
    pub(super) endpoint: Endpoint,
    /// The model asked for.
    pub(super) model: &'a Model,
    pub(super) request: &'a RequestFields<'a>,
    pub(super) demands: &'a Demands,
    pub(super) stream: bool,
    pub(super) body: &'a Bytes,
    pub(super) headers: &'a ClientHeaders,
}

/// Prepares the upstream request of one target of a request's route: in the wire's
/// format, then, for a provider with a format of its own, translated to it.
pub(super) fn prepare(
    upstreams: &Upstreams,
    target: &Target,
    asked: &Asked<'_>,
) -> Result<Prepared, ApiError> {
    let mut prepared = prepare_hub(upstreams, target, asked)?;
    let provider = upstreams.provider(target.deployment());
    let upstream_model = &target.deployment().upstream_model;
    if let Some(native) = provider.adapter.native(upstream_model) {
        native_request(native, &mut prepared, asked, upstream_model)?;
    }
    prepared.body = provider
        .adapter
        .upstream_body(
            prepared.wire,
            upstream_model,
            prepared.stream,
            prepared.body,
            &prepared.forwarded,
        )
        .map_err(super::translate::untranslatable)?;
    Ok(prepared)
}

/// Translates a prepared hub request to a native provider's format.
fn native_request(
    native: &dyn crate::providers::Native,
    prepared: &mut Prepared,
    asked: &Asked<'_>,
    upstream_model: &str,
) -> Result<(), ApiError> {
    let converted = native
        .request(prepared.wire.endpoint, &prepared.body, upstream_model)
        .map_err(super::translate::untranslatable)?;
    if let Some(more) = converted.header_value() {
        prepared.dropped = Some(match prepared.dropped.take() {
            Some(first) => format!("{first}, {more}"),
            None => more,
        });
    }
    prepared.body = Bytes::from(serde_json::to_vec(&converted.body).map_err(ApiError::internal)?);
    prepared.native = Some(NativeCall {
        base64: asked
            .request
            .string("encoding_format")
            .ok()
            .flatten()
            .as_deref()
            == Some("base64"),
    });
    Ok(())
}

/// Prepares the upstream request of one target in the wire's format.
fn prepare_hub(
    upstreams: &Upstreams,
    target: &Target,
    asked: &Asked<'_>,
) -> Result<Prepared, ApiError> {
    let Asked {
        endpoint,
        model: requested,
        request,
        demands,
        stream,
        body,
        headers,
    } = *asked;
    let model = &target.model;
    let deployment = target.deployment();
    let provider = upstreams.provider(deployment);
    let client_format = client_format(endpoint);
    let cannot = || {
        ApiError::invalid_field(
            "model",
            format!(
                "The model '{}' is served by a provider that does not speak {}.",
                model.id,
                endpoint.path()
            ),
        )
    };
    let wire = provider
        .adapter
        .wire(endpoint, &deployment.upstream_model)
        .ok_or_else(cannot)?;
    let translation = match (client_format, wire.format) {
        (Some(client), Some(upstream)) => {
            Translation::between(client, upstream).map_err(|()| cannot())?
        }
        (None, None) => None,
        _ => return Err(cannot()),
    };
    let renamed = deployment.upstream_model != model.id || model.id != requested.id;
    let mut prepared = Prepared {
        target: target.clone(),
        wire,
        client_format,
        translation,
        strip_usage: false,
        body: body.clone(),
        original: None,
        rename: renamed.then(|| model.id.clone()),
        dropped: None,
        forwarded: headers.for_provider(provider.config.kind, translation.is_some()),
        stream,
        native: None,
    };
    let bound = demands::output_bound(demands, model);
    if let Some(translation) = translation {
        let (converted, original) = translation.request(body, &deployment.upstream_model, bound)?;
        prepared.dropped = converted.header_value();
        let mut converted = converted.body;
        // Every upstream request carries an output bound (the converters keep the
        // client's own); hosted tools are refused by the converters.
        if let (Some(Format::ChatCompletions), Value::Object(map)) = (wire.format, &mut converted) {
            if !map.contains_key("max_completion_tokens") && !map.contains_key("max_tokens") {
                map.insert("max_completion_tokens".into(), bound.into());
            }
        }
        let bytes = serde_json::to_vec(&converted).map_err(ApiError::internal)?;
        prepared.body = Bytes::from(bytes);
        prepared.original = Some(original);
        return Ok(prepared);
    }
    // The body as it came, but for the model's upstream name, the output bound when the
    // client gave none, a bound on hosted-tool calls when it gave none, and on streamed
    // chat a request for usage in the stream.
    let mut replace: Vec<(&str, String)> = Vec::new();
    if deployment.upstream_model != model.id {
        replace.push((
            "model",
            Value::String(deployment.upstream_model.clone()).to_string(),
        ));
    }
    if endpoint == Endpoint::Completions {
        // The client's limit, or the default the gateway reserved for, sent explicitly.
        if request.0.get("max_tokens").is_none() {
            replace.push(("max_tokens", bound.to_string()));
        }
    } else if demands.output_limit.is_none() {
        match wire.format {
            Some(Format::ChatCompletions) => {
                replace.push(("max_completion_tokens", bound.to_string()))
            }
            Some(Format::Responses) => replace.push(("max_output_tokens", bound.to_string())),
            Some(Format::AnthropicMessages) => replace.push(("max_tokens", bound.to_string())),
            None => {}
        }
    }
    if demands.bound_hosted_calls {
        match wire.format {
            Some(Format::Responses) => {
                replace.push(("max_tool_calls", DEFAULT_HOSTED_CALLS.to_string()))
            }
            Some(Format::AnthropicMessages) => {
                if let Some(tools) = bounded_server_tools(request)? {
                    replace.push(("tools", tools));
                }
            }
            _ => {}
        }
    }
    if stream && wire.format == Some(Format::ChatCompletions) {
        let mut options = request.stream_options()?;
        let wanted = options.get("include_usage").and_then(Value::as_bool) == Some(true);
        if !wanted {
            options.insert("include_usage".into(), Value::Bool(true));
            replace.push(("stream_options", Value::Object(options).to_string()));
            prepared.strip_usage = true;
        }
    }
    if !replace.is_empty() {
        prepared.body = Bytes::from(request.0.rewrite(&replace, &[]));
    }
    Ok(prepared)
}

/// The `tools` of an Anthropic request with a `max_uses` bound on every server tool
/// that lacks one (so the hosted calls reserved for cannot be exceeded); `None` when
/// none lacks it.
fn bounded_server_tools(request: &RequestFields<'_>) -> Result<Option<String>, ApiError> {
    let Some(mut tools) = request.typed::<Vec<Value>>("tools", "an array of tools")? else {
        return Ok(None);
    };
    let mut changed = false;
    for tool in &mut tools {
        let server = tool
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("web_search_") || t.starts_with("code_execution_"));
        if let (true, Value::Object(map)) = (server, tool) {
            if !map.contains_key("max_uses") {
                map.insert("max_uses".into(), DEFAULT_HOSTED_CALLS.into());
                changed = true;
            }
        }
    }
    Ok(changed.then(|| Value::Array(tools).to_string()))
}
