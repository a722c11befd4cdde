//! The one-pass walk over a request body: serde visitors that count text as they meet it,
//! with no `Value` tree and no copy of a string that has no escapes.
//!
//! Every object inside the conversation (message, input item, content part, tool call) is a
//! [`Node`]: its known fields are read by name, its unknown fields are counted as text
//! ([`AnyText`]), and what depends on its `type` is decided when the object ends, so member
//! order does not matter.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::blocks::{
    compact_json, count_json_or_text, AnyText, Counted, FileSeed, Source, SourceSeed, Tools,
};
use super::fields::{Field, Kind, SourceKind};
use super::{Allowances, InputEstimate, Profile, Tokenizer};
use crate::Format;

/// Running totals of one walk.
pub(super) struct Ctx {
    tokenizer: Tokenizer,
    pub(super) allow: Allowances,
    image_tokens: Option<u64>,
    pub(super) est: InputEstimate,
    pub(super) tools: u64,
    tool_results: u64,
    max_name: u64,
    thinking: bool,
    /// A signed or redacted thinking block in the current turn (after the last user message
    /// that is not only tool results); earlier ones are ignored by the provider.
    turn_signed: bool,
    /// Set by the parts of the message being read: a signed block, plain user content.
    message_signed: bool,
    message_plain: bool,
    part_depth: u32,
}

impl Ctx {
    pub(super) fn new(profile: &Profile) -> Self {
        Self {
            tokenizer: profile.tokenizer,
            allow: profile.family.allowances(),
            image_tokens: profile.image_tokens,
            est: InputEstimate::default(),
            tools: 0,
            tool_results: 0,
            max_name: 0,
            thinking: false,
            turn_signed: false,
            message_signed: false,
            message_plain: false,
            part_depth: 0,
        }
    }

    pub(super) fn text(&mut self, text: &str) -> u64 {
        let n = self.tokenizer.count(text);
        self.add(n);
        n
    }

    /// Counts a JSON value's text, without the whitespace between its tokens (so a client's
    /// pretty-printing does not change the estimate).
    pub(super) fn json(&mut self, raw: &RawValue) -> u64 {
        let compact = compact_json(raw.get());
        self.text(&compact)
    }

    pub(super) fn add(&mut self, n: u64) {
        self.est.tokens = self.est.tokens.saturating_add(n);
    }

    pub(super) fn reference(&mut self, name: &'static str) {
        if !self.est.references.contains(&name) {
            self.est.references.push(name);
        }
    }

    pub(super) fn image(&mut self) {
        self.est.images += 1;
        match self.image_tokens {
            Some(n) => self.add(n),
            None => self.reference("image"),
        }
    }

    fn file(&mut self, reference: &'static str) {
        self.est.files += 1;
        self.reference(reference);
    }

    /// The allowances that depend on the whole body, added once at the end.
    pub(super) fn finish(mut self) -> InputEstimate {
        let a = self.allow;
        let mut once = a.per_request + a.reply_priming;
        if self.tools > 0 {
            once += a.tools_preamble;
        }
        if self.thinking {
            once += a.thinking;
        }
        if self.turn_signed {
            self.reference("thinking_signature");
        }
        let results = self
            .tool_results
            .saturating_mul(a.per_tool_result.saturating_add(self.max_name));
        self.add(once.saturating_add(results));
        self.est
    }
}

/// The body's top level: the fields of its format that carry input.
pub(super) struct Body<'c>(pub(super) &'c mut Ctx, pub(super) Format);
seed_via_any!(Body);

