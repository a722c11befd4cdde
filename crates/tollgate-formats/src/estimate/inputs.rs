//! The bodies of the endpoints whose input is a plain `input` field: embeddings (strings or
//! token arrays) and moderations (strings, or text and image parts).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::fields::Field;
use super::walk::{Ctx, Items, Level};

/// An embeddings body.
pub(super) struct EmbeddingsBody<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for EmbeddingsBody<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EmbeddingsBody<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        while let Some(field) = map.next_key::<Field>()? {
            if field == Field::Input {
                map.next_value_seed(EmbeddingInput(&mut *ctx))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A legacy completions body: its `prompt` (read like an embeddings `input`) and `suffix`.
pub(super) struct CompletionsBody<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for CompletionsBody<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CompletionsBody<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Prompt => map.next_value_seed(EmbeddingInput(&mut *ctx))?,
                Field::Suffix => {
                    if let Some(text) = map.next_value::<Option<std::borrow::Cow<'de, str>>>()? {
                        ctx.text(&text);
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

/// `input`: a string, an array of strings, a token array, or an array of token arrays.
struct EmbeddingInput<'c>(&'c mut Ctx);

impl<'de> DeserializeSeed<'de> for EmbeddingInput<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EmbeddingInput<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of strings or token arrays")
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        one_text(self.0, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.0;
        let mut loose_tokens = 0u64;
        while let Some(element) = seq.next_element_seed(Element(&mut *ctx))? {
            loose_tokens += element;
        }
        if loose_tokens > 0 {
            // The array itself was one token array.
            ctx.add(loose_tokens + ctx.allow.per_input);
        }
        Ok(())
    }
}

/// One input's tokens: at least 1 (OpenAI counts an empty string as one), plus the allowance.
fn one_text(ctx: &mut Ctx, text: &str) {
    let n = ctx.text(text);
    if n == 0 {
        ctx.add(1);
    }
    ctx.add(ctx.allow.per_input);
}

/// An element of an `input` array; returns 1 for a loose token (a number), else 0 once counted.
struct Element<'c>(&'c mut Ctx);

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a token or a token array")
    }
    fn visit_str<E>(self, v: &str) -> Result<u64, E> {
        one_text(self.0, v);
        Ok(0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        self.0.add(n + self.0.allow.per_input);
        Ok(0)
    }
}

/// A moderations body.
pub(super) struct ModerationBody<'c>(pub(super) &'c mut Ctx);

impl<'de> DeserializeSeed<'de> for ModerationBody<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ModerationBody<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        while let Some(field) = map.next_key::<Field>()? {
            if field == Field::Input {
                map.next_value_seed(Items::new(&mut *ctx, Level::Part))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::estimate::{estimate_completions_input, Profile};

    #[test]
    fn a_completions_prompt_is_counted_in_each_of_its_shapes() {
        let bytes = Profile::for_model("some-local-model").with_bytes();
        let count = |body: &str| {
            estimate_completions_input(body.as_bytes(), &bytes)
                .expect("valid")
                .tokens
        };
        let one = count(r#"{"model": "m", "prompt": "def fib(n):", "max_tokens": 16}"#);
        assert!(one >= 11, "{one}: the byte bound covers every byte");
        let with_suffix =
            count(r#"{"model": "m", "prompt": "def fib(n):", "suffix": "    return x"}"#);
        assert!(with_suffix >= one + 12, "{with_suffix}");
        let many = count(r#"{"prompt": ["def fib(n):", "def fib(n):"]}"#);
        assert!(many >= 2 * one - 2, "{many}");
        let tokens = count(r#"{"prompt": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}"#);
        assert!(tokens >= 10, "{tokens}");
        assert_eq!(count(r#"{"model": "m"}"#), 0);
        assert!(estimate_completions_input(b"[1]", &bytes).is_err());
    }
}
