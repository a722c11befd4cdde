//! Providers whose wire format is not one the gateway speaks to clients (Gemini, Bedrock):
//! their adapters translate the hub format (Chat Completions) to the native one and read
//! the native answers back as it, so the gateway's metering, translations and relays see
//! only the formats they know.

use crate::conversion::ConversionError;
use crate::sse::SseEvent;

/// A native event stream read as Chat Completions events.
pub trait NativeStream {
    /// The Chat Completions events of one native event (none, one or several); an error
    /// ends the stream (a malformed event, a block, an in-stream error).
    fn push(&mut self, event: &SseEvent) -> Result<Vec<SseEvent>, ConversionError>;

    /// The events that end the stream once the native stream ended: the usage chunk and
    /// `[DONE]` when it finished, nothing when it was cut short.
    fn finish(&mut self) -> Vec<SseEvent>;
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
