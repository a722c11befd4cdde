//! What the estimate knows about a model: its tokenizer, its family's allowances and its
//! per-image bound, chosen from the upstream model name.

use tiktoken_rs::CoreBPE;

/// How text is turned into a token count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tokenizer {
    /// OpenAI's `o200k_base` (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3/o4, codex-mini, gpt-oss):
    /// exact counts.
    O200k,
    /// OpenAI's `cl100k_base` (gpt-4, gpt-4-turbo, gpt-3.5, text-embedding-3, ada-002):
    /// exact counts.
    Cl100k,
    /// No public tokenizer: the UTF-8 byte count, an upper bound for every byte-level BPE
    /// (each token covers at least one byte).
    Bytes,
}

impl Tokenizer {
    /// Tokens of `text`: exact for the tiktoken encodings, its byte count for [`Self::Bytes`].
    pub fn count(self, text: &str) -> u64 {
        match self.bpe() {
            Some(bpe) => bpe.encode_ordinary(text).len() as u64,
            None => text.len() as u64,
        }
    }

    /// Loads the BPE tables now (they load once, on first use, otherwise). Call at start-up
    /// for every tokenizer a configured model uses, so no request pays for the load.
    pub fn warm_up(self) {
        let _ = self.bpe();
    }

    pub(crate) fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            Self::O200k => Some(tiktoken_rs::o200k_base_singleton()),
            Self::Cl100k => Some(tiktoken_rs::cl100k_base_singleton()),
            Self::Bytes => None,
        }
    }
}

/// Who renders the request into tokens, which decides the hidden tokens it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// OpenAI's own models: the cookbook's counting rules apply.
    OpenAi,
    /// Anthropic's Claude models (the Messages API, Bedrock, Vertex, or a proxy).
    Anthropic,
    /// Any other OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted open models), whose
    /// chat template is unknown.
    Other,
}

/// Hidden tokens a provider adds around the text of a request, per family. Every field is an
/// upper bound of what the family documents or is known to add; see the module docs for the
/// source of each number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allowances {
    /// Once per request: a default system prompt the server adds (chat templates' date lines).
    pub per_request: u64,
    /// Per message or input item (framing and role). At least 4, the fake upstream's count.
    pub per_message: u64,
    /// Per `name` on a message.
    pub per_name: u64,
    /// Once: the start of the reply the model is primed with.
    pub reply_priming: u64,
    /// Once when any tool is defined: the tools section or tool-use system prompt.
    pub tools_preamble: u64,
    /// Per tool definition, beside the tokens of its JSON text.
    pub per_tool: u64,
    /// Per provider-defined client tool whose description the provider writes (computer use,
    /// bash, text editor, memory, shell, apply_patch).
    pub builtin_tool: u64,
    /// Per tool call in an assistant turn, beside its name and arguments.
    pub per_tool_call: u64,
    /// Per tool result, beside its content and the longest tool-call name of the body.
    pub per_tool_result: u64,
    /// Once when a structured-output schema is given, beside its JSON text.
    pub response_format: u64,
    /// Once when extended thinking is on (its hidden instructions).
    pub thinking: u64,
    /// Per embeddings input (special tokens a server adds, such as BOS/EOS or CLS/SEP).
    pub per_input: u64,
}

impl Family {
    /// The family's allowances.
    pub const fn allowances(self) -> Allowances {
        match self {
            Family::OpenAi => Allowances {
                per_request: 0,
                per_message: 4,
                per_name: 1,
                reply_priming: 3,
                tools_preamble: 20,
                per_tool: 10,
                builtin_tool: 2_000,
                per_tool_call: 10,
                per_tool_result: 8,
                response_format: 20,
                thinking: 0,
                per_input: 0,
            },
            Family::Anthropic => Allowances {
                per_request: 0,
                per_message: 4,
                per_name: 1,
                reply_priming: 3,
                tools_preamble: 1_000,
                per_tool: 10,
                builtin_tool: 1_500,
                per_tool_call: 10,
                per_tool_result: 8,
                response_format: 100,
                thinking: 100,
                per_input: 4,
            },
            Family::Other => Allowances {
                per_request: 64,
                per_message: 8,
                per_name: 2,
                reply_priming: 8,
                tools_preamble: 512,
                per_tool: 16,
                builtin_tool: 2_000,
                per_tool_call: 16,
                per_tool_result: 16,
                response_format: 64,
                thinking: 0,
                per_input: 4,
            },
        }
    }
}

/// Everything the estimate needs to know about one upstream model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Profile {
    /// How text is counted.
    pub tokenizer: Tokenizer,
    /// Whose hidden tokens to allow for.
    pub family: Family,
    /// The most input tokens one image can cost; `None` when no bound is documented, and then
    /// each image is reported as a reference (`"image"`).
    pub image_tokens: Option<u64>,
}

