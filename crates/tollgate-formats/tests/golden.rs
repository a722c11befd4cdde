//! Golden tests for format translation.
//!
//! Layout: `tests/golden/<direction>/<case>/` where `<direction>` is a module of
//! `tollgate_formats::conversion` (client-to-upstream). A case holds any of:
//! - `request.in.json` → `request.out.json` and `dropped.json` (the paths the translation
//!   dropped, `[]` when none), or `error.json` when the request cannot be translated;
//! - `response.in.json` → `response.out.json`;
//! - `stream.in.sse` → `stream.out.sse` (upstream events pushed one by one, then `finish`; an
//!   event the converter rejects ends the stream with the converter's `error_frame`);
//! - `params.json` (optional) overriding `upstream_model`, `public_model`,
//!   `default_max_tokens`, `created` and `include_usage`.
//!
//! JSON is compared as values; SSE is compared byte for byte, except that the JSON on each
//! `data:` line is compared as a value (key order depends on serde_json's features).
//! Run with `UPDATE_GOLDEN=1` to rewrite the outputs, then review the diff by eye.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use serde_json::{json, Value};
use tollgate_formats::conversion::{
    chat_to_messages, messages_to_chat, responses_to_chat, responses_to_messages, ConversionError,
    Converted, StreamConverter,
};
use tollgate_formats::sse::SseDecoder;

struct Params {
    upstream_model: String,
    public_model: String,
    default_max_tokens: u64,
    created: u64,
    include_usage: Option<bool>,
}

