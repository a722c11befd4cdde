//! What the two Responses-client directions share: the tools a Responses request offers
//! (function, namespace, custom and built-in tools) read into one flat list, `tool_choice`, the
//! names that map a call back to its tool, and the response object that repeats the request.

use serde_json::{json, Value};

use super::{
    as_array, as_object, as_str, block_type, err, field_path, index_path, present, required_str,
    ConversionError, Dropped, Map,
};

/// How a namespaced tool is named upstream: `{namespace}{NAMESPACE_SEPARATOR}{name}` (both
/// providers allow only `[a-zA-Z0-9_-]` in tool names).
pub(crate) const NAMESPACE_SEPARATOR: &str = "__";

/// Built-in tools of the Responses API that only OpenAI runs, or that the client runs with a
/// protocol of its own; offered to another provider they are dropped (see the module rules).
const BUILT_IN: [&str; 10] = [
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use_preview",
    "computer_use",
    "mcp",
    "local_shell",
    "shell",
    "tool_search",
    "apply_patch",
];

/// A tool the model can call, flattened: a namespace's functions become `ns__name`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlatTool {
    /// The name the upstream sees.
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// The JSON schema of the arguments.
    pub(crate) parameters: Value,
    /// `strict: true` asked for.
    pub(crate) strict: bool,
}

/// Where a flattened name came from, to name the call the way the client expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A function tool, in a namespace or not.
    Function {
        namespace: Option<String>,
        name: String,
    },
    /// A freeform `custom` tool: its one argument `input` is the call's text.
    Custom { name: String },
}

/// The tools of a Responses request, read once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    pub(crate) flat: Vec<FlatTool>,
    /// The `web_search` tool (any of its versions), when offered: its path and object.
    pub(crate) web_search: Option<(String, Map)>,
    /// Flattened name → origin, for every function and custom tool.
    pub(crate) names: Vec<(String, Origin)>,
    /// Built-in tool types that were dropped.
    dropped_built_in: Vec<String>,
}

/// True for the web search tool's types (`web_search`, `web_search_preview`, dated versions).
pub(crate) fn is_web_search(kind: &str) -> bool {
    kind.starts_with("web_search")
}

impl Tools {
    /// Reads `tools`; a `web_search` tool is kept when `keep_web_search`, else dropped like the
    /// other built-in tools. `strict`, `defer_loading` and custom-tool grammars are reported
    /// dropped when `report_strict` (the upstream has no place for them).
    pub(crate) fn read(
        request: &Map,
        keep_web_search: bool,
        report_strict: bool,
        dropped: &mut Dropped,
    ) -> Result<Tools, ConversionError> {
        let mut tools = Tools::default();
        let Some(input) = present(request, "tools") else {
            return Ok(tools);
        };
        for (index, tool) in as_array(input, "tools")?.iter().enumerate() {
            let param = index_path("tools", index);
            let tool = as_object(tool, &param)?;
            let kind = block_type(tool, &param)?;
            match kind {
                "function" => tools.function(tool, &param, None, report_strict, dropped)?,
                "namespace" => {
                    let namespace = required_str(tool, "name", &param)?;
                    if present(tool, "description").is_some() {
                        dropped.push(field_path(&param, "description"));
                    }
                    let inner_param = field_path(&param, "tools");
                    let inner = present(tool, "tools").unwrap_or(&Value::Null);
                    for (inner_index, inner_tool) in
                        as_array(inner, &inner_param)?.iter().enumerate()
                    {
                        let param = index_path(&inner_param, inner_index);
                        let inner_tool = as_object(inner_tool, &param)?;
                        match block_type(inner_tool, &param)? {
                            "function" => tools.function(
                                inner_tool,
                                &param,
                                Some(namespace),
                                report_strict,
                                dropped,
                            )?,
                            other => {
                                return err(
                                    field_path(&param, "type"),
                                    format!(
                                        "namespaced tools of type \"{other}\" cannot be translated"
                                    ),
                                )
                            }
                        }
                    }
                }
                "custom" => {
                    let name = required_str(tool, "name", &param)?;
                    if present(tool, "format").is_some() {
                        dropped.push(field_path(&param, "format"));
                    }
                    let description = match present(tool, "description") {
                        Some(d) => Some(as_str(d, &field_path(&param, "description"))?.to_owned()),
                        None => None,
                    };
                    tools.flat.push(FlatTool {
                        name: name.to_owned(),
                        description,
                        parameters: json!({
                            "type": "object",
                            "properties": {"input": {"type": "string",
                                "description": "The whole input of the tool, as free text."}},
                            "required": ["input"],
                        }),
                        strict: false,
                    });
                    tools.names.push((
                        name.to_owned(),
                        Origin::Custom {
                            name: name.to_owned(),
                        },
                    ));
                }
                kind if is_web_search(kind) && keep_web_search => {
                    if tools.web_search.is_some() {
                        return err(
                            field_path(&param, "type"),
                            "only one web search tool can be offered",
                        );
                    }
                    tools.web_search = Some((param.clone(), tool.clone()));
                }
                kind if is_web_search(kind) || BUILT_IN.contains(&kind) => {
                    dropped.push(param.clone());
                    tools.dropped_built_in.push(kind.to_owned());
                }
                other => {
                    return err(
                        field_path(&param, "type"),
                        format!(
                        "tools of type \"{other}\" cannot be translated for this model's provider"
                    ),
                    )
                }
            }
        }
        Ok(tools)
    }

