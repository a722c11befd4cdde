//! The field names and `type` values the estimate recognises, read straight from the JSON text
//! into enums (no string is kept).

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::Format;

/// Defines a string enum read leniently: unknown strings, and values of any other JSON type,
/// read as the fallback variant.
macro_rules! lenient_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => [$($text:literal),+]),+ $(,)? } else $fallback:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub(super) enum $name {
            $($variant,)+
            #[default]
            $fallback,
        }

        impl $name {
            fn from_text(text: &str) -> Self {
                match text {
                    $($($text)|+ => Self::$variant,)+
                    _ => Self::$fallback,
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E>(self, v: &str) -> Result<$name, E> {
                        Ok($name::from_text(v))
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<$name, E> {
                        Ok($name::$fallback)
                    }
                    fn visit_i64<E>(self, _: i64) -> Result<$name, E> {
                        Ok($name::$fallback)
                    }
                    fn visit_u64<E>(self, _: u64) -> Result<$name, E> {
                        Ok($name::$fallback)
                    }
                    fn visit_f64<E>(self, _: f64) -> Result<$name, E> {
                        Ok($name::$fallback)
                    }
                    fn visit_unit<E>(self) -> Result<$name, E> {
                        Ok($name::$fallback)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        while seq.next_element::<IgnoredAny>()?.is_some() {}
                        Ok($name::$fallback)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok($name::$fallback)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

lenient_enum!(
    /// A member name, at any level of a request body.
    Field {
        // Top level.
        Messages => ["messages"],
        Input => ["input"],
        Instructions => ["instructions"],
        System => ["system"],
        Tools => ["tools"],
        Functions => ["functions"],
        ResponseFormat => ["response_format"],
        OutputFormat => ["output_format"],
        OutputConfig => ["output_config"],
        ToolChoice => ["tool_choice"],
        Prediction => ["prediction"],
        PreviousResponseId => ["previous_response_id"],
        Conversation => ["conversation"],
        Prompt => ["prompt"],
        Suffix => ["suffix"],
        McpServers => ["mcp_servers"],
        Container => ["container"],
        WebSearchOptions => ["web_search_options"],
        // Conversation objects.
        Type => ["type"],
        Role => ["role"],
        Text => ["text"],
        Refusal => ["refusal"],
        Thinking => ["thinking"],
        Arguments => ["arguments"],
        Title => ["title"],
        Context => ["context"],
        Filename => ["filename"],
        Name => ["name"],
        Content => ["content"],
        Output => ["output"],
        Summary => ["summary"],
        ToolCalls => ["tool_calls"],
        FunctionCall => ["function_call"],
        Function => ["function"],
        Custom => ["custom"],
        ImageUrl => ["image_url"],
        Source => ["source"],
        File => ["file"],
        FileId => ["file_id"],
        FileUrl => ["file_url"],
        FileData => ["file_data"],
        InputAudio => ["input_audio"],
        EncryptedContent => ["encrypted_content"],
        Signature => ["signature"],
        Data => ["data"],
        Audio => ["audio"],
        // Identifiers and settings: never rendered as text.
        Identifier => [
            "id", "call_id", "tool_call_id", "tool_use_id", "status", "cache_control", "detail",
            "media_type", "is_error", "annotations", "logprobs", "index"
        ],
    } else Other
);

impl Field {
    /// Members that carry no text the model sees.
    pub(super) fn is_identifier(self) -> bool {
        self == Self::Identifier
    }

    /// Whether this is a top-level member of `format` that the estimate reads.
    pub(super) fn is_top_level_of(self, format: Format) -> bool {
        use Field::*;
        match format {
            Format::ChatCompletions => matches!(
                self,
                Messages
                    | Tools
                    | Functions
                    | ResponseFormat
                    | ToolChoice
                    | Prediction
                    | WebSearchOptions
            ),
            Format::Responses => matches!(
                self,
                Input
                    | Instructions
                    | Tools
                    | Text
                    | ToolChoice
                    | PreviousResponseId
                    | Conversation
                    | Prompt
            ),
            Format::AnthropicMessages => matches!(
                self,
                System
                    | Messages
                    | Tools
                    | ToolChoice
                    | Thinking
                    | OutputFormat
                    | OutputConfig
                    | McpServers
                    | Container
            ),
        }
    }

    /// The reference a top-level member stands for.
    pub(super) fn reference_name(self) -> &'static str {
        match self {
            Self::PreviousResponseId => "previous_response_id",
            Self::Conversation => "conversation",
            Self::McpServers => "mcp_servers",
            Self::Container => "container",
            Self::WebSearchOptions => "web_search",
            _ => "unknown",
        }
    }
}

lenient_enum!(
    /// The `type` (or `role`) of a conversation object.
    Kind {
        Text => ["text", "input_text", "output_text"],
        ImageUrl => ["image_url"],
        InputImage => ["input_image"],
        Image => ["image"],
        ComputerScreenshot => ["computer_screenshot"],
        InputFile => ["input_file"],
        File => ["file"],
        Document => ["document"],
        InputAudio => ["input_audio"],
        ToolUse => ["tool_use", "server_tool_use", "mcp_tool_use"],
        FunctionCall => [
            "function_call", "custom_tool_call", "computer_call", "local_shell_call",
            "shell_call", "apply_patch_call", "mcp_call"
        ],
        ToolResult => ["tool_result", "mcp_tool_result"],
        OutputItem => [
            "function_call_output", "custom_tool_call_output", "computer_call_output",
            "local_shell_call_output", "shell_call_output", "apply_patch_call_output"
        ],
        ItemReference => ["item_reference"],
        ContainerUpload => ["container_upload"],
        ToolRole => ["tool", "function"],
        UserRole => ["user"],
    } else Other
);

impl Kind {
    /// A tool call made by the model, sent back.
    pub(super) fn is_call(self) -> bool {
        matches!(self, Self::ToolUse | Self::FunctionCall)
    }

    /// A tool's result, sent to the model.
    pub(super) fn is_result(self) -> bool {
        matches!(self, Self::ToolResult | Self::OutputItem)
    }

    /// An image part, whatever its source.
    pub(super) fn is_image(self) -> bool {
        matches!(
            self,
            Self::ImageUrl | Self::InputImage | Self::Image | Self::ComputerScreenshot
        )
    }
}

lenient_enum!(
    /// The `type` of an Anthropic content source.
    SourceKind {
        Base64 => ["base64"],
        Url => ["url"],
        File => ["file"],
        Text => ["text"],
        Content => ["content"],
    } else Other
);

/// What a tool definition's `type` implies for the estimate.
pub(super) enum ToolKind {
    /// A function (or custom, or namespace) tool: its JSON text is what the model sees.
    Function,
    /// A provider-defined tool the client runs, whose description the provider writes.
    Builtin,
    /// A tool the provider runs itself; its results are input the body does not bound.
    Hosted(&'static str),
}

/// Classifies a tool definition by its `type`.
pub(super) fn tool_kind(kind: Option<&str>) -> ToolKind {
    let Some(kind) = kind else {
        return ToolKind::Function;
    };
    const BUILTIN: &[&str] = &[
        "bash_",
        "text_editor_",
        "computer_",
        "memory_",
        "local_shell",
        "shell",
        "apply_patch",
    ];
    const HOSTED: &[(&str, &str)] = &[
        ("web_search", "web_search"),
        ("web_fetch", "web_fetch"),
        ("file_search", "file_search"),
        ("code_interpreter", "code_interpreter"),
        ("code_execution", "code_execution"),
        ("image_generation", "image_generation"),
        ("mcp", "mcp"),
        ("tool_search", "tool_search"),
    ];
    if matches!(kind, "function" | "custom" | "namespace") {
        ToolKind::Function
    } else if BUILTIN.iter().any(|p| kind.starts_with(p)) {
        ToolKind::Builtin
    } else {
        let name = HOSTED
            .iter()
            .find(|(prefix, _)| kind.starts_with(prefix))
            .map_or("hosted_tool", |(_, name)| name);
        ToolKind::Hosted(name)
    }
}
