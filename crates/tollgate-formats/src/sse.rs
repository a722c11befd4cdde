//! Server-Sent Events: an incremental decoder for upstream streams and an encoder for the frames
//! Tollgate sends to clients.
//!
//! The decoder follows the WHATWG "event stream interpretation" rules: lines end in `\n`, `\r\n`
//! or `\r` (a `\r\n` pair may be split across chunks), lines starting with `:` are comments,
//! `data:` lines are joined with `\n`, `event:` names the event, `id:` sets the last event id,
//! `retry:` and unknown fields are ignored, a single space after the colon is dropped, and a
//! leading byte-order mark is skipped. Bytes are buffered until a line is complete, so a chunk
//! may end anywhere, also inside a UTF-8 character; invalid UTF-8 is replaced by U+FFFD rather
//! than failing the stream.
//!
//! Memory is bounded: a frame (the pending line plus the event's accumulated data) larger than
//! `max_frame_bytes` is an error, after which the decoder refuses further input.

use bytes::Bytes;

/// One dispatched Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the frame had one (a frame without it is a "message" event).
    pub event: Option<String>,
    /// The `data:` lines of the frame joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// Whether this is the OpenAI end-of-stream marker `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.trim() == DONE
    }
}

/// Why an event stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A frame grew past the decoder's limit before it was terminated.
    #[error("server-sent event frame exceeds the limit of {max_bytes} bytes")]
    FrameTooLarge {
        /// The configured limit.
        max_bytes: usize,
    },
    /// The stream's framing is broken (a binary event stream's length or checksum).
    #[error("the stream's framing is malformed: {0}")]
    Malformed(String),
}

/// The data of OpenAI's end-of-stream marker event.
pub const DONE: &str = "[DONE]";

const BOM: &[u8] = "\u{feff}".as_bytes();

/// Incremental decoder: feed it byte chunks as they arrive, get complete events back.
#[derive(Debug, Clone)]
pub struct SseDecoder {
    max_frame_bytes: usize,
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    last_event_id: Option<String>,
    /// The previous chunk ended in `\r`; a `\n` opening the next chunk belongs to it.
    skip_lf: bool,
    at_stream_start: bool,
    failed: bool,
}

impl SseDecoder {
    /// A decoder that rejects frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            line: Vec::new(),
            event: None,
            data: String::new(),
            has_data: false,
            last_event_id: None,
            skip_lf: false,
            at_stream_start: true,
            failed: false,
        }
    }

    /// Feeds the next chunk of the stream and returns the events it completed, in order.
    ///
    /// After an error the stream cannot be resynchronised: every later call fails too.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        let mut events = Vec::new();
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..pos]);
            self.check_size()?;
            let terminator = rest[pos];
            rest = &rest[pos + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            if let Some(event) = self.process_line() {
                events.push(event);
            }
            self.check_size()?;
        }
        self.line.extend_from_slice(rest);
        self.check_size()?;
        Ok(events)
    }

    /// Ends the stream: returns the last frame if the upstream closed without the blank line
    /// that should terminate it (lenient, unlike the WHATWG rules, which drop such a frame).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.failed {
            return None;
        }
        self.skip_lf = false;
        if !self.line.is_empty() {
            // A non-empty line never dispatches; it can only add to the pending frame.
            let _ = self.process_line();
        }
        self.dispatch()
    }

    /// The value of the last `id:` field seen, if any.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    fn too_large(&self) -> SseError {
        SseError::FrameTooLarge {
            max_bytes: self.max_frame_bytes,
        }
    }

    fn check_size(&mut self) -> Result<(), SseError> {
        let held = self.line.len() + self.data.len() + self.event.as_ref().map_or(0, String::len);
        if held > self.max_frame_bytes {
            self.failed = true;
            self.line = Vec::new();
            self.data = String::new();
            self.event = None;
            return Err(self.too_large());
        }
        Ok(())
    }

    /// Interprets the completed line in `self.line`; returns an event when the line was blank.
    fn process_line(&mut self) -> Option<SseEvent> {
        let raw = std::mem::take(&mut self.line);
        let mut bytes = raw.as_slice();
        if self.at_stream_start {
            self.at_stream_start = false;
            if let Some(stripped) = bytes.strip_prefix(BOM) {
                bytes = stripped;
            }
        }
        if bytes.is_empty() {
            return self.dispatch();
        }
        if bytes.first() == Some(&b':') {
            return None;
        }
        let text = String::from_utf8_lossy(bytes);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_event_id = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take().filter(|name| !name.is_empty());
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

/// Writes one SSE frame: an optional `event:` line, one `data:` line per line of `data`, and the
/// blank line that ends the frame.
///
/// Line breaks in `event` would corrupt the stream, so only its first line is written.
pub fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + 32);
    if let Some(name) = event {
        let name = name.split(['\r', '\n']).next().unwrap_or_default();
        frame.push_str("event: ");
        frame.push_str(name);
        frame.push('\n');
    }
    let mut rest = data;
    loop {
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(pos) => {
                let skip = if rest[pos..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                (&rest[..pos], Some(&rest[pos + skip..]))
            }
            None => (rest, None),
        };
        frame.push_str("data: ");
        frame.push_str(line);
        frame.push('\n');
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    frame.push('\n');
    Bytes::from(frame)
}

