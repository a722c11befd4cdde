//! Calls of hosted tools (run by the provider, charged per call on top of the tokens),
//! counted in an answer: OpenAI Responses output items (`web_search_call`,
//! `file_search_call`, `code_interpreter_call`, `image_generation_call`) and Anthropic
//! server-tool blocks (`server_tool_use` named `web_search`, or a code-execution tool).

use serde_json::Value;

/// Calls of each hosted tool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostedCalls {
    pub web_search: u64,
    pub file_search: u64,
    pub code_interpreter: u64,
    pub image_generation: u64,
}

impl HostedCalls {
    /// Whether no hosted tool was called.
    pub fn is_empty(&self) -> bool {
        *self == HostedCalls::default()
    }

    /// Counts one Responses output item, by its `type`.
    pub fn count_responses_item(&mut self, item: &Value) {
        match item.get("type").and_then(Value::as_str) {
            Some("web_search_call") => self.web_search += 1,
            Some("file_search_call") => self.file_search += 1,
            Some("code_interpreter_call") => self.code_interpreter += 1,
            Some("image_generation_call") => self.image_generation += 1,
            _ => {}
        }
    }

    /// Counts one Anthropic content block: a `server_tool_use` of web search or code
    /// execution.
    pub fn count_anthropic_block(&mut self, block: &Value) {
        if block.get("type").and_then(Value::as_str) != Some("server_tool_use") {
            return;
        }
        match block.get("name").and_then(Value::as_str) {
            Some("web_search") => self.web_search += 1,
            Some(name) if name.contains("code_execution") => self.code_interpreter += 1,
            _ => {}
        }
    }

    /// The hosted calls of a whole Responses answer (`output`) or Messages answer
    /// (`content`).
    pub fn in_answer(answer: &Value) -> HostedCalls {
        let mut calls = HostedCalls::default();
        for item in answer
            .get("output")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            calls.count_responses_item(item);
        }
        for block in answer
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            calls.count_anthropic_block(block);
        }
        calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_each_kind_of_call() {
        let responses = json!({"output": [
            {"type": "web_search_call", "status": "completed"},
            {"type": "web_search_call", "status": "completed"},
            {"type": "file_search_call"}, {"type": "code_interpreter_call"},
            {"type": "image_generation_call"}, {"type": "message"}, {"type": "function_call"}]});
        assert_eq!(
            HostedCalls::in_answer(&responses),
            HostedCalls {
                web_search: 2,
                file_search: 1,
                code_interpreter: 1,
                image_generation: 1
            }
        );
        let messages = json!({"content": [
            {"type": "server_tool_use", "name": "web_search", "id": "s1"},
            {"type": "web_search_tool_result"},
            {"type": "server_tool_use", "name": "bash_code_execution"},
            {"type": "tool_use", "name": "web_search"}, {"type": "text", "text": "hi"}]});
        assert_eq!(
            HostedCalls::in_answer(&messages),
            HostedCalls {
                web_search: 1,
                code_interpreter: 1,
                ..HostedCalls::default()
            }
        );
        assert!(HostedCalls::in_answer(&json!({"choices": []})).is_empty());
    }
}
