//! `[[fake:key=value,flag]]` directives: fault injection and reply shaping, written in
//! the request's own text so they survive a gateway that translates formats.

use std::time::Duration;

use crate::content::Usage;

/// Largest `words=N` honoured, so a typo cannot exhaust memory.
const MAX_WORDS: u64 = 100_000;
/// Largest `pad_bytes=N`: 2 GiB.
pub(crate) const MAX_PAD_BYTES: u64 = 2 << 30;

/// The directives found in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) status: Option<u16>,
    pub(crate) retry_after: Option<u64>,
    pub(crate) reset: bool,
    pub(crate) malformed: bool,
    pub(crate) cut_after: Option<usize>,
    pub(crate) error_after: Option<usize>,
    pub(crate) first_byte: Option<Duration>,
    pub(crate) chunk_delay: Option<Duration>,
    pub(crate) words: Option<usize>,
    pub(crate) tool: bool,
    /// `tool_name=NAME`: the tool called (else the first one offered).
    pub(crate) tool_name: Option<String>,
    pub(crate) cached: u64,
    pub(crate) cache_write: u64,
    pub(crate) comments: bool,
    pub(crate) flagged: bool,
    pub(crate) no_usage: bool,
    pub(crate) wrong_type: bool,
    pub(crate) no_terminator: bool,
    pub(crate) ignore_max_tokens: bool,
    pub(crate) report_input: Option<u64>,
    pub(crate) report_output: Option<u64>,
    pub(crate) endless: bool,
    pub(crate) pad_bytes: Option<u64>,
    pub(crate) echo_headers: bool,
    pub(crate) trickle: Option<Duration>,
    /// Gemini: `blocked=prompt` or `blocked=answer` (a safety block).
    pub(crate) blocked: Option<String>,
    /// Gemini: thought tokens the answer reports (and one thought part).
    pub(crate) thoughts: u64,
    /// Bedrock: the second event-stream message of a stream has a wrong CRC.
    pub(crate) bad_crc: bool,
}

const OPEN: &str = "[[fake:";
const CLOSE: &str = "]]";

impl Directives {
    /// Parses every `[[fake:…]]` block of the texts; an unknown key or a bad value is
    /// an error message for a 400.
    pub(crate) fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut d = Self::default();
        for text in texts {
            let mut rest = text;
            while let Some(start) = rest.find(OPEN) {
                let after = &rest[start + OPEN.len()..];
                let Some(end) = after.find(CLOSE) else { break };
                for item in after[..end].split(',') {
                    d.apply(item.trim())?;
                }
                rest = &after[end + CLOSE.len()..];
            }
        }
        if d.echo_headers && d.status.is_none() {
            return Err("fake directive `echo_headers` needs `status=N`".into());
        }
        Ok(d)
    }

    /// The output cap the reply obeys: none with `ignore_max_tokens`.
    pub(crate) fn max_tokens(&self, requested: Option<u64>) -> Option<u64> {
        requested.filter(|_| !self.ignore_max_tokens)
    }

    /// Output tokens the `pad_bytes` padding adds: `ceil(N / 4)`.
    pub(crate) fn pad_tokens(&self) -> u64 {
        self.pad_bytes.unwrap_or(0).div_ceil(4)
    }

    /// The usage the answer reports: `None` with `no_usage`, else what was generated
    /// (plus the padding), overridden by `report_input` / `report_output`.
    pub(crate) fn usage(&self, input: u64, output: u64, cache_write: u64) -> Option<Usage> {
        if self.no_usage {
            return None;
        }
        let output = output.saturating_add(self.pad_tokens());
        Some(Usage::new(
            self.report_input.unwrap_or(input),
            self.report_output.unwrap_or(output),
            self.cached,
            cache_write,
        ))
    }

    /// The pause between stream chunks: the directive's, else the configured one.
    pub(crate) fn chunk_delay(&self, configured: Duration) -> Duration {
        self.chunk_delay.unwrap_or(configured)
    }

    fn apply(&mut self, item: &str) -> Result<(), String> {
        if item.is_empty() {
            return Ok(());
        }
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        match key {
            "status" => {
                let code = number(key, value)?;
                if !(400..=599).contains(&code) {
                    return Err(format!(
                        "fake directive `status` must be 400..=599, got {code}"
                    ));
                }
                self.status = u16::try_from(code).ok();
            }
            "retry_after" => self.retry_after = Some(number(key, value)?),
            "reset" => self.reset = flag(key, value)?,
            "malformed" => self.malformed = flag(key, value)?,
            "cut_after" => self.cut_after = Some(count(key, value)?),
            "error_after" => self.error_after = Some(count(key, value)?),
            "first_byte_ms" => {
                self.first_byte = Some(Duration::from_millis(number(key, value)?));
            }
            "chunk_ms" => self.chunk_delay = Some(Duration::from_millis(number(key, value)?)),
            "words" => {
                let n = number(key, value)?;
                if n > MAX_WORDS {
                    return Err(format!("fake directive `words` is at most {MAX_WORDS}"));
                }
                self.words = Some(n as usize);
            }
            "tool" => self.tool = flag(key, value)?,
            "tool_name" => {
                let name = value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| "fake directive `tool_name` needs a tool name".to_string())?;
                self.tool = true;
                self.tool_name = Some(name.to_string());
            }
            "cached" => self.cached = number(key, value)?,
            "cache_write" => self.cache_write = number(key, value)?,
            "comments" => self.comments = flag(key, value)?,
            "flagged" => self.flagged = flag(key, value)?,
            "no_usage" => self.no_usage = flag(key, value)?,
            "wrong_type" => self.wrong_type = flag(key, value)?,
            "no_terminator" => self.no_terminator = flag(key, value)?,
            "ignore_max_tokens" => self.ignore_max_tokens = flag(key, value)?,
            "report_input" => self.report_input = Some(number(key, value)?),
            "report_output" => self.report_output = Some(number(key, value)?),
            "endless" => self.endless = flag(key, value)?,
            "pad_bytes" => {
                let n = number(key, value)?;
                if n > MAX_PAD_BYTES {
                    return Err(format!(
                        "fake directive `pad_bytes` is at most {MAX_PAD_BYTES}"
                    ));
                }
                self.pad_bytes = Some(n);
            }
            "echo_headers" => self.echo_headers = flag(key, value)?,
            "trickle_ms" => self.trickle = Some(Duration::from_millis(number(key, value)?)),
            "blocked" => match value {
                Some(v @ ("prompt" | "answer")) => self.blocked = Some(v.to_string()),
                _ => return Err("fake directive `blocked` is `prompt` or `answer`".into()),
            },
            "thoughts" => self.thoughts = number(key, value)?,
            "bad_crc" => self.bad_crc = flag(key, value)?,
            other => return Err(format!("unknown fake directive `{other}`")),
        }
        Ok(())
    }
}

