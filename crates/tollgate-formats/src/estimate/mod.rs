//! The input-token bound of a request, read from its body before it is sent: never below what
//! the provider will report as input tokens (cached and cache-write tokens included) for what
//! the body itself contains, and listing what the body refers to but does not contain.
//!
//! # Use
//! ```
//! use tollgate_formats::estimate::{estimate_input, Profile};
//! use tollgate_formats::Format;
//!
//! let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
//! let profile = Profile::for_model("gpt-4o-mini");
//! // The cheap bound first (bytes of the text, no tokenizer): 2 + 4 + 3 = 9 tokens.
//! let cheap = estimate_input(Format::ChatCompletions, body, &profile.with_bytes())?;
//! assert_eq!(cheap.tokens, 9);
//! // The exact count, where the tokenizer is public: "hi" is 1 token.
//! let exact = estimate_input(Format::ChatCompletions, body, &profile)?;
//! assert_eq!(exact.tokens, 8);
//! assert!(exact.is_bounded());
//! # Ok::<(), tollgate_formats::estimate::EstimateError>(())
//! ```
//!
//! # How text is counted
//! - **Tiktoken** ([`Tokenizer::O200k`], [`Tokenizer::Cl100k`]; OpenAI's own models): each
//!   string is encoded exactly with the model's public encoding. Strings are counted one by
//!   one; the provider renders them inside its own framing, which the allowances cover.
//! - **Bytes** ([`Tokenizer::Bytes`]; Anthropic and every other server): the UTF-8 byte count
//!   of each string after JSON unescaping. A byte-level BPE token covers at least one byte, so
//!   no such tokenizer yields more tokens than bytes; the JSON envelope (keys, quotes,
//!   escapes, punctuation) is never counted.
//!
//! What counts as text: message content (strings and text parts), system, developer and
//! `instructions` text, names, refusals, tool-call names and arguments, tool results, reasoning
//! and thinking text sent back, every Responses `input` item (unknown item types and unknown
//! fields of known ones count all their strings), Anthropic `system` blocks, `tool_use` input
//! (its JSON text), `tool_result` content, documents given as inline text, titles and
//! contexts. Tool definitions, `response_format` / `text.format` / `output_format` /
//! `output_config` and an object `tool_choice` count the tokens of their JSON text, which
//! bounds the providers' own renderings (OpenAI renders functions as TypeScript-like
//! declarations, shorter than their JSON); the whitespace between JSON tokens is left out, so a
//! client's pretty-printing does not change the estimate. Identifiers (`id`, `call_id`, `tool_call_id`,
//! `tool_use_id`), `status`, `detail`, `media_type`, `cache_control` count nothing.
//!
//! # Allowances (hidden tokens), per [`Family`]
//! | | OpenAI | Anthropic | other |
//! |---|---|---|---|
//! | per request | 0 | 0 | 64 |
//! | per message / input item / system / `tool_result` block | 4 | 4 | 8 |
//! | per `name` | 1 | 1 | 2 |
//! | reply priming (once) | 3 | 3 | 8 |
//! | tools preamble (once, if any tool) | 20 | 1,000 | 512 |
//! | per tool definition (beside its JSON text) | 10 | 10 | 16 |
//! | per provider-defined client tool | 2,000 | 1,500 | 2,000 |
//! | per tool call (beside name and arguments) | 10 | 10 | 16 |
//! | per tool result (beside content) | 8 + longest call name | same | 16 + same |
//! | structured-output schema (once, beside its JSON text) | 20 | 100 | 64 |
//! | extended thinking on (once) | 0 | 100 | 0 |
//! | per embeddings input | 0 | 4 | 4 |
//!
//! Where they come from:
//! - **OpenAI**: the cookbook "How to count tokens with tiktoken": 3 tokens per message plus
//!   the role's token (every role is one token in both encodings: 4), 1 per name, 3 for the
//!   reply priming `<|start|>assistant<|message|>`; it matches the API exactly for gpt-3.5,
//!   gpt-4, gpt-4o and gpt-4o-mini (129, 129, 124, 124 tokens on its example) and reads 1
//!   above gpt-5 (110 against 109). Its function-counting constants (7 per function, 12 at
//!   the end) are covered by the per-tool and preamble allowances; tool calls and results are
//!   framed like harmony's `to=functions.NAME <|constrain|>json` / `functions.NAME
//!   to=assistant`, hence the per-call allowance and the result allowance that includes the
//!   longest function name of the body. Provider-defined tools (`computer_use_preview`,
//!   `shell`, `local_shell`, `apply_patch`) have undocumented descriptions: 2,000 each.
//! - **Anthropic**: the tool-use system prompt is 264 to 804 tokens depending on model and
//!   `tool_choice` (the docs' table; 804 for Claude Opus 4.7 with `any`/`tool`): 1,000. The
//!   Anthropic-defined client tools cost 245 (bash), 700 (text editor), 735 + up to 499
//!   (computer use): 1,500 each. Thinking adds a short hidden prompt (29 tokens observed):
//!   100. Messages: 4, like OpenAI's framing, which also matches the fake upstream.
//! - **Other** OpenAI-compatible servers apply a chat template the gateway cannot see:
//!   Llama 3.1 adds a dated system header, Qwen a default system prompt, gpt-oss (harmony)
//!   its model-identity system message (each under 64 tokens); a template's per-message
//!   markers are at most ~6 tokens (8); tool instructions of the common templates (Hermes,
//!   Qwen, Llama 3.1) stay under 512.
//!
//! # Images and files
//! An image part (inline base64, URL or file id) costs the profile's per-image bound:
//! - OpenAI (`detail: high` on the largest image, from the vision guide): gpt-4o, gpt-4-turbo,
//!   gpt-4.5: 85 + 8 × 170 = 1,445; gpt-4o-mini: 2,833 + 8 × 5,667 = 48,169; o1 and o3:
//!   75 + 8 × 150 = 1,275; computer-use-preview: 65 + 8 × 129 = 1,097; gpt-4.1 and gpt-5:
//!   1,536 patches (gpt-5's tile rule, 1,190, is below); gpt-4.1-mini and gpt-5-mini: 1,536 ×
//!   1.62 = 2,489; o4-mini: 1,536 × 1.72 = 2,642; the nano models: 1,536 × 2.46 = 3,779.
//! - Anthropic (the vision guide: `width × height / 750`, images scaled down past ~1.15 MP):
//!   1,600 up to Claude 4.6; 5,000 (3.75 MP) from Claude Opus 4.7 and for unlisted models.
//! - Any other model: no documented bound, so the image is reported as a reference
//!   (`"image"`); an operator who knows the model can set [`Profile::image_tokens`].
//!
//! These bounds hold as far as the providers keep to their documents; a provider that reports
//! more (one reported billing a base64 image as text) is the operator-side loss the gateway
//! records when usage exceeds the reservation.
//!
//! Files (PDFs and other documents given inline as base64, by URL or by file id) and audio
//! parts have no size the body bounds: they are counted in [`InputEstimate::files`], listed in
//! the references, and the caller bounds the request by the model's context window.
//!
//! # References
//! [`InputEstimate::references`] names what the provider will add from state the gateway
//! cannot see: `previous_response_id`, `conversation`, `prompt` (a stored prompt),
//! `item_reference`, `file_id` / `file_url` / `file_data` (documents and files),
//! `input_audio`, `audio_id`, `encrypted_content` (reasoning or search results sent back
//! encrypted), `thinking_signature` (a signed `thinking` or a `redacted_thinking` block in the
//! current turn, after the last user message that is not only tool results: Claude may restore
//! its full reasoning, which the visible text does not bound; earlier turns' blocks are ignored
//! by the API and only their visible text is counted),
//! hosted or server tools whose results become input (`web_search`, `web_fetch`,
//! `file_search`, `code_interpreter`, `code_execution`, `image_generation`, `mcp`,
//! `tool_search`, `hosted_tool`), `mcp_servers`, `container`, and `image` when the model has
//! no per-image bound. When the list is empty and `files` is 0, `tokens` is the whole bound.
//!
//! # Cost
//! The body is walked once with serde visitors (no `Value` tree, no copy of a string that has
//! no escapes). Measured in release mode on the 2-core development box with
//! `cargo run --release -p tollgate-formats --example estimate_bench`:
//!
//! | body | byte bound | tiktoken o200k | tiktoken cl100k |
//! |---|---|---|---|
//! | 1.3 KB chat (1.1 KB of text) | 1.8 µs | 79 µs | 129 µs |
//! | 111 KB chat (100 KB of text) | 107 µs | 7.3 ms | 12.5 ms |
//!
//! No exact BPE meets a 10 µs budget for a 1 KB prompt (tiktoken-rs measured ~40 µs per KB of
//! English with o200k, the faster `bpe-openai` crate ~25 µs), so the gateway reserves with the byte bound ([`Profile::with_bytes`]), and counts
//! exactly with the model's tokenizer only when that reservation would be refused (a budget
//! close to its end), for `count_tokens`, and off the hot path. The BPE tables load once, on
//! first use: o200k in ~210 ms (+44 MiB RSS), cl100k in ~80 ms (+23 MiB); call
//! [`Tokenizer::warm_up`] at start-up for the tokenizers of the configured models.

