//! Hosted tools of the Responses API (web search, file search, code interpreter,
//! image generation): OpenAI runs them and bills each call on top of the tokens, so
//! the fake answers one call item per hosted tool type the request lists.

use serde::Serialize;
use serde_json::{json, Value};

use crate::images::PNG_B64;

/// The query a hosted search call reports.
const QUERY: &str = "deterministic words for tests";

/// A hosted tool type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    WebSearch,
    FileSearch,
    CodeInterpreter,
    ImageGeneration,
}

impl Kind {
    /// The kind of a request tool's `type`: `web_search`, `web_search_preview` (and
    /// their dated versions), `file_search`, `code_interpreter`, `image_generation`.
    fn of_tool(ty: &str) -> Option<Self> {
        Some(match ty {
            t if t.starts_with("web_search") => Self::WebSearch,
            "file_search" => Self::FileSearch,
            "code_interpreter" => Self::CodeInterpreter,
            "image_generation" => Self::ImageGeneration,
            _ => return None,
        })
    }

    /// The output item's `type`, also the stem of its event names.
    pub(crate) fn item_type(self) -> &'static str {
        match self {
            Self::WebSearch => "web_search_call",
            Self::FileSearch => "file_search_call",
            Self::CodeInterpreter => "code_interpreter_call",
            Self::ImageGeneration => "image_generation_call",
        }
    }

    /// The id prefix of the item.
    fn prefix(self) -> &'static str {
        match self {
            Self::WebSearch => "ws_",
            Self::FileSearch => "fs_",
            Self::CodeInterpreter => "ci_",
            Self::ImageGeneration => "ig_",
        }
    }

    /// The event between `in_progress` and `completed`.
    pub(crate) fn working(self) -> &'static str {
        match self {
            Self::WebSearch | Self::FileSearch => "searching",
            Self::CodeInterpreter => "interpreting",
            Self::ImageGeneration => "generating",
        }
    }
}

/// One hosted tool call of an answer.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) kind: Kind,
    pub(crate) id: String,
    container: String,
}

/// One call per hosted tool type of `tools`, in the order the types first appear;
/// `id(prefix)` makes the ids.
pub(crate) fn calls(tools: Option<&Value>, mut id: impl FnMut(&str) -> String) -> Vec<Call> {
    let mut out: Vec<Call> = Vec::new();
    let types = tools
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("type").and_then(Value::as_str));
    for kind in types.filter_map(Kind::of_tool) {
        if out.iter().all(|c| c.kind != kind) {
            out.push(Call {
                kind,
                id: id(kind.prefix()),
                container: id("cntr_"),
            });
        }
    }
    out
}

impl Call {
    /// The output item: finished (`done`), or as `output_item.added` shows it.
    pub(crate) fn item(&self, done: bool) -> Value {
        let ty = self.kind.item_type();
        let id = self.id.as_str();
        if !done {
            return match self.kind {
                Kind::CodeInterpreter => json!({"id": id, "type": ty, "status": "in_progress",
                    "code": "", "container_id": self.container, "outputs": null}),
                Kind::FileSearch => json!({"id": id, "type": ty, "status": "in_progress",
                    "queries": [], "results": null}),
                _ => json!({"id": id, "type": ty, "status": "in_progress"}),
            };
        }
        match self.kind {
            Kind::WebSearch => json!({"id": id, "type": ty, "status": "completed",
                "action": {"type": "search", "query": QUERY}}),
            Kind::FileSearch => json!({"id": id, "type": ty, "status": "completed",
                "queries": [QUERY], "results": null}),
            Kind::CodeInterpreter => json!({"id": id, "type": ty, "status": "completed",
                "code": "print(6 * 7)", "container_id": self.container, "outputs": null}),
            Kind::ImageGeneration => json!({"id": id, "type": ty, "status": "completed",
                "background": "opaque", "output_format": "png", "quality": "low",
                "result": PNG_B64, "revised_prompt": QUERY, "size": "1024x1024"}),
        }
    }
}

/// The body of `response.<tool>_call.in_progress|searching|…|completed` events.
#[derive(Serialize)]
pub(crate) struct Progress<'a> {
    pub(crate) output_index: u32,
    pub(crate) item_id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_per_hosted_type_in_order() {
        let tools = json!([{"type": "function", "name": "f"}, {"type": "image_generation"},
            {"type": "web_search_preview"}, {"type": "web_search"}, {"type": "file_search"},
            {"type": "code_interpreter", "container": {"type": "auto"}}]);
        let mut n = 0;
        let got = calls(Some(&tools), |p| {
            n += 1;
            format!("{p}{n}")
        });
        let kinds: Vec<&str> = got.iter().map(|c| c.kind.item_type()).collect();
        assert_eq!(
            kinds,
            [
                "image_generation_call",
                "web_search_call",
                "file_search_call",
                "code_interpreter_call"
            ]
        );
        assert_eq!(got[1].item(true)["status"], "completed");
        assert!(got[1].id.starts_with("ws_"));
        assert!(calls(None, |p| p.to_string()).is_empty());
    }
}