impl Profile {
    /// The profile of an upstream model, from its name (see the module docs for the table).
    pub fn for_model(upstream_model: &str) -> Self {
        let name = base_name(upstream_model);
        let tokenizer = tokenizer_of(&name);
        let family = if name.contains("claude") {
            Family::Anthropic
        } else if tokenizer != Tokenizer::Bytes && !name.starts_with("gpt-oss") {
            Family::OpenAi
        } else {
            Family::Other
        };
        let image_tokens = match family {
            Family::OpenAi => openai_image_tokens(&name),
            Family::Anthropic => Some(anthropic_image_tokens(&name)),
            Family::Other => None,
        };
        Self {
            tokenizer,
            family,
            image_tokens,
        }
    }

    /// The same profile counting text by bytes: the cheap bound, for the fast path.
    pub fn with_bytes(self) -> Self {
        Self {
            tokenizer: Tokenizer::Bytes,
            ..self
        }
    }
}

/// The tokenizer of an upstream model: OpenAI families map to their tiktoken encoding,
/// everything else to [`Tokenizer::Bytes`].
pub fn tokenizer_for(upstream_model: &str) -> Tokenizer {
    tokenizer_of(&base_name(upstream_model))
}

/// Lower case, without a router's `vendor/` prefix or a fine-tune's `ft:` prefix.
fn base_name(model: &str) -> String {
    let lower = model.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("ft:").unwrap_or(&lower);
    match lower.rsplit_once('/') {
        Some((_, last)) => last.to_owned(),
        None => lower.to_owned(),
    }
}

const O200K_PREFIXES: &[&str] = &[
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "codex-mini",
    "gpt-oss",
    "computer-use-preview",
];

const CL100K_PREFIXES: &[&str] = &[
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
];

fn tokenizer_of(name: &str) -> Tokenizer {
    // o200k first: "gpt-4o" and "gpt-4.1" also start with "gpt-4".
    if O200K_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Tokenizer::O200k
    } else if CL100K_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Tokenizer::Cl100k
    } else {
        Tokenizer::Bytes
    }
}

/// OpenAI's documented image costs at `detail: high` on the largest image (8 tiles of 512 px
/// after fitting 2048 px and a 768 px short side; or 1,536 patches of 32 px times the model's
/// multiplier).
fn openai_image_tokens(name: &str) -> Option<u64> {
    let tiles = |base: u64, tile: u64| Some(base + 8 * tile);
    let patches = |multiplier_percent: u64| Some((1_536 * multiplier_percent).div_ceil(100));
    if name.starts_with("gpt-4o-mini") {
        tiles(2_833, 5_667) // 48,169
    } else if name.contains("nano") {
        patches(246) // gpt-4.1-nano, gpt-5-nano: 3,779
    } else if name.starts_with("o4-mini") {
        patches(172) // 2,642
    } else if name.contains("mini") && (name.starts_with("gpt-4.1") || name.starts_with("gpt-5")) {
        patches(162) // gpt-4.1-mini, gpt-5-mini: 2,489
    } else if name.starts_with("computer-use") {
        tiles(65, 129) // 1,097
    } else if name.starts_with("o1") || name.starts_with("o3") {
        tiles(75, 150) // 1,275
    } else if name.starts_with("gpt-4.1") || name.starts_with("gpt-5") {
        // gpt-4.1 and gpt-5: at most 1,536 patches at multiplier 1 (gpt-5's tile rule,
        // 70 + 8 × 140 = 1,190, stays below it).
        patches(100)
    } else if [
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4-turbo",
        "gpt-4.5",
        "gpt-4-vision",
    ]
    .iter()
    .any(|p| name.starts_with(p))
    {
        tiles(85, 170) // 1,445
    } else {
        None
    }
}

/// Anthropic: `tokens ≈ width × height / 750`, images scaled to at most ~1.15 MP (≈1,600
/// tokens) before Claude Opus 4.7, and to 3.75 MP (5,000 tokens) from it on.
fn anthropic_image_tokens(name: &str) -> u64 {
    const LOW_RES: &[&str] = &[
        "claude-2",
        "claude-instant",
        "claude-3",
        "claude-opus-4-2",
        "claude-sonnet-4-2",
        "claude-opus-4-0",
        "claude-sonnet-4-0",
        "claude-opus-4-1",
        "claude-opus-4-5",
        "claude-opus-4-6",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
    ];
    let low_res = LOW_RES.iter().any(|p| name.contains(p))
        || name.ends_with("claude-opus-4")
        || name.ends_with("claude-sonnet-4");
    if low_res {
        1_600
    } else {
        5_000
    }
}