    fn function(
        &mut self,
        tool: &Map,
        param: &str,
        namespace: Option<&str>,
        report_strict: bool,
        dropped: &mut Dropped,
    ) -> Result<(), ConversionError> {
        let name = required_str(tool, "name", param)?;
        let description = match present(tool, "description") {
            Some(d) => Some(as_str(d, &field_path(param, "description"))?.to_owned()),
            None => None,
        };
        let strict = match present(tool, "strict") {
            Some(Value::Bool(strict)) => *strict,
            Some(_) => return err(field_path(param, "strict"), "must be a boolean"),
            None => false,
        };
        if strict && report_strict {
            dropped.push(field_path(param, "strict"));
        }
        if present(tool, "defer_loading").is_some() {
            dropped.push(field_path(param, "defer_loading"));
        }
        let flat = match namespace {
            Some(namespace) => format!("{namespace}{NAMESPACE_SEPARATOR}{name}"),
            None => name.to_owned(),
        };
        self.flat.push(FlatTool {
            name: flat.clone(),
            description,
            parameters: present(tool, "parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict,
        });
        self.names.push((
            flat,
            Origin::Function {
                namespace: namespace.map(str::to_owned),
                name: name.to_owned(),
            },
        ));
        Ok(())
    }

    /// True when the model has a tool to call upstream.
    pub(crate) fn any(&self) -> bool {
        !self.flat.is_empty() || self.web_search.is_some()
    }

    /// The request's `tool_choice`, checked against the tools that survived.
    pub(crate) fn choice(&self, request: &Map) -> Result<Option<Choice>, ConversionError> {
        let choice = match present(request, "tool_choice") {
            None => return Ok(None),
            Some(Value::String(choice)) => match choice.as_str() {
                "auto" => Choice::Auto,
                "none" => Choice::None,
                "required" => {
                    if !self.any() && !self.dropped_built_in.is_empty() {
                        return err(
                            "tool_choice",
                            "a tool call is required, but the only tools offered are built-in tools this model's provider cannot run",
                        );
                    }
                    Choice::Required
                }
                other => {
                    return err("tool_choice", format!("\"{other}\" is not a known tool_choice"))
                }
            },
            Some(Value::Object(choice)) => match block_type(choice, "tool_choice")? {
                "function" | "custom" => {
                    let name = required_str(choice, "name", "tool_choice")?;
                    let namespace = match present(choice, "namespace") {
                        Some(ns) => Some(as_str(ns, "tool_choice.namespace")?),
                        None => None,
                    };
                    Choice::Named(match namespace {
                        Some(ns) => format!("{ns}{NAMESPACE_SEPARATOR}{name}"),
                        None => name.to_owned(),
                    })
                }
                kind if is_web_search(kind) && self.web_search.is_some() => Choice::WebSearch,
                kind => {
                    return err(
                        "tool_choice.type",
                        format!("a call of the \"{kind}\" tool is required, which this model's provider cannot run"),
                    )
                }
            },
            Some(_) => return err("tool_choice", "must be a string or an object"),
        };
        Ok(Some(choice))
    }
}

/// Upstream tool name → the client's tool, for every tool of a (valid) Responses request.
pub(crate) fn tool_names(request: &Value) -> Vec<(String, Origin)> {
    request
        .as_object()
        .and_then(|request| Tools::read(request, true, false, &mut Dropped::default()).ok())
        .map(|tools| tools.names)
        .unwrap_or_default()
}

/// The origin of `upstream_name` among `names`.
pub(crate) fn origin_in(names: &[(String, Origin)], upstream_name: &str) -> Origin {
    names
        .iter()
        .find(|(flat, _)| flat == upstream_name)
        .map(|(_, origin)| origin.clone())
        .unwrap_or_else(|| Origin::Function {
            namespace: None,
            name: upstream_name.to_owned(),
        })
}

/// A `tool_choice`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    Auto,
    None,
    Required,
    /// A function or custom tool, by its upstream (flattened) name.
    Named(String),
    WebSearch,
}

/// The upstream name of a `function_call` input item (`namespace` + `name`).
pub(crate) fn call_name(item: &Map, param: &str) -> Result<String, ConversionError> {
    let name = required_str(item, "name", param)?;
    Ok(match present(item, "namespace") {
        Some(ns) => format!(
            "{}{NAMESPACE_SEPARATOR}{name}",
            as_str(ns, &field_path(param, "namespace"))?
        ),
        None => name.to_owned(),
    })
}