impl<'de> Visitor<'de> for Body<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (ctx, format) = (self.0, self.1);
        while let Some(field) = map.next_key::<Field>()? {
            if !field.is_top_level_of(format) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match field {
                Field::Messages | Field::Input | Field::Instructions => {
                    map.next_value_seed(Items::new(ctx, Level::Message))?
                }
                Field::System => {
                    let once = ctx.allow.per_message;
                    map.next_value_seed(Items {
                        once,
                        ..Items::new(ctx, Level::Part)
                    })?
                }
                Field::Tools | Field::Functions => map.next_value_seed(Tools(ctx))?,
                Field::ResponseFormat | Field::Text | Field::OutputFormat | Field::OutputConfig => {
                    if let Some(raw) = map.next_value::<Option<&RawValue>>()? {
                        ctx.json(raw);
                        ctx.add(ctx.allow.response_format);
                    }
                }
                Field::ToolChoice => {
                    if let Some(raw) = map.next_value::<Option<&RawValue>>()? {
                        if raw.get().starts_with('{') {
                            ctx.json(raw);
                        }
                    }
                }
                Field::Prediction => map.next_value_seed(AnyText(ctx))?,
                Field::Thinking => {
                    if let Some(raw) = map.next_value::<Option<&RawValue>>()? {
                        ctx.thinking = !raw.get().contains("\"disabled\"");
                    }
                }
                Field::PreviousResponseId
                | Field::Conversation
                | Field::McpServers
                | Field::Container
                | Field::WebSearchOptions => {
                    let raw = map.next_value::<Option<&RawValue>>()?;
                    if raw.is_some_and(|r| r.get() != "[]") {
                        ctx.reference(field.reference_name());
                    }
                }
                Field::Prompt => {
                    if let Some(raw) = map.next_value::<Option<&RawValue>>()? {
                        ctx.reference("prompt");
                        // Its variables are substituted into the stored prompt: count them.
                        let mut de = serde_json::Deserializer::from_str(raw.get());
                        AnyText(&mut *ctx)
                            .deserialize(&mut de)
                            .map_err(serde::de::Error::custom)?;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Where a conversation object sits, which decides its allowances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    /// An element of `messages` or `input`, or `instructions`.
    Message,
    /// A content part or block.
    Part,
    /// An element of a message's `tool_calls`, or its `function_call`.
    ToolCall,
    /// An object nested in one of the above (`function`, `file`, ...).
    Inner,
}

/// A string, one object or an array of objects, at a level; `once` is added if it is not null.
pub(super) struct Items<'c> {
    ctx: &'c mut Ctx,
    level: Level,
    once: u64,
}

impl<'c> Items<'c> {
    pub(super) fn new(ctx: &'c mut Ctx, level: Level) -> Self {
        Self {
            ctx,
            level,
            once: 0,
        }
    }
}
seed_via_any!(Items);

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("text, an object or an array")
    }
    ignore_scalars!();
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.ctx.add(self.once);
        if self.level == Level::Part && self.ctx.part_depth == 0 {
            self.ctx.message_plain = true;
        }
        self.ctx.text(v);
        if self.level == Level::Message {
            self.ctx.add(self.ctx.allow.per_message);
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        ctx.add(self.once);
        while seq
            .next_element_seed(Node {
                ctx: &mut *ctx,
                level: self.level,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.ctx.add(self.once);
        Node {
            ctx: self.ctx,
            level: self.level,
        }
        .visit_map(map)
    }
}

/// One conversation object (or a bare string in its place).
struct Node<'c> {
    ctx: &'c mut Ctx,
    level: Level,
}
seed_via_any!(Node);

/// What a node's fields said, decided on when the node ends.
#[derive(Default)]
struct Summary<'de> {
    kind: Kind,
    tool_role: bool,
    user_role: bool,
    named: bool,
    image_url: bool,
    audio: bool,
    file: Option<&'static str>,
    source: Option<Source<'de>>,
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message, item or content part")
    }
    ignore_scalars!();
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.ctx.text(v);
        if self.level == Level::Message {
            self.ctx.add(self.ctx.allow.per_message);
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        AnyText(self.ctx).visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        let mut s = Summary::default();
        match self.level {
            Level::Message => {
                ctx.message_signed = false;
                ctx.message_plain = false;
            }
            Level::Part => ctx.part_depth += 1,
            Level::ToolCall | Level::Inner => {}
        }
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type => s.kind = map.next_value::<Option<Kind>>()?.unwrap_or_default(),
                Field::Role => {
                    let role = map.next_value::<Option<Kind>>()?;
                    s.tool_role = matches!(role, Some(Kind::ToolRole));
                    s.user_role = matches!(role, Some(Kind::UserRole));
                }
                Field::Text
                | Field::Refusal
                | Field::Thinking
                | Field::Arguments
                | Field::Title
                | Field::Context
                | Field::Filename => map.next_value_seed(AnyText(&mut *ctx))?,
                Field::Name => {
                    if let Some(n) = map.next_value_seed(Counted(&mut *ctx))? {
                        ctx.max_name = ctx.max_name.max(n);
                        s.named = true;
                    }
                }
                Field::Content | Field::Output | Field::Summary => {
                    map.next_value_seed(Items::new(&mut *ctx, Level::Part))?
                }
                Field::ToolCalls => map.next_value_seed(Items::new(&mut *ctx, Level::ToolCall))?,
                Field::FunctionCall => {
                    map.next_value_seed(Items::new(&mut *ctx, Level::ToolCall))?
                }
                Field::Function | Field::Custom => {
                    map.next_value_seed(Items::new(&mut *ctx, Level::Inner))?
                }
                Field::Input => {
                    // A tool_use's input object, or a custom tool call's input text.
                    if let Some(raw) = map.next_value::<Option<&RawValue>>()? {
                        count_json_or_text(ctx, raw);
                    }
                }
                Field::ImageUrl => {
                    map.next_value::<IgnoredAny>()?;
                    s.image_url = true;
                }
                Field::Source => s.source = Some(map.next_value_seed(SourceSeed(&mut *ctx))?),
                Field::File => {
                    let file = map.next_value_seed(FileSeed(&mut *ctx))?;
                    s.file = s.file.or(file);
                }
                Field::FileId => {
                    if present(&mut map, "file_id")?.is_some() {
                        s.file = s.file.or(Some("file_id"));
                    }
                }
                Field::FileUrl => {
                    if present(&mut map, "file_url")?.is_some() {
                        s.file = Some("file_url");
                    }
                }
                Field::FileData => {
                    if present(&mut map, "file_data")?.is_some() {
                        s.file = Some("file_data");
                    }
                }
                Field::InputAudio => {
                    map.next_value::<IgnoredAny>()?;
                    s.audio = true;
                }
                Field::EncryptedContent => {
                    if present(&mut map, "encrypted_content")?.is_some() {
                        ctx.reference("encrypted_content");
                    }
                }
                Field::Signature | Field::Data => {
                    if present(&mut map, "signature")?.is_some() {
                        ctx.message_signed = true;
                    }
                }
                Field::Audio => {
                    if present(&mut map, "audio_id")?.is_some() {
                        ctx.reference("audio_id");
                    }
                }
                f if f.is_identifier() => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => map.next_value_seed(AnyText(&mut *ctx))?,
            }
        }
        if self.level == Level::Part {
            ctx.part_depth -= 1;
        }
        finish_node(ctx, self.level, s);
        Ok(())
    }
}

