//! Multipart uploads (transcriptions, translations, image edits): the fields before the
//! upload are read, the model found and the worst case reserved, then the upload is
//! streamed through to the provider as it arrives, never held whole. Image edits are read
//! whole first (at most `max_upload_bytes`): their worst case needs every field (`n`, the
//! number of images).

use crate::observe::labels::AttemptOutcome;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;

use super::measure::Billing;
use super::transcript::{self, TranscriptFormat};
use super::{attempt, estimate, plan, relay, served_headers_of, Gateway, Inbound};
use crate::config::Endpoint;
use crate::error::ApiError;
use crate::providers::UpstreamBody;

/// One form field read before the upload, re-encoded for the provider.
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

/// A `response_format` field as sent upstream (see `transcript::rewrite`), noting the
/// format the gateway then writes.
fn rewrite_format(part: &mut FormPart, per_second: bool, render: &Mutex<Option<TranscriptFormat>>) {
    if part.name != "response_format" || part.file_name.is_some() {
        return;
    }
    let (send, written) = transcript::rewrite(&part.data, per_second);
    if let Some(send) = send {
        part.data = Bytes::from_static(send.as_bytes());
    }
    *render.lock().unwrap_or_else(|p| p.into_inner()) = written;
}

fn quote_header(text: &str) -> String {
    text.replace('"', "%22").replace(['\r', '\n'], " ")
}

fn part_header(
    boundary: &str,
    name: &str,
    file_name: Option<&str>,
    content_type: Option<&str>,
) -> String {
    let mut head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"",
        quote_header(name)
    );
    if let Some(file_name) = file_name {
        head.push_str(&format!("; filename=\"{}\"", quote_header(file_name)));
    }
    head.push_str("\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {}\r\n", quote_header(content_type)));
    }
    head.push_str("\r\n");
    head
}

fn encode_part(boundary: &str, part: &FormPart) -> Bytes {
    let mut out = part_header(
        boundary,
        &part.name,
        part.file_name.as_deref(),
        part.content_type.as_deref(),
    )
    .into_bytes();
    out.extend_from_slice(&part.data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// What an image edit's form asks for.
struct ImageEdit {
    /// `n`, when the form gives it.
    n: Option<u64>,
    /// Image and mask files.
    input_images: u64,
    prompt_bytes: u64,
}

/// Reads an image edit's form: `n`, its files and prompt; a streamed edit is refused (its
/// partial images arrive as events the gateway does not meter).
fn image_edit(parts: &[FormPart]) -> Result<ImageEdit, ApiError> {
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.file_name.is_none())
            .map(|p| String::from_utf8_lossy(&p.data).trim().to_string())
    };
    let n = match text("n") {
        Some(n) => Some(
            n.parse::<u64>()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field("n", "'n' must be a whole number from 1 to 10.")
                })?,
        ),
        None => None,
    };
    if text("stream").is_some_and(|s| s == "true") {
        return Err(ApiError::invalid_field(
            "stream",
            "Streamed image edits are not supported by the gateway; send the request without 'stream'.",
        ));
    }
    Ok(ImageEdit {
        n,
        input_images: parts.iter().filter(|p| p.file_name.is_some()).count() as u64,
        prompt_bytes: text("prompt").map_or(0, |p| p.len() as u64),
    })
}