fn number(key: &str, value: Option<&str>) -> Result<u64, String> {
    let v = value.ok_or_else(|| format!("fake directive `{key}` needs a value"))?;
    v.parse()
        .map_err(|_| format!("fake directive `{key}` needs a whole number, got `{v}`"))
}

fn count(key: &str, value: Option<&str>) -> Result<usize, String> {
    usize::try_from(number(key, value)?).map_err(|_| format!("fake directive `{key}` too large"))
}

fn flag(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(format!("fake directive `{key}` is a flag, got `{v}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_and_flags() {
        let d = Directives::parse([
            "hi [[fake:status=503, words=3]] there",
            "[[fake:tool]][[fake:cut_after=2,chunk_ms=5]]",
        ])
        .expect("parses");
        assert_eq!(d.status, Some(503));
        assert_eq!(d.words, Some(3));
        assert!(d.tool);
        assert_eq!(d.cut_after, Some(2));
        assert_eq!(d.chunk_delay, Some(Duration::from_millis(5)));
    }

    #[test]
    fn misbehaviour_flags_and_reported_usage() {
        let d = Directives::parse([
            "[[fake:no_usage,wrong_type,no_terminator,ignore_max_tokens,endless,trickle_ms=3]]",
        ])
        .expect("parses");
        assert!(d.no_usage && d.wrong_type && d.no_terminator && d.endless);
        assert_eq!(d.max_tokens(Some(5)), None);
        assert_eq!(d.usage(10, 3, 0), None);
        assert_eq!(d.trickle, Some(Duration::from_millis(3)));

        let d = Directives::parse(["[[fake:report_input=1000000000000000000,pad_bytes=9]]"])
            .expect("parses");
        let u = d.usage(10, 3, 0).expect("usage");
        assert_eq!((u.input, u.output), (1_000_000_000_000_000_000, 3 + 3));
        let d = Directives::parse(["[[fake:report_output=18446744073709551615]]"]).expect("ok");
        let u = d.usage(u64::MAX, 3, 0).expect("usage");
        assert_eq!(u.total(), u64::MAX);
        assert_eq!(d.max_tokens(Some(5)), Some(5));
    }

    #[test]
    fn misbehaviour_limits() {
        assert!(Directives::parse(["[[fake:pad_bytes=2147483648]]"]).is_ok());
        assert!(Directives::parse(["[[fake:pad_bytes=2147483649]]"]).is_err());
        assert!(Directives::parse(["[[fake:echo_headers]]"]).is_err());
        assert!(Directives::parse(["[[fake:echo_headers,status=400]]"]).is_ok());
        assert!(Directives::parse(["[[fake:report_input=-1]]"]).is_err());
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert!(Directives::parse(["[[fake:nope]]"]).is_err());
        assert!(Directives::parse(["[[fake:status=200]]"]).is_err());
        assert!(Directives::parse(["[[fake:words=x]]"]).is_err());
        assert!(Directives::parse(["[[fake:words]]"]).is_err());
        assert_eq!(
            Directives::parse(["[[fake:status=500"]).expect("parses"),
            Directives::default()
        );
        assert_eq!(
            Directives::parse(["[[fake:]]"]).expect("parses"),
            Directives::default()
        );
    }
}