/// Reads a member that may be null; `Some(name)` when it is present and not null.
pub(super) fn present<'de, A: MapAccess<'de>>(
    map: &mut A,
    name: &'static str,
) -> Result<Option<&'static str>, A::Error> {
    Ok(map.next_value::<Option<IgnoredAny>>()?.map(|_| name))
}

fn finish_node(ctx: &mut Ctx, level: Level, s: Summary<'_>) {
    let a = ctx.allow;
    if level == Level::Part && ctx.part_depth == 0 && s.kind != Kind::ToolResult {
        ctx.message_plain = true;
    }
    if level == Level::Message {
        if s.user_role && ctx.message_plain {
            ctx.turn_signed = false;
        }
        if ctx.message_signed {
            ctx.turn_signed = true;
        }
        ctx.add(a.per_message);
        if s.named && !s.kind.is_call() {
            ctx.add(a.per_name);
        }
    }
    if level == Level::ToolCall || s.kind.is_call() {
        ctx.add(a.per_tool_call);
    }
    if s.kind.is_result() || (level == Level::Message && s.tool_role) {
        ctx.tool_results += 1;
        if s.kind == Kind::ToolResult {
            // An Anthropic tool_result block is rendered as a message of its own.
            ctx.add(a.per_message);
        }
    }
    if s.kind == Kind::ItemReference {
        ctx.reference("item_reference");
    }
    if s.audio || s.kind == Kind::InputAudio {
        ctx.file("input_audio");
    }
    if s.kind.is_image() || (s.image_url && s.kind != Kind::Document) {
        ctx.image();
        return;
    }
    match (s.kind, s.source) {
        (Kind::Document, Some(source)) => match source.kind {
            SourceKind::Text => {
                if let Some(data) = source.data {
                    count_json_or_text(ctx, data);
                }
            }
            SourceKind::Content => {}
            SourceKind::Url => ctx.file("file_url"),
            SourceKind::File => ctx.file("file_id"),
            SourceKind::Base64 | SourceKind::Other => ctx.file("file_data"),
        },
        (Kind::Document | Kind::InputFile | Kind::File | Kind::ContainerUpload, None) => {
            ctx.file(s.file.unwrap_or("file_id"))
        }
        _ => {
            if let Some(file) = s.file {
                ctx.file(file);
            }
        }
    }
}