// Shared by the visitors of the walk.
/// Deserializes a value with a visitor that does the counting.
macro_rules! seed_via_any {
    ($ty:ident) => {
        impl<'de> DeserializeSeed<'de> for $ty<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// Scalars other than strings count nothing.
macro_rules! ignore_scalars {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

mod blocks;
mod fields;
mod inputs;
mod profile;
mod walk;

use serde::de::DeserializeSeed;

pub use profile::{tokenizer_for, Allowances, Family, Profile, Tokenizer};

use crate::Format;

/// An upper bound of the input tokens a request's body makes the provider count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputEstimate {
    /// Input tokens for what the body contains: text, allowances and per-image bounds.
    pub tokens: u64,
    /// Image parts seen (each bounded by the profile's per-image allowance, in `tokens`).
    pub images: u64,
    /// File, document and audio parts: their size is unknowable, bound them by the context
    /// window.
    pub files: u64,
    /// Fields that refer to state the gateway cannot see (see the module docs), each once.
    pub references: Vec<&'static str>,
}

impl InputEstimate {
    /// Whether `tokens` bounds the whole input: no files and no references.
    pub fn is_bounded(&self) -> bool {
        self.files == 0 && self.references.is_empty()
    }
}

/// A body the estimate cannot read, or cannot bound.
#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    /// The body is not a JSON object.
    #[error("the request body is not a valid JSON object: {0}")]
    Json(#[from] serde_json::Error),
    /// The body refers to content whose size it does not give (for a local count).
    #[error("the request refers to content that cannot be counted locally: {0}")]
    Unbounded(&'static str),
}

/// The input-token bound of a generation request (`format` is the format of `body`, which
/// should be the body sent upstream).
pub fn estimate_input(
    format: Format,
    body: &[u8],
    profile: &Profile,
) -> Result<InputEstimate, EstimateError> {
    let mut ctx = walk::Ctx::new(profile);
    let mut de = serde_json::Deserializer::from_slice(body);
    walk::Body(&mut ctx, format).deserialize(&mut de)?;
    de.end()?;
    Ok(ctx.finish())
}

/// A local answer for `POST /v1/messages/count_tokens` (an Anthropic Messages body) for a model
/// served by an OpenAI-compatible provider.
///
/// With a tiktoken profile the text is counted exactly and the framing with the cookbook's
/// per-message rules, so a plain conversation gets the count OpenAI's cookbook derives (which
/// matches the API on its published examples); tools, tool calls and schemas add allowances
/// over OpenAI's hidden rendering, so their count is an upper bound. With a
/// [`Tokenizer::Bytes`] profile the whole answer is an upper bound. A body with files or
/// references has no local count: [`EstimateError::Unbounded`] names the first one.
pub fn count_tokens_upper_bound(body: &[u8], profile: &Profile) -> Result<u64, EstimateError> {
    let estimate = estimate_input(Format::AnthropicMessages, body, profile)?;
    if let Some(first) = estimate.references.first() {
        return Err(EstimateError::Unbounded(first));
    }
    if estimate.files > 0 {
        return Err(EstimateError::Unbounded("file"));
    }
    Ok(estimate.tokens)
}

/// The input-token bound of an embeddings request: each string input's tokens (at least 1, as
/// OpenAI counts), each token array's length, plus the family's per-input allowance for
/// servers that add special tokens.
pub fn estimate_embeddings_input(
    body: &[u8],
    profile: &Profile,
) -> Result<InputEstimate, EstimateError> {
    let mut ctx = walk::Ctx::new(profile);
    let mut de = serde_json::Deserializer::from_slice(body);
    inputs::EmbeddingsBody(&mut ctx).deserialize(&mut de)?;
    de.end()?;
    Ok(ctx.est)
}

/// The input-token bound of a legacy completions request (`POST /v1/completions`): each
/// prompt (a string, strings, or token arrays) as an embeddings input, and the `suffix`.
pub fn estimate_completions_input(
    body: &[u8],
    profile: &Profile,
) -> Result<InputEstimate, EstimateError> {
    let mut ctx = walk::Ctx::new(profile);
    let mut de = serde_json::Deserializer::from_slice(body);
    inputs::CompletionsBody(&mut ctx).deserialize(&mut de)?;
    de.end()?;
    Ok(ctx.est)
}

/// The input-token bound of a moderation request: the text of its inputs, and its images at
/// the profile's per-image bound.
pub fn estimate_moderation_input(
    body: &[u8],
    profile: &Profile,
) -> Result<InputEstimate, EstimateError> {
    let mut ctx = walk::Ctx::new(profile);
    let mut de = serde_json::Deserializer::from_slice(body);
    inputs::ModerationBody(&mut ctx).deserialize(&mut de)?;
    de.end()?;
    Ok(ctx.est)
}