/// Writes one SSE frame whose data is `value` serialized as compact JSON.
pub fn encode_json(event: Option<&str>, value: &serde_json::Value) -> Bytes {
    encode(event, &value.to_string())
}

/// The OpenAI end-of-stream frame, `data: [DONE]`.
pub fn encode_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(decoder.push(chunk).expect("push"));
        }
        out.extend(decoder.finish());
        out
    }

    /// Tiny deterministic generator so the split tests need no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    const SAMPLE: &str = "\u{feff}: leading comment\r\n\
        event: message_start\r\n\
        data: {\"a\":\"héllo ✓ 🦀\"}\r\n\
        \r\n\
        data: line one\n\
        data: line two\n\
        id: 42\n\
        retry: 1000\n\
        \n\
        event:ping\r\
        data:{\"type\": \"ping\"}\r\
        \r\
        : keep-alive\n\
        \n\
        data\n\
        \n\
        data:  two spaces\n\
        unknown: field\n\
        \n\
        data: [DONE]\n\n";

    fn sample_events() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"a\":\"héllo ✓ 🦀\"}"),
            ev(None, "line one\nline two"),
            ev(Some("ping"), "{\"type\": \"ping\"}"),
            ev(None, ""),
            ev(None, " two spaces"),
            ev(None, "[DONE]"),
        ]
    }

    #[test]
    fn decodes_all_line_endings_comments_and_fields() {
        assert_eq!(decode_all(&[SAMPLE.as_bytes()]), sample_events());
    }

    #[test]
    fn every_single_split_point_gives_the_same_events() {
        let bytes = SAMPLE.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode_all(&[a, b]), sample_events(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let chunks: Vec<&[u8]> = SAMPLE.as_bytes().chunks(1).collect();
        assert_eq!(decode_all(&chunks), sample_events());
    }

    #[test]
    fn random_splits_give_the_same_events() {
        let bytes = SAMPLE.as_bytes();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..500 {
            let mut chunks = Vec::new();
            let mut start = 0;
            while start < bytes.len() {
                let len = (rng.next() % 9) as usize;
                let end = (start + len).min(bytes.len());
                chunks.push(&bytes[start..end]);
                start = end;
            }
            assert_eq!(decode_all(&chunks), sample_events());
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_break() {
        let events = decode_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(events, vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn trailing_unterminated_frame_is_returned_by_finish() {
        let mut decoder = SseDecoder::new(1024);
        assert!(decoder
            .push(b"event: x\ndata: {\"partial\":true}")
            .expect("push")
            .is_empty());
        assert_eq!(decoder.finish(), Some(ev(Some("x"), "{\"partial\":true}")));
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn frame_without_data_is_not_dispatched() {
        assert!(decode_all(&[b"event: lonely\n\n: only a comment\n\n"]).is_empty());
    }

    #[test]
    fn id_is_remembered() {
        let mut decoder = SseDecoder::new(1024);
        decoder
            .push(b"id: 7\ndata: x\n\nid: bad\0id\n\n")
            .expect("push");
        assert_eq!(decoder.last_event_id(), Some("7"));
    }

    #[test]
    fn oversized_frame_is_an_error_even_without_line_breaks() {
        let mut decoder = SseDecoder::new(16);
        assert!(decoder.push(b"data: 0123456789").is_ok());
        assert_eq!(
            decoder.push(b"abcdef"),
            Err(SseError::FrameTooLarge { max_bytes: 16 })
        );
        assert!(decoder.push(b"\n\n").is_err());
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn oversized_multi_line_frame_is_an_error() {
        let mut decoder = SseDecoder::new(16);
        let result = decoder.push(b"data: 01234567\ndata: 01234567\ndata: 0\n\n");
        assert!(result.is_err());
    }

    #[test]
    fn frames_at_the_limit_are_fine() {
        let mut decoder = SseDecoder::new(10);
        let events = decoder.push(b"data: 1234\n\ndata: 5678\n\n").expect("push");
        assert_eq!(events, vec![ev(None, "1234"), ev(None, "5678")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = decode_all(&[b"data: a\xffb\n\n"]);
        assert_eq!(events, vec![ev(None, "a\u{fffd}b")]);
    }

    #[test]
    fn encode_writes_event_and_data_lines() {
        assert_eq!(
            encode(Some("message_stop"), "{\"type\":\"message_stop\"}"),
            Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        );
        assert_eq!(
            encode(None, "a\nb\r\nc\rd"),
            Bytes::from_static(b"data: a\ndata: b\ndata: c\ndata: d\n\n")
        );
        assert_eq!(encode(None, ""), Bytes::from_static(b"data: \n\n"));
        assert_eq!(
            encode(Some("evil\ndata: injected"), "x"),
            Bytes::from_static(b"event: evil\ndata: x\n\n")
        );
        assert_eq!(encode_done(), Bytes::from_static(b"data: [DONE]\n\n"));
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let data = "first\nsecond\n\nfourth";
        let frame = encode(Some("e"), data);
        assert_eq!(decode_all(&[&frame]), vec![ev(Some("e"), data)]);
    }
}