impl Params {
    fn load(direction: &str, case: &Path) -> Params {
        let (upstream, public) = match direction {
            "messages_to_chat" => ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
            "chat_to_messages" | "responses_to_messages" => {
                ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5")
            }
            _ => ("llama-3.3-70b-instruct", "llama-3.3-70b"),
        };
        let overrides = read_json(&case.join("params.json")).unwrap_or_else(|| json!({}));
        let text = |key: &str, default: &str| {
            overrides
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        Params {
            upstream_model: text("upstream_model", upstream),
            public_model: text("public_model", public),
            default_max_tokens: overrides
                .get("default_max_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(4096),
            created: overrides
                .get("created")
                .and_then(Value::as_u64)
                .unwrap_or(1_750_000_000),
            include_usage: overrides.get("include_usage").and_then(Value::as_bool),
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display())),
    )
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("serializable");
    text.push('\n');
    text
}

fn error_json(error: &ConversionError) -> Value {
    serde_json::to_value(error).expect("serializable")
}

/// Replaces the JSON of every `data:` line by its canonical serialization.
fn canonical_sse(text: &str) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        match line
            .strip_prefix("data: ")
            .and_then(|data| serde_json::from_str::<Value>(data).ok())
        {
            Some(value) => {
                let _ = write!(out, "data: {value}");
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

struct Checker {
    update: bool,
    failures: Vec<String>,
}

impl Checker {
    fn check_json(&mut self, path: &Path, actual: &Value) {
        if self.update {
            fs::write(path, pretty(actual)).expect("write golden file");
            return;
        }
        match read_json(path) {
            None => self.failures.push(format!(
                "{} is missing; produced:\n{}",
                path.display(),
                pretty(actual)
            )),
            Some(expected) if &expected != actual => self.failures.push(format!(
                "{} differs; produced:\n{}",
                path.display(),
                pretty(actual)
            )),
            Some(_) => {}
        }
    }

    fn check_absent(&mut self, path: &Path) {
        if !path.exists() {
            return;
        }
        if self.update {
            fs::remove_file(path).expect("remove stale golden file");
        } else {
            self.failures
                .push(format!("{} exists but was not produced", path.display()));
        }
    }

    fn check_sse(&mut self, path: &Path, actual: &str) {
        if self.update {
            fs::write(path, actual).expect("write golden file");
            return;
        }
        match fs::read_to_string(path) {
            Err(_) => self.failures.push(format!(
                "{} is missing; produced:\n{actual}",
                path.display()
            )),
            Ok(expected) if canonical_sse(&expected) != canonical_sse(actual) => self
                .failures
                .push(format!("{} differs; produced:\n{actual}", path.display())),
            Ok(_) => {}
        }
    }
}

fn convert_request(
    direction: &str,
    request: &Value,
    params: &Params,
) -> Result<Converted, ConversionError> {
    match direction {
        "messages_to_chat" => messages_to_chat::convert_request(request, &params.upstream_model),
        "chat_to_messages" => chat_to_messages::convert_request(
            request,
            &params.upstream_model,
            params.default_max_tokens,
        ),
        "responses_to_chat" => responses_to_chat::convert_request(request, &params.upstream_model),
        "responses_to_messages" => responses_to_messages::convert_request(
            request,
            &params.upstream_model,
            params.default_max_tokens,
        ),
        other => panic!("unknown direction {other}"),
    }
}

fn convert_response(
    direction: &str,
    response: &Value,
    request: &Value,
    params: &Params,
) -> Result<Value, ConversionError> {
    match direction {
        "messages_to_chat" => messages_to_chat::convert_response(response, &params.public_model),
        "chat_to_messages" => {
            chat_to_messages::convert_response(response, &params.public_model, params.created)
        }
        "responses_to_chat" => {
            responses_to_chat::convert_response(response, request, &params.public_model)
        }
        "responses_to_messages" => responses_to_messages::convert_response(
            response,
            request,
            &params.public_model,
            params.created,
        ),
        other => panic!("unknown direction {other}"),
    }
}

fn stream_converter(direction: &str, request: &Value, params: &Params) -> Box<dyn StreamConverter> {
    match direction {
        "messages_to_chat" => Box::new(messages_to_chat::ResponseStream::new(&params.public_model)),
        "chat_to_messages" => {
            let include_usage = params
                .include_usage
                .unwrap_or_else(|| tollgate_formats::usage::chat_request_wants_usage(request));
            Box::new(chat_to_messages::ResponseStream::new(
                &params.public_model,
                params.created,
                include_usage,
            ))
        }
        "responses_to_chat" => Box::new(responses_to_chat::ResponseStream::new(
            request,
            &params.public_model,
        )),
        "responses_to_messages" => Box::new(responses_to_messages::ResponseStream::new(
            request,
            &params.public_model,
            params.created,
        )),
        other => panic!("unknown direction {other}"),
    }
}

fn convert_stream(converter: &mut dyn StreamConverter, input: &[u8]) -> String {
    let mut decoder = SseDecoder::new(1 << 20);
    let mut events = decoder.push(input).expect("the input stream decodes");
    events.extend(decoder.finish());
    let mut frames: Vec<Bytes> = Vec::new();
    let mut failed = false;
    for event in &events {
        match converter.push(event) {
            Ok(more) => frames.extend(more),
            Err(error) => {
                frames.push(converter.error_frame(&error.to_string()));
                failed = true;
                break;
            }
        }
    }
    if !failed {
        frames.extend(converter.finish());
    }
    // After the end nothing more may come out.
    assert!(
        converter.finish().is_empty(),
        "finish after the end produced frames"
    );
    frames
        .iter()
        .map(|frame| String::from_utf8(frame.to_vec()).expect("frames are UTF-8"))
        .collect()
}

fn run_case(direction: &str, case: &Path, checker: &mut Checker) {
    let params = Params::load(direction, case);
    let request = read_json(&case.join("request.in.json"));
    if let Some(request) = &request {
        match convert_request(direction, request, &params) {
            Ok(out) => {
                checker.check_json(&case.join("request.out.json"), &out.body);
                checker.check_json(&case.join("dropped.json"), &json!(out.dropped));
                checker.check_absent(&case.join("error.json"));
            }
            Err(error) => {
                checker.check_json(&case.join("error.json"), &error_json(&error));
                checker.check_absent(&case.join("request.out.json"));
                checker.check_absent(&case.join("dropped.json"));
            }
        }
    }
    let request = request.unwrap_or_else(|| json!({}));
    if let Some(response) = read_json(&case.join("response.in.json")) {
        let out = convert_response(direction, &response, &request, &params)
            .unwrap_or_else(|error| json!({"conversion_error": error_json(&error)}));
        checker.check_json(&case.join("response.out.json"), &out);
    }
    if let Ok(input) = fs::read(case.join("stream.in.sse")) {
        let mut converter = stream_converter(direction, &request, &params);
        let out = convert_stream(converter.as_mut(), &input);
        checker.check_sse(&case.join("stream.out.sse"), &out);
    }
}

fn sorted_dirs(path: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checker = Checker {
        update: std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1"),
        failures: Vec::new(),
    };
    let mut cases = 0;
    for direction_dir in sorted_dirs(&root) {
        let direction = direction_dir
            .file_name()
            .and_then(|name| name.to_str())
            .expect("direction name")
            .to_owned();
        for case in sorted_dirs(&direction_dir) {
            run_case(&direction, &case, &mut checker);
            cases += 1;
        }
    }
    assert!(
        cases >= 30,
        "expected at least 30 golden cases, found {cases}"
    );
    assert!(
        checker.failures.is_empty(),
        "{} golden mismatches (rerun with UPDATE_GOLDEN=1 and review the diff):\n\n{}",
        checker.failures.len(),
        checker.failures.join("\n\n")
    );
}
