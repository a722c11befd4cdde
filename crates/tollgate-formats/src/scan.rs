//! Following a JSON object's bytes as they arrive, without holding them: the raw text of
//! chosen top-level members (such as `usage`, which providers put at the end of an answer)
//! and where each of them lies, so that a large answer can be relayed while it is read.

/// One top-level member found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: &'static str,
    /// Offsets of its value in the whole text (end exclusive).
    pub start: usize,
    pub end: usize,
    /// The raw JSON text of its value, when it was no longer than the capture limit.
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening brace.
    Start,
    /// Inside the top-level object, expecting a key (or the end).
    Key,
    /// Inside a top-level key string.
    KeyString { escaped: bool },
    /// After a key, expecting `:`.
    Colon,
    /// After `:`, expecting a value.
    Value,
    /// Inside a value: `depth` of nested containers, and whether in a string.
    InValue {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After a value, expecting `,` or `}`.
    After,
    /// The object ended (or the text is not an object: nothing more is read).
    Done,
}

/// Scans a JSON object's text chunk by chunk for chosen top-level members.
#[derive(Debug, Clone)]
pub struct Scanner {
    wanted: &'static [&'static str],
    max_capture: usize,
    state: State,
    offset: usize,
    key: Vec<u8>,
    current: Option<Member>,
    capture: Vec<u8>,
    found: Vec<Member>,
    complete: bool,
}

/// Longest key remembered (longer keys are no wanted member).
const MAX_KEY: usize = 64;

