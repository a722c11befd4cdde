//! The model an answer names, replaced by the model the client knows: the public id of
//! the model that served, not the provider's name for it.

use crate::usage::RawObject;

/// `data` (a JSON object: a whole answer, or one stream event) with the model it names
/// replaced by `public`: the top-level `model`, or the `model` of the object under
/// `response` (Responses events) or `message` (Anthropic's `message_start`). `None` when
/// it names none, or is not a JSON object.
pub fn rename(data: &str, public: &str) -> Option<String> {
    if !data.contains("\"model\"") {
        return None;
    }
    let object: RawObject = serde_json::from_str(data).ok()?;
    let name = serde_json::Value::String(public.to_string()).to_string();
    if object.get("model").is_some() {
        return Some(object.rewrite(&[("model", name)], &[]));
    }
    for outer in ["response", "message"] {
        let Some(inner) = object.get(outer) else {
            continue;
        };
        let Ok(inner_object) = serde_json::from_str::<RawObject>(inner.get()) else {
            continue;
        };
        if inner_object.get("model").is_some() {
            let renamed = inner_object.rewrite(&[("model", name)], &[]);
            return Some(object.rewrite(&[(outer, renamed)], &[]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    #[test]
    fn renames_where_each_format_names_the_model() {
        let chat =
            r#"{"id":"c","object":"chat.completion.chunk","model":"gpt-up-2025","choices":[]}"#;
        let renamed = rename(chat, "gpt-public").unwrap_or_default();
        assert_eq!(value(&renamed)["model"], "gpt-public");
        assert_eq!(value(&renamed)["id"], "c");

        let responses = r#"{"type":"response.created","response":{"id":"r","model":"up","status":"in_progress"}}"#;
        let renamed = rename(responses, "pub").unwrap_or_default();
        assert_eq!(value(&renamed)["response"]["model"], "pub");
        assert_eq!(value(&renamed)["response"]["status"], "in_progress");

        let messages = r#"{"type":"message_start","message":{"id":"m","model":"claude-up"}}"#;
        let renamed = rename(messages, "claude").unwrap_or_default();
        assert_eq!(value(&renamed)["message"]["model"], "claude");

        assert_eq!(rename(r#"{"type":"ping"}"#, "x"), None);
        assert_eq!(rename("[DONE]", "x"), None);
        assert_eq!(
            rename(r#"{"delta":{"text":"the \"model\" said"}}"#, "x"),
            None
        );
    }
}