/// Streams the rest of a multipart upload to the provider: the upload's chunks as they
/// arrive, then the fields after it, then the closing boundary.
enum UploadState {
    File(multer::Multipart<'static>, Box<multer::Field<'static>>),
    Rest(multer::Multipart<'static>),
    Closing,
    Done,
}

impl Gateway {
    /// A multipart upload (transcriptions, translations, image edits), streamed through to
    /// the provider.
    pub async fn multipart_call(
        &self,
        inbound: Inbound,
        headers: &axum::http::HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multer::parse_boundary(content_type).map_err(|_| {
            ApiError::bad_request(
                "invalid_content_type",
                "This endpoint takes multipart/form-data with a boundary, a 'file' and a 'model' field.",
            )
        })?;
        let limit = self.config.limits.max_upload_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::too_large(limit));
        }
        let over_limit = Arc::new(AtomicBool::new(false));
        let flag = over_limit.clone();
        let mut seen = 0usize;
        let counted = body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            seen += chunk.len();
            if seen > limit {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("upload over the limit"));
            }
            Ok::<_, std::io::Error>(chunk)
        });
        let mut multipart = multer::Multipart::new(counted, boundary);
        let too_large = |e: multer::Error| {
            if over_limit.load(Ordering::Relaxed) {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(
                    "invalid_multipart",
                    format!("The multipart body could not be read: {e}."),
                )
            }
        };

        // Fields before the upload are small and read whole; the model must be known
        // before the upload can be streamed on (if it comes after, the upload is buffered).
        let images = inbound.endpoint == Endpoint::ImagesEdits;
        let mut parts: Vec<FormPart> = Vec::new();
        let mut model_id: Option<String> = None;
        let mut upload: Option<multer::Field<'static>> = None;
        while let Some(field) = multipart.next_field().await.map_err(too_large)? {
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(|m| m.to_string());
            if file_name.is_some() && model_id.is_some() && !images {
                upload = Some(field);
                break;
            }
            let data = field.bytes().await.map_err(too_large)?;
            if name == "model" && file_name.is_none() {
                model_id = Some(
                    String::from_utf8(data.to_vec())
                        .map_err(|_| ApiError::invalid_field("model", "'model' must be text."))?,
                );
            }
            parts.push(FormPart {
                name,
                file_name,
                content_type,
                data,
            });
        }
        if upload.is_none() && !parts.iter().any(|p| p.file_name.is_some()) {
            return Err(if images {
                ApiError::invalid_field(
                    "image",
                    "An 'image' field with the image to edit is required.",
                )
            } else {
                ApiError::invalid_field("file", "A 'file' field with the audio is required.")
            });
        }
        let edit = if images {
            Some(image_edit(&parts)?)
        } else {
            None
        };
        let model = plan::model_for(&self.config, inbound.endpoint, model_id)?;
        inbound.obs.asked(&model, None);
        self.admit(&inbound, &model).await?;
        // An upload is streamed through once: it goes to the first target of the route
        // (weights, health and cooldowns apply) and is not tried again elsewhere.
        let targets = self.router.route(&self.config, &model, inbound.endpoint)?;
        let target = &targets[0];
        let deployment = target.deployment();
        let wire = self
            .upstreams
            .provider(deployment)
            .adapter
            .wire(inbound.endpoint, &deployment.upstream_model);
        if wire.is_none_or(|w| w.format.is_some()) {
            return Err(ApiError::invalid_field(
                "model",
                format!(
                    "The model '{}' is served by a provider without {}.",
                    target.model.id,
                    inbound.endpoint.path()
                ),
            ));
        }
        // A transcript format without usage is asked upstream in the JSON that carries
        // what the model is priced by, and written back by the gateway (`transcript`).
        let per_second = target.model.pricing.per_audio_second.is_some();
        let render: Arc<Mutex<Option<TranscriptFormat>>> = Arc::default();
        for part in &mut parts {
            if part.name == "model" && part.file_name.is_none() {
                part.data = Bytes::from(deployment.upstream_model.clone());
            }
            rewrite_format(part, per_second, &render);
        }

        let worst = match &edit {
            Some(edit) => estimate::image_edit_worst_case(
                edit.n,
                edit.input_images,
                edit.prompt_bytes,
                &target.model,
            ),
            None => estimate::upload_worst_case(declared.unwrap_or(limit), &target.model),
        };
        let amount = target.model.pricing.cost(&worst);
        let mut settlement = self.reserve(&inbound, &model, amount).await?;
        let provider = self.upstreams.provider(deployment);
        settlement.attempted(&target.model, provider.name.clone());

        let boundary = format!("tollgate-{}", uuid::Uuid::new_v4().simple());
        let mut prefix = Vec::new();
        for part in &parts {
            prefix.extend_from_slice(&encode_part(&boundary, part));
        }
        let state = match upload {
            Some(field) => {
                prefix.extend_from_slice(
                    part_header(
                        &boundary,
                        field.name().unwrap_or("file"),
                        field.file_name(),
                        field.content_type().map(|m| m.to_string()).as_deref(),
                    )
                    .as_bytes(),
                );
                UploadState::File(multipart, Box::new(field))
            }
            None => UploadState::Closing,
        };
        let tail_boundary = boundary.clone();
        let tail_render = render.clone();
        let rest = futures_util::stream::unfold(state, move |state| {
            let boundary = tail_boundary.clone();
            let render = tail_render.clone();
            async move {
                match state {
                    UploadState::File(multipart, mut field) => match field.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), UploadState::File(multipart, field))),
                        Ok(None) => {
                            drop(field);
                            Some((
                                Ok(Bytes::from_static(b"\r\n")),
                                UploadState::Rest(multipart),
                            ))
                        }
                        Err(e) => {
                            Some((Err(std::io::Error::other(e.to_string())), UploadState::Done))
                        }
                    },
                    UploadState::Rest(mut multipart) => match multipart.next_field().await {
                        Ok(Some(field)) => {
                            let part = FormPart {
                                name: field.name().unwrap_or("").to_string(),
                                file_name: field.file_name().map(str::to_string),
                                content_type: field.content_type().map(|m| m.to_string()),
                                data: Bytes::new(),
                            };
                            match field.bytes().await {
                                Ok(data) => {
                                    let mut part = FormPart { data, ..part };
                                    rewrite_format(&mut part, per_second, &render);
                                    Some((
                                        Ok(encode_part(&boundary, &part)),
                                        UploadState::Rest(multipart),
                                    ))
                                }
                                Err(e) => Some((
                                    Err(std::io::Error::other(e.to_string())),
                                    UploadState::Done,
                                )),
                            }
                        }
                        Ok(None) => Some((Ok(Bytes::new()), UploadState::Closing)),
                        Err(e) => {
                            Some((Err(std::io::Error::other(e.to_string())), UploadState::Done))
                        }
                    },
                    UploadState::Closing => Some((
                        Ok(Bytes::from(format!("--{boundary}--\r\n"))),
                        UploadState::Done,
                    )),
                    UploadState::Done => None,
                }
            }
        });
        let stream =
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(prefix)) })
                .chain(rest);
        let upstream = self
            .upstreams
            .send(
                deployment,
                inbound.endpoint,
                false,
                &format!("multipart/form-data; boundary={boundary}"),
                UpstreamBody::stream(stream),
                &inbound.headers.for_provider(provider.config.kind, false),
            )
            .await;
        let sent = match upstream {
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(refused) => Err(attempt::refusal(&self.upstreams, deployment, refused).await),
            Err(e) => Err(e),
        };
        match &sent {
            Ok(_) => {
                self.router.succeeded(deployment);
                inbound.obs.attempt(&provider.name, AttemptOutcome::success);
            }
            Err(e) => {
                self.router.failed(deployment, e);
                inbound.obs.attempt(&provider.name, AttemptOutcome::of(e));
            }
        }
        let upstream = match sent {
            Ok(upstream) => upstream,
            Err(e) => {
                settlement.settle_undelivered(e.ledger_status()).await;
                if over_limit.load(Ordering::Relaxed) {
                    return Err(ApiError::too_large(limit));
                }
                return Err(e.into());
            }
        };
        let headers = served_headers_of(&target.model, provider, 1);
        let deadline = tokio::time::Instant::now() + self.config.limits.stream_timeout;
        let is_sse = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            let mut answered = transcript::stream(
                upstream,
                settlement,
                provider.config.idle_timeout,
                deadline,
                self.config.limits.max_stream_frame_bytes,
            );
            answered.headers_mut().extend(headers);
            return Ok(answered);
        }
        let render = *render.lock().unwrap_or_else(|p| p.into_inner());
        let whole = relay::json::Whole {
            native: None,
            provider: &provider.config.name,
            idle_timeout: provider.config.idle_timeout,
            deadline,
            billing: match &edit {
                Some(edit) => Billing::Images {
                    n: edit.n.unwrap_or(1),
                },
                None => Billing::Transcription,
            },
            convert: None,
            render,
            rename: None,
            input_estimate: 0,
            max_bytes: u64::MAX,
        };
        let mut answered = relay::json::finish(upstream, settlement, whole).await?;
        answered.headers_mut().extend(headers);
        Ok(answered)
    }
}
