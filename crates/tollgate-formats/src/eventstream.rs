//! AWS's binary event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! `ConverseStream` and `InvokeModelWithResponseStream` send it, decoded incrementally into
//! the gateway's [`SseEvent`]s so that the stream path is the same for every provider.
//!
//! A message is: total length (u32 BE), headers length (u32 BE), the CRC32 of those 8 bytes,
//! the headers (name length u8, name, value type u8, value), the payload, and the CRC32 of
//! everything before it. Both checksums are checked: a corrupted message is an error that
//! ends the stream, never an event.
//!
//! Each message becomes one event: an `event` message is named by its `:event-type`
//! header and carries its payload as data, except Bedrock's InvokeModel `chunk`s, whose
//! payload `{"bytes": "<base64>"}` wraps the model's own event (an Anthropic Messages
//! event): that event is unwrapped and named by its `type`, so the stream reads as the
//! model's native SSE stream. An `exception` (or `error`) message becomes an
//! [`ERROR_EVENT`] whose data is `{"type":"error","error":{"type","message"}}`.

use base64::Engine;
use serde_json::{json, Value};

use crate::sse::{SseDecoder, SseError, SseEvent};

/// The event name given to an exception message.
pub const ERROR_EVENT: &str = "error";

/// The largest message AWS sends (16 MB), and the prelude and checksum sizes.
const MAX_MESSAGE: usize = 16 << 20;
const PRELUDE: usize = 12;
const TRAILER: usize = 4;

/// One decoded message: its string headers and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The headers whose values are strings (the only kind Bedrock sends); others are
    /// skipped.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Incremental decoder of event-stream messages.
#[derive(Debug, Clone)]
pub struct EventStreamDecoder {
    max_message_bytes: usize,
    buffer: Vec<u8>,
    failed: Option<SseError>,
}

impl EventStreamDecoder {
    /// A decoder that rejects messages larger than `max_message_bytes` (at most 16 MB).
    pub fn new(max_message_bytes: usize) -> Self {
        EventStreamDecoder {
            max_message_bytes: max_message_bytes.min(MAX_MESSAGE),
            buffer: Vec::new(),
            failed: None,
        }
    }

    /// Feeds the next chunk and returns the messages it completed. After an error every
    /// later call fails too (the framing cannot be resynchronised).
    pub fn push_messages(&mut self, chunk: &[u8]) -> Result<Vec<Message>, SseError> {
        self.push_with(chunk, |frame| {
            Ok(Message {
                headers: frame
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                payload: frame.payload.to_vec(),
            })
        })
    }