impl Scanner {
    /// A scanner for the members named in `wanted`, keeping the text of values up to
    /// `max_capture` bytes.
    pub fn new(wanted: &'static [&'static str], max_capture: usize) -> Scanner {
        Scanner {
            wanted,
            max_capture,
            state: State::Start,
            offset: 0,
            key: Vec::new(),
            current: None,
            capture: Vec::new(),
            found: Vec::new(),
            complete: false,
        }
    }

    /// The members found so far, in order.
    pub fn members(&self) -> &[Member] {
        &self.found
    }

    /// The last member named `name` found so far.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.found.iter().rev().find(|m| m.name == name)
    }

    /// Whether the object's closing brace was seen.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Bytes seen so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn begin_value(&mut self, at: usize) {
        self.current = self
            .wanted
            .iter()
            .find(|w| w.as_bytes() == self.key.as_slice())
            .map(|name| Member {
                name,
                start: at,
                end: at,
                text: None,
            });
        self.capture.clear();
    }

    fn end_value(&mut self, at: usize) {
        if let Some(mut member) = self.current.take() {
            member.end = at;
            if at - member.start <= self.max_capture {
                member.text = String::from_utf8(std::mem::take(&mut self.capture)).ok();
            }
            self.found.push(member);
        }
    }

    /// Reads the next chunk of the text.
    pub fn push(&mut self, chunk: &[u8]) {
        for (i, &b) in chunk.iter().enumerate() {
            let at = self.offset + i;
            let capturing = self.current.is_some();
            match self.state {
                State::Start => match b {
                    b'{' => self.state = State::Key,
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => self.state = State::Done,
                },
                State::Key => match b {
                    b'"' => {
                        self.key.clear();
                        self.state = State::KeyString { escaped: false };
                    }
                    b'}' => {
                        self.complete = true;
                        self.state = State::Done;
                    }
                    _ => {}
                },
                State::KeyString { escaped } => match (escaped, b) {
                    (false, b'\\') => self.state = State::KeyString { escaped: true },
                    (false, b'"') => self.state = State::Colon,
                    _ => {
                        if self.key.len() <= MAX_KEY {
                            self.key.push(b);
                        }
                        self.state = State::KeyString { escaped: false };
                    }
                },
                State::Colon => {
                    if b == b':' {
                        self.state = State::Value;
                    }
                }
                State::Value => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => {
                        self.begin_value(at);
                        let (depth, in_string) = match b {
                            b'{' | b'[' => (1, false),
                            b'"' => (0, true),
                            _ => (0, false),
                        };
                        self.state = State::InValue {
                            depth,
                            in_string,
                            escaped: false,
                        };
                        if self.current.is_some() {
                            self.capture.push(b);
                        }
                    }
                },
                State::InValue {
                    depth,
                    in_string,
                    escaped,
                } => {
                    let ends_scalar = depth == 0
                        && !in_string
                        && matches!(b, b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t');
                    if ends_scalar {
                        self.end_value(at);
                        self.state = State::After;
                        self.after(b);
                        continue;
                    }
                    if capturing && self.capture.len() <= self.max_capture {
                        self.capture.push(b);
                    }
                    self.state = match (in_string, escaped, b) {
                        (true, true, _) => State::InValue {
                            depth,
                            in_string,
                            escaped: false,
                        },
                        (true, false, b'\\') => State::InValue {
                            depth,
                            in_string,
                            escaped: true,
                        },
                        (true, false, b'"') if depth == 0 => {
                            self.end_value(at + 1);
                            State::After
                        }
                        (true, false, b'"') => State::InValue {
                            depth,
                            in_string: false,
                            escaped: false,
                        },
                        (true, false, _) => State::InValue {
                            depth,
                            in_string,
                            escaped: false,
                        },
                        (false, _, b'"') => State::InValue {
                            depth,
                            in_string: true,
                            escaped: false,
                        },
                        (false, _, b'{' | b'[') => State::InValue {
                            depth: depth + 1,
                            in_string,
                            escaped: false,
                        },
                        (false, _, b'}' | b']') if depth == 1 => {
                            self.end_value(at + 1);
                            State::After
                        }
                        (false, _, b'}' | b']') => State::InValue {
                            depth: depth.saturating_sub(1),
                            in_string,
                            escaped: false,
                        },
                        _ => State::InValue {
                            depth,
                            in_string,
                            escaped: false,
                        },
                    };
                }
                State::After => self.after(b),
                State::Done => break,
            }
        }
        self.offset += chunk.len();
    }

    fn after(&mut self, b: u8) {
        match b {
            b',' => self.state = State::Key,
            b'}' => {
                self.complete = true;
                self.state = State::Done;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"id":"c1","model":"gpt-x","choices":[{"message":{"content":"a \"usage\": {} } ]"}}],"n":12,"ok":true,"usage":{"prompt_tokens":8,"completion_tokens":3}}"#;

    fn scan_in_pieces(text: &str, piece: usize) -> Scanner {
        let mut scanner = Scanner::new(&["usage", "model", "n", "ok"], 1024);
        for chunk in text.as_bytes().chunks(piece) {
            scanner.push(chunk);
        }
        scanner
    }

    #[test]
    fn finds_top_level_members_in_any_chunking() {
        for piece in [1, 2, 3, 7, 64, 4096] {
            let s = scan_in_pieces(ANSWER, piece);
            assert!(s.is_complete(), "piece {piece}");
            let usage = s.member("usage").expect("usage");
            assert_eq!(
                usage.text.as_deref(),
                Some(r#"{"prompt_tokens":8,"completion_tokens":3}"#)
            );
            assert_eq!(
                &ANSWER[usage.start..usage.end],
                usage.text.as_deref().unwrap_or("")
            );
            let model = s.member("model").expect("model");
            assert_eq!(&ANSWER[model.start..model.end], "\"gpt-x\"");
            assert_eq!(
                s.member("n").and_then(|m| m.text.clone()).as_deref(),
                Some("12")
            );
            assert_eq!(
                s.member("ok").and_then(|m| m.text.clone()).as_deref(),
                Some("true")
            );
            // The "usage" inside the content string is not a member.
            assert_eq!(s.members().iter().filter(|m| m.name == "usage").count(), 1);
        }
    }

    #[test]
    fn large_values_are_located_but_not_kept() {
        let text = format!(r#"{{"usage":"{}","x":1}}"#, "y".repeat(5000));
        let s = scan_in_pieces(&text, 100);
        let usage = s.member("usage").expect("usage");
        assert_eq!(usage.text, None);
        assert_eq!(usage.end - usage.start, 5002);
        assert!(s.is_complete());
    }

    #[test]
    fn hostile_text_never_panics() {
        for text in [
            "",
            "[1,2]",
            "{",
            "{\"usage\"",
            "{\"usage\":",
            "{\"a\":\"\\",
            "}}}}",
            "{\"usage\":[[[[",
            "\"x\"",
        ] {
            let s = scan_in_pieces(text, 1);
            assert!(!s.is_complete() || text.starts_with('{'));
        }
    }
}
