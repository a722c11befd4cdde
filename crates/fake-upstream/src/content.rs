//! Deterministic reply content, token counts, ids and tool-call arguments.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// The words a text reply cycles through.
pub(crate) const WORDS: [&str; 16] = [
    "Hello",
    "from",
    "the",
    "fake",
    "upstream,",
    "a",
    "café",
    "of",
    "deterministic",
    "words",
    "for",
    "tests",
    "that",
    "count",
    "every",
    "token.",
];

/// Reply length when the request does not say.
pub(crate) const DEFAULT_WORDS: usize = 12;

/// Characters per streamed tool-argument fragment.
const FRAGMENT_CHARS: usize = 8;

/// Whitespace-separated words.
pub(crate) fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Words of every `text` in a content value: a string, or an array of parts whose
/// `text` (or, for tool results, `content`) is counted.
pub(crate) fn content_words(v: &Value) -> u64 {
    match v {
        Value::String(s) => count_words(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(s)) => count_words(s),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// The texts of a content value (string or array of parts with `text`).
pub(crate) fn content_texts(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

/// Why the reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    StopSequence(String),
    ToolCall,
}

/// A tool call the fake makes.
#[derive(Debug, Clone)]
pub(crate) struct ToolCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
    pub(crate) fragments: Vec<String>,
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Text, one chunk per word (the first without a leading space).
    Text(Vec<String>),
    Tool(ToolCall),
}

/// The reply and how it ends.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) reply: Reply,
    pub(crate) finish: Finish,
}

impl Plan {
    pub(crate) fn text(&self) -> String {
        match &self.reply {
            Reply::Text(chunks) => chunks.concat(),
            Reply::Tool(_) => String::new(),
        }
    }

    pub(crate) fn output_tokens(&self) -> u64 {
        match &self.reply {
            Reply::Text(chunks) => chunks.len() as u64,
            Reply::Tool(t) => t.fragments.len() as u64,
        }
    }
}

/// The first tool of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ToolSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) schema: Option<&'a Value>,
}

/// What shapes a reply.
#[derive(Debug, Default)]
pub(crate) struct PlanInput<'a> {
    pub(crate) words: Option<usize>,
    pub(crate) want_tool: bool,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) stop: Vec<&'a str>,
    pub(crate) tool: Option<ToolSpec<'a>>,
    pub(crate) last_is_tool_result: bool,
}

/// Decides the reply; `call_id` names a tool call when there is one.
pub(crate) fn plan(input: PlanInput<'_>, call_id: impl FnOnce() -> String) -> Plan {
    if input.want_tool && !input.last_is_tool_result {
        if let Some(tool) = input.tool {
            let arguments = tool_arguments(tool.schema);
            let fragments = fragments(&arguments);
            return Plan {
                reply: Reply::Tool(ToolCall {
                    id: call_id(),
                    name: tool.name.to_string(),
                    arguments,
                    fragments,
                }),
                finish: Finish::ToolCall,
            };
        }
    }
    let mut n = input.words.unwrap_or(DEFAULT_WORDS);
    let mut finish = Finish::Stop;
    if let Some(max) = input.max_tokens {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if max < n {
            n = max;
            finish = Finish::Length;
        }
    }
    let mut chunks = Vec::with_capacity(n);
    for i in 0..n {
        let word = WORDS[i % WORDS.len()];
        if let Some(s) = input
            .stop
            .iter()
            .find(|s| !s.trim().is_empty() && s.trim() == word)
        {
            finish = Finish::StopSequence((*s).to_string());
            break;
        }
        chunks.push(word_chunk(i as u64));
    }
    Plan {
        reply: Reply::Text(chunks),
        finish,
    }
}

/// The `i`-th streamed word of a text reply: the first bare, the others after a space.
pub(crate) fn word_chunk(i: u64) -> String {
    let word = WORDS[(i % WORDS.len() as u64) as usize];
    if i == 0 {
        word.to_string()
    } else {
        format!(" {word}")
    }
}

/// The tool named `wanted` among `specs`, else the first.
pub(crate) fn pick_tool<'a>(
    specs: impl Iterator<Item = ToolSpec<'a>>,
    wanted: Option<&str>,
) -> Option<ToolSpec<'a>> {
    let specs: Vec<ToolSpec<'a>> = specs.collect();
    let named = wanted.and_then(|w| specs.iter().position(|s| s.name == w));
    specs.into_iter().nth(named.unwrap_or(0))
}

/// The command a tool that runs commands is given: harmless, and its output recognisable
/// in the tool result that comes back.
pub(crate) const EXAMPLE_COMMAND: &str = "echo tollgate-tool-round-trip";

/// Deterministic arguments for a tool, from its JSON schema: its required properties
/// (all of them when it names none), as a model fills them.
pub(crate) fn tool_arguments(schema: Option<&Value>) -> String {
    let mut out = Map::new();
    match schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    {
        None => {
            out.insert("location".into(), Value::from("Paris"));
        }
        Some(props) => {
            let required: Option<Vec<&str>> = schema
                .and_then(|s| s.get("required"))
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect());
            // Sorted whether or not serde_json preserves insertion order.
            let mut props: Vec<_> = props
                .iter()
                .filter(|(name, _)| required.as_ref().is_none_or(|r| r.contains(&name.as_str())))
                .collect();
            props.sort_by(|a, b| a.0.cmp(b.0));
            for (name, prop) in props {
                out.insert(name.clone(), example_value(name, prop));
            }
        }
    }
    serde_json::to_string(&Value::Object(out)).unwrap_or_else(|_| "{}".into())
}

