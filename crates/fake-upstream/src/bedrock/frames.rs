//! AWS event-stream messages as Bedrock writes them: string headers (`:event-type`,
//! `:content-type`, `:message-type`), a JSON payload with Bedrock's `p` padding field, the
//! prelude's CRC32 and the message's CRC32 (written here apart from the gateway's decoder,
//! so that the two check each other).

use bytes::Bytes;
use serde_json::Value;

/// One message with string headers.
pub(crate) fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut head: Vec<u8> = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(7); // string
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = (12 + head.len() + payload.len() + 4) as u32;
    let mut out: Vec<u8> = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude = crc32fast::hash(&out[..8]);
    out.extend_from_slice(&prelude.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let whole = crc32fast::hash(&out);
    out.extend_from_slice(&whole.to_be_bytes());
    Bytes::from(out)
}

/// Bedrock's padding: a run of letters whose length varies, so that the payload sizes do
/// not reveal the content.
fn padding(seed: usize) -> &'static str {
    const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123";
    &LETTERS[..(seed * 7) % LETTERS.len() + 1]
}

/// An `event` message: `payload` with the padding field added.
pub(crate) fn event(name: &str, mut payload: Value, seed: usize) -> Bytes {
    if let Value::Object(map) = &mut payload {
        map.insert("p".into(), padding(seed).into());
    }
    message(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// An `exception` message, as a stream's failure after its start.
pub(crate) fn exception(kind: &str, message_text: &str) -> Bytes {
    message(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        serde_json::json!({"message": message_text})
            .to_string()
            .as_bytes(),
    )
}

/// The message with one byte of its CRC flipped (the `bad_crc` directive).
pub(crate) fn corrupt(frame: &Bytes) -> Bytes {
    let mut bytes = frame.to_vec();
    if let Some(last) = bytes.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(bytes)
}