/// A `function_call` or `custom_tool_call` output item for a call of `upstream_name`.
pub(crate) fn call_item(origin: &Origin, call_id: &str, arguments: &str, status: &str) -> Value {
    match origin {
        Origin::Function { namespace, name } => {
            let mut item = Map::new();
            item.insert("id".into(), function_call_item_id(call_id).into());
            item.insert("type".into(), "function_call".into());
            item.insert("status".into(), status.into());
            item.insert("arguments".into(), arguments.into());
            item.insert("call_id".into(), call_id.into());
            item.insert("name".into(), name.as_str().into());
            if let Some(namespace) = namespace {
                item.insert("namespace".into(), namespace.as_str().into());
            }
            Value::Object(item)
        }
        Origin::Custom { name } => json!({
            "id": format!("ctc_{}", call_id.strip_prefix("call_").unwrap_or(call_id)),
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "input": custom_input(arguments),
        }),
    }
}

/// The text of a custom tool call from its `{"input": "..."}` arguments (the arguments
/// themselves when they are not that object).
pub(crate) fn custom_input(arguments: &str) -> String {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| arguments.to_owned())
}

/// The request's settings that a Responses response object repeats back.
pub(crate) fn echo_fields(request: &Value) -> Map {
    let get = |key: &str| request.get(key).filter(|v| !v.is_null()).cloned();
    let reasoning = request.get("reasoning");
    let mut echo = Map::new();
    echo.insert("background".into(), false.into());
    echo.insert("error".into(), Value::Null);
    echo.insert("incomplete_details".into(), Value::Null);
    echo.insert(
        "instructions".into(),
        get("instructions").unwrap_or(Value::Null),
    );
    echo.insert(
        "max_output_tokens".into(),
        get("max_output_tokens").unwrap_or(Value::Null),
    );
    echo.insert(
        "metadata".into(),
        get("metadata").unwrap_or_else(|| json!({})),
    );
    echo.insert(
        "parallel_tool_calls".into(),
        get("parallel_tool_calls").unwrap_or(Value::Bool(true)),
    );
    echo.insert("previous_response_id".into(), Value::Null);
    echo.insert(
        "reasoning".into(),
        json!({
            "effort": reasoning.and_then(|r| r.get("effort")).cloned().unwrap_or(Value::Null),
            "summary": reasoning.and_then(|r| r.get("summary")).cloned().unwrap_or(Value::Null),
        }),
    );
    echo.insert("store".into(), false.into());
    echo.insert(
        "temperature".into(),
        get("temperature").unwrap_or_else(|| json!(1.0)),
    );
    echo.insert(
        "text".into(),
        get("text").unwrap_or_else(|| json!({"format": {"type": "text"}})),
    );
    echo.insert(
        "tool_choice".into(),
        get("tool_choice").unwrap_or_else(|| json!("auto")),
    );
    echo.insert("tools".into(), get("tools").unwrap_or_else(|| json!([])));
    echo.insert("top_p".into(), get("top_p").unwrap_or_else(|| json!(1.0)));
    echo.insert("truncation".into(), json!("disabled"));
    echo.insert("user".into(), get("user").unwrap_or(Value::Null));
    echo
}

/// A whole Responses `response` object.
pub(crate) struct ResponseParts<'a> {
    pub(crate) id: &'a str,
    pub(crate) created_at: u64,
    pub(crate) model: &'a str,
    pub(crate) status: &'a str,
    pub(crate) output: Vec<Value>,
    pub(crate) usage: Value,
}

pub(crate) fn response_object(echo: &Map, parts: ResponseParts<'_>) -> Value {
    let mut response = Map::new();
    response.insert("id".into(), parts.id.into());
    response.insert("object".into(), "response".into());
    response.insert("created_at".into(), parts.created_at.into());
    response.insert("status".into(), parts.status.into());
    response.insert("model".into(), parts.model.into());
    response.insert("output".into(), Value::Array(parts.output));
    response.extend(echo.clone());
    response.insert("usage".into(), parts.usage);
    Value::Object(response)
}

pub(crate) fn function_call_item_id(call_id: &str) -> String {
    format!("fc_{}", call_id.strip_prefix("call_").unwrap_or(call_id))
}

pub(crate) fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The top-level fields every Responses direction drops as hints (reported), with the reason
/// in `docs/translation.md`: `client_metadata`, `metadata`, `prompt_cache_key`, `service_tier`,
/// `stream_options`, `store: true`.
pub(crate) fn drop_hint(key: &str, value: &Value, dropped: &mut Dropped) -> bool {
    match key {
        "client_metadata"
        | "metadata"
        | "prompt_cache_key"
        | "service_tier"
        | "stream_options"
        | "prompt_cache_retention" => {
            dropped.push(key);
            true
        }
        "store" => {
            if value.as_bool() == Some(true) {
                dropped.push(key);
            }
            true
        }
        _ => false,
    }
}