fn example_value(name: &str, prop: &Value) -> Value {
    let command = matches!(name, "cmd" | "command");
    if let Some(first) = prop
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let ty = match prop.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "string",
    };
    match ty {
        // An integral number is valid for both, and what models write for counts and
        // limits (Codex reads `max_output_tokens` as an integer).
        "integer" => Value::from(3),
        "number" => Value::from(21),
        "boolean" => Value::Bool(true),
        "array" if command => Value::from(EXAMPLE_COMMAND.split(' ').collect::<Vec<_>>()),
        "array" => Value::Array(Vec::new()),
        "object" => Value::Object(Map::new()),
        "null" => Value::Null,
        _ if command => Value::from(EXAMPLE_COMMAND),
        _ => Value::from("Paris"),
    }
}

/// Splits tool arguments into streamed fragments.
pub(crate) fn fragments(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(FRAGMENT_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

/// Token usage of one answer, in the fake's neutral form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// All input tokens, cached ones included.
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_write: u64,
}

impl Usage {
    pub(crate) fn new(input: u64, output: u64, cached: u64, cache_write: u64) -> Self {
        let cache_read = cached.min(input);
        let cache_write = cache_write.min(input - cache_read);
        Self {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    /// Input tokens neither read from nor written to the cache (Anthropic `input_tokens`).
    pub(crate) fn uncached(&self) -> u64 {
        self.input - self.cache_read - self.cache_write
    }

    /// Input plus output, saturating (a `report_*` directive may be absurd).
    pub(crate) fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// One answer: ids, reply and usage.
#[derive(Debug, Clone)]
pub(crate) struct Turn {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) plan: Plan,
    /// The usage the answer reports; `None` with the `no_usage` directive.
    pub(crate) usage: Option<Usage>,
    /// The service tier the answer reports (`default`, `priority`, `standard`…).
    pub(crate) tier: &'static str,
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SplitMix64: a cheap, well-mixed hash of a counter.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, to seed vectors from input bytes.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `prefix` followed by `len` base-62 characters derived from `seed`.
pub(crate) fn alnum_id(prefix: &str, seed: u64, len: usize) -> String {
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    let mut state = seed;
    for _ in 0..len {
        state = mix(state);
        s.push(char::from(ALNUM[(state % ALNUM.len() as u64) as usize]));
    }
    s
}

/// The padding OpenAI adds to stream events so their sizes do not leak the content.
pub(crate) fn obfuscation(seed: u64) -> String {
    let len = (mix(seed) % 12) as usize;
    alnum_id("", seed ^ 0x5EED, len)
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn plan_caps_and_stops() {
        let p = plan(
            PlanInput {
                max_tokens: Some(3),
                ..Default::default()
            },
            String::new,
        );
        assert_eq!(p.text(), "Hello from the");
        assert_eq!(p.finish, Finish::Length);
        let p = plan(
            PlanInput {
                stop: vec!["fake"],
                ..Default::default()
            },
            String::new,
        );
        assert_eq!(p.text(), "Hello from the");
        assert_eq!(p.finish, Finish::StopSequence("fake".into()));
        let p = plan(PlanInput::default(), String::new);
        assert_eq!(p.output_tokens(), 12);
        assert_eq!(p.finish, Finish::Stop);
    }

    #[test]
    fn tool_arguments_follow_the_schema() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "city": {"type": "string"}, "days": {"type": "integer"}}});
        assert_eq!(
            tool_arguments(Some(&schema)),
            r#"{"city":"Paris","days":3,"unit":"celsius"}"#
        );
        assert_eq!(tool_arguments(None), r#"{"location":"Paris"}"#);
        // Codex's exec_command: only what is required, the command harmless, numbers
        // integral.
        let exec = serde_json::json!({"type": "object", "required": ["cmd"], "properties": {
            "cmd": {"type": "string"}, "workdir": {"type": "string"},
            "max_output_tokens": {"type": "number"}}});
        assert_eq!(
            tool_arguments(Some(&exec)),
            r#"{"cmd":"echo tollgate-tool-round-trip"}"#
        );
        let all = serde_json::json!({"type": "object", "properties": {
            "command": {"type": "array", "items": {"type": "string"}},
            "timeout": {"type": "number"}}});
        assert_eq!(
            tool_arguments(Some(&all)),
            r#"{"command":["echo","tollgate-tool-round-trip"],"timeout":21}"#
        );
        assert_eq!(
            fragments(r#"{"location":"Paris"}"#),
            vec![r#"{"locati"#, r#"on":"Par"#, r#"is"}"#]
        );
    }

    #[test]
    fn usage_adds_up() {
        let u = Usage::new(10, 3, 6, 9);
        assert_eq!((u.cache_read, u.cache_write, u.uncached()), (6, 4, 0));
    }
}
