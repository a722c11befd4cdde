//! The leaves of the walk: values counted as plain text, Anthropic content sources, Chat
//! Completions file parts, and tool definitions.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::fields::{tool_kind, Field, SourceKind, ToolKind};
use super::walk::{present, Ctx, Items, Level};

/// Counts a raw JSON value: the text of a string, or the JSON text of anything else.
pub(super) fn count_json_or_text(ctx: &mut Ctx, raw: &RawValue) {
    let json = raw.get();
    if json.starts_with('"') {
        match serde_json::from_str::<Cow<'_, str>>(json) {
            Ok(text) => ctx.text(&text),
            Err(_) => ctx.text(json),
        };
    } else {
        ctx.json(raw);
    }
}

/// Every string in a value counted as text, but for identifiers, and images and encrypted
/// content recognised by their field names.
pub(super) struct AnyText<'c>(pub(super) &'c mut Ctx);
seed_via_any!(AnyText);

impl<'de> Visitor<'de> for AnyText<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    ignore_scalars!();
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.text(v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.0;
        while seq.next_element_seed(AnyText(&mut *ctx))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::ImageUrl => {
                    map.next_value::<IgnoredAny>()?;
                    ctx.image();
                }
                Field::EncryptedContent => {
                    if present(&mut map, "encrypted_content")?.is_some() {
                        ctx.reference("encrypted_content");
                    }
                }
                f if f.is_identifier() => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => map.next_value_seed(AnyText(&mut *ctx))?,
            }
        }
        Ok(())
    }
}

/// An Anthropic content source, summarised.
pub(super) struct Source<'de> {
    pub(super) kind: SourceKind,
    pub(super) data: Option<&'de RawValue>,
}

pub(super) struct SourceSeed<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for SourceSeed<'_> {
    type Value = Source<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Source<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SourceSeed<'_> {
    type Value = Source<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a content source")
    }
    fn visit_str<E>(self, v: &str) -> Result<Source<'de>, E> {
        // A search result's `source` is its URL, shown to the model.
        self.0.text(v);
        Ok(Source {
            kind: SourceKind::Other,
            data: None,
        })
    }
    fn visit_unit<E>(self) -> Result<Source<'de>, E> {
        Ok(Source {
            kind: SourceKind::Other,
            data: None,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Source<'de>, A::Error> {
        let ctx = self.0;
        let mut source = Source {
            kind: SourceKind::Other,
            data: None,
        };
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type => {
                    source.kind = map.next_value::<Option<SourceKind>>()?.unwrap_or_default()
                }
                Field::Data => source.data = map.next_value()?,
                Field::Content => map.next_value_seed(Items::new(&mut *ctx, Level::Part))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(source)
    }
}

/// A Chat Completions `file` part's inner object: which kind of reference it holds.
pub(super) struct FileSeed<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let ctx = self.0;
        let file = Option::<ChatFile<'de>>::deserialize(d)?;
        Ok(file.map(|file| {
            if let Some(name) = file.filename {
                ctx.text(&name);
            }
            if file.file_data.is_some() {
                "file_data"
            } else {
                "file_id"
            }
        }))
    }
}

#[derive(Deserialize)]
struct ChatFile<'a> {
    #[serde(borrow, default)]
    filename: Option<Cow<'a, str>>,
    #[serde(default)]
    file_data: Option<IgnoredAny>,
}

/// Tool definitions: the tokens of each one's JSON text, and what its type implies.
pub(super) struct Tools<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for Tools<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let ctx = self.0;
        let tools = Option::<Vec<&'de RawValue>>::deserialize(d)?.unwrap_or_default();
        for tool in tools {
            ctx.tools += 1;
            ctx.json(tool);
            ctx.add(ctx.allow.per_tool);
            let head: ToolHead<'_> = serde_json::from_str(tool.get()).unwrap_or_default();
            match tool_kind(head.kind.as_deref()) {
                ToolKind::Function => {}
                ToolKind::Builtin => ctx.add(ctx.allow.builtin_tool),
                ToolKind::Hosted(name) => ctx.reference(name),
            }
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
struct ToolHead<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// A string counted as text; its token count, or `None` when the value is not a string (any
/// strings inside it are still counted).
pub(super) struct Counted<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = Option<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<u64>, E> {
        Ok(Some(self.0.text(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<u64>, A::Error> {
        AnyText(self.0).visit_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<u64>, A::Error> {
        AnyText(self.0).visit_map(map).map(|()| None)
    }
}

/// JSON text without the insignificant whitespace; borrowed when there is none.
pub(super) fn compact_json(json: &str) -> Cow<'_, str> {
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_space(b) {
            if out.is_none() {
                out = Some(bytes[..i].to_vec());
            }
            continue;
        }
        if let Some(out) = out.as_mut() {
            out.push(b);
        }
    }
    match out {
        // Only ASCII whitespace was removed, outside strings: still UTF-8.
        Some(out) => Cow::Owned(String::from_utf8(out).unwrap_or_default()),
        None => Cow::Borrowed(json),
    }
}