    /// Feeds the next chunk and returns its messages as events (see the module docs).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.push_with(chunk, to_event)
    }

    /// Decodes the complete messages in the buffer, each read in place by `read`.
    fn push_with<T>(
        &mut self,
        chunk: &[u8],
        mut read: impl FnMut(&Frame<'_>) -> Result<T, SseError>,
    ) -> Result<Vec<T>, SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut failure = None;
        while self.buffer.len() - start >= PRELUDE {
            match decode_one(&self.buffer[start..], self.max_message_bytes).and_then(|decoded| {
                decoded
                    .map(|(frame, used)| Ok((read(&frame)?, used)))
                    .transpose()
            }) {
                Ok(Some((item, used))) => {
                    out.push(item);
                    start += used;
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.buffer.drain(..start);
        Ok(out)
    }

    /// Whether the stream ended in the middle of a message.
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

fn malformed(what: impl Into<String>) -> SseError {
    SseError::Malformed(what.into())
}

fn be32(bytes: &[u8]) -> usize {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
}

/// One message, read in place: its string headers and its payload.
struct Frame<'a> {
    headers: Vec<(&'a str, &'a str)>,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// Decodes the message at the start of `bytes`: `None` while it is incomplete.
fn decode_one(bytes: &[u8], max: usize) -> Result<Option<(Frame<'_>, usize)>, SseError> {
    let total = be32(&bytes[0..4]);
    let headers_len = be32(&bytes[4..8]);
    if crc32fast::hash(&bytes[0..8]) as usize != be32(&bytes[8..12]) {
        return Err(malformed("an event-stream prelude failed its CRC check"));
    }
    if total > max {
        return Err(SseError::FrameTooLarge { max_bytes: max });
    }
    if total < PRELUDE + TRAILER || headers_len > total - PRELUDE - TRAILER {
        return Err(malformed(
            "an event-stream prelude gives impossible lengths",
        ));
    }
    if bytes.len() < total {
        return Ok(None);
    }
    let body_end = total - TRAILER;
    if crc32fast::hash(&bytes[..body_end]) as usize != be32(&bytes[body_end..total]) {
        return Err(malformed("an event-stream message failed its CRC check"));
    }
    let headers = parse_headers(&bytes[PRELUDE..PRELUDE + headers_len])?;
    Ok(Some((
        Frame {
            headers,
            payload: &bytes[PRELUDE + headers_len..body_end],
        },
        total,
    )))
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(&str, &str)>, SseError> {
    let truncated = || malformed("an event-stream header is truncated");
    let mut out = Vec::new();
    while let Some((&name_len, rest)) = bytes.split_first() {
        let name_len = usize::from(name_len);
        let name = rest.get(..name_len).ok_or_else(truncated)?;
        let (&kind, rest) = rest[name_len..].split_first().ok_or_else(truncated)?;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            other => {
                return Err(malformed(format!(
                    "unknown event-stream header type {other}"
                )))
            }
        };
        let (value, rest) = match fixed {
            Some(n) => (None, rest.get(n..).ok_or_else(truncated)?),
            None => {
                let len = rest.get(..2).ok_or_else(truncated)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let value = rest.get(2..2 + len).ok_or_else(truncated)?;
                (Some(value), &rest[2 + len..])
            }
        };
        if let (7, Some(value)) = (kind, value) {
            // Bedrock's headers are ASCII; one that is not UTF-8 is no header it sends.
            if let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
                out.push((name, value));
            }
        }
        bytes = rest;
    }
    Ok(out)
}

/// The event of one message (see the module docs).
fn to_event(message: &Frame<'_>) -> Result<SseEvent, SseError> {
    let payload = std::str::from_utf8(message.payload)
        .map_err(|_| malformed("an event-stream payload is not UTF-8"))?;
    match message.header(":message-type").unwrap_or("event") {
        "event" => {
            let name = message.header(":event-type").unwrap_or("");
            if name == "chunk" {
                return unwrap_chunk(payload);
            }
            Ok(SseEvent {
                event: Some(name.to_string()),
                data: payload.to_string(),
            })
        }
        _ => {
            let kind = message
                .header(":exception-type")
                .or_else(|| message.header(":error-code"))
                .unwrap_or("error");
            let text = serde_json::from_str::<Value>(payload)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .or_else(|| v.get("Message"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .or_else(|| message.header(":error-message").map(str::to_string))
                .unwrap_or_else(|| payload.to_string());
            Ok(SseEvent {
                event: Some(ERROR_EVENT.to_string()),
                data: json!({"type": "error", "error": {"type": kind, "message": text}})
                    .to_string(),
            })
        }
    }
}

/// An InvokeModel chunk's payload (read into borrowed fields, not a JSON tree: once per
/// streamed token).
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: std::borrow::Cow<'a, str>,
}

/// The `type` of the model's event.
#[derive(serde::Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// An InvokeModel stream `chunk`: `{"bytes": base64 of the model's event JSON}`.
fn unwrap_chunk(payload: &str) -> Result<SseEvent, SseError> {
    // Bedrock writes `{"bytes":"…"` first, and base64 has no quote or escape: the common
    // case needs no JSON parse; anything else is parsed.
    let quick = payload
        .strip_prefix("{\"bytes\":\"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(bytes, _)| std::borrow::Cow::Borrowed(bytes));
    let bytes = match quick {
        Some(bytes) => bytes,
        None => {
            serde_json::from_str::<Chunk<'_>>(payload)
                .map_err(|_| malformed("a Bedrock chunk is not JSON with `bytes`"))?
                .bytes
        }
    };
    let inner = base64::engine::general_purpose::STANDARD
        .decode(bytes.as_bytes())
        .map_err(|_| malformed("a Bedrock chunk's `bytes` is not base64"))?;
    let data =
        String::from_utf8(inner).map_err(|_| malformed("a Bedrock chunk's event is not UTF-8"))?;
    // Claude's events start with their `type`; the gateway's relay checks the whole event.
    let quick = data
        .strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(kind, _)| kind.to_string())
        .filter(|kind| !kind.contains('\\'));
    let name = quick.or_else(|| {
        serde_json::from_str::<Typed<'_>>(&data)
            .ok()
            .map(|t| t.kind.into_owned())
    });
    Ok(SseEvent { event: name, data })
}

/// The decoder of a provider's streams: SSE, or AWS's event-stream framing.
#[derive(Debug, Clone)]
pub enum StreamDecoder {
    Sse(SseDecoder),
    EventStream(EventStreamDecoder),
}

impl StreamDecoder {
    /// Feeds the next chunk and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        match self {
            StreamDecoder::Sse(d) => d.push(chunk),
            StreamDecoder::EventStream(d) => d.push(chunk),
        }
    }

    /// Ends the stream: an SSE frame left without its blank line; nothing for an event
    /// stream (a partial message is not an event).
    pub fn finish(&mut self) -> Option<SseEvent> {
        match self {
            StreamDecoder::Sse(d) => d.finish(),
            StreamDecoder::EventStream(_) => None,
        }
    }
}

/// Encodes one message with string headers (for tests and tools; the fake upstream has its
/// own encoder, so that the two check each other).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(7);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE + head.len() + payload.len() + TRAILER;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests;
