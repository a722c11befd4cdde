//! Streamed response bodies: pacing, injected faults, and counting how each stream
//! ended (completed, aborted on purpose, or dropped because the client went away).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;

use crate::Shared;

/// Pause before a cut, so the chunks before it reach the client.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);
/// Shortest pause between the chunks of an endless stream.
const MIN_ENDLESS_DELAY: Duration = Duration::from_millis(1);

/// What a frame is, for `cut_after` / `error_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Structure around the content (headers of the stream, pings, a malformed line).
    Aside,
    /// One content chunk: a word, an argument fragment, a slice of audio.
    Content,
    /// Structure after the content that is not the stream's end (finish reason,
    /// closing of blocks).
    Tail,
    /// The stream's terminal events and final usage (`[DONE]`, the usage chunk,
    /// `response.completed`, `message_delta`, `message_stop`): what `no_terminator`
    /// leaves out.
    Final,
}

/// One write of a stream.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) part: Part,
    pub(crate) bytes: Bytes,
}

impl Frame {
    pub(crate) fn aside(bytes: impl Into<Bytes>) -> Self {
        Self {
            part: Part::Aside,
            bytes: bytes.into(),
        }
    }

    pub(crate) fn content(bytes: impl Into<Bytes>) -> Self {
        Self {
            part: Part::Content,
            bytes: bytes.into(),
        }
    }

    pub(crate) fn tail(bytes: impl Into<Bytes>) -> Self {
        Self {
            part: Part::Tail,
            bytes: bytes.into(),
        }
    }

    pub(crate) fn terminal(bytes: impl Into<Bytes>) -> Self {
        Self {
            part: Part::Final,
            bytes: bytes.into(),
        }
    }
}

/// A fault injected after some content chunks.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Abort the connection after N content chunks.
    CutAfter(usize),
    /// Send this error event after N content chunks, then end.
    ErrorAfter(usize, Bytes),
    /// Send everything but the terminal frames, then end cleanly.
    NoTerminator,
}

enum Step {
    Send(Bytes),
    Abort,
}

/// Applies the fault to the frames.
fn steps(frames: Vec<Frame>, fault: Option<Fault>) -> (Vec<Step>, bool) {
    let Some(fault) = fault else {
        return (
            frames.into_iter().map(|f| Step::Send(f.bytes)).collect(),
            false,
        );
    };
    let total = frames.iter().filter(|f| f.part == Part::Content).count();
    let n = match &fault {
        Fault::CutAfter(n) | Fault::ErrorAfter(n, _) => (*n).min(total),
        Fault::NoTerminator => {
            let kept = frames.into_iter().filter(|f| f.part != Part::Final);
            return (kept.map(|f| Step::Send(f.bytes)).collect(), true);
        }
    };
    let mut out = Vec::with_capacity(frames.len() + 1);
    let mut seen = 0;
    for f in frames {
        if seen >= n && f.part != Part::Aside {
            break;
        }
        if f.part == Part::Content {
            seen += 1;
        }
        out.push(Step::Send(f.bytes));
    }
    match fault {
        Fault::CutAfter(_) => out.push(Step::Abort),
        Fault::ErrorAfter(_, event) => out.push(Step::Send(event)),
        Fault::NoTerminator => {}
    }
    (out, true)
}

/// Counts the stream as cancelled if it is dropped before its final chunk.
struct Guard {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            Shared::bump(&self.shared.counters.streams_cancelled);
        }
    }
}

/// A response body that writes the frames `delay` apart, with the fault applied.
pub(crate) fn body(
    shared: Arc<Shared>,
    frames: Vec<Frame>,
    delay: Duration,
    fault: Option<Fault>,
) -> Body {
    Shared::bump(&shared.counters.streams_started);
    let (steps, faulted) = steps(frames, fault);
    let guard = Guard {
        shared,
        done: false,
    };
    let state = (steps.into_iter(), guard, true);
    let s = stream::unfold(state, move |(mut it, mut guard, first)| async move {
        let step = it.next()?;
        if !first && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let counters = &guard.shared.counters;
        match step {
            Step::Send(bytes) => {
                if it.len() == 0 {
                    guard.done = true;
                    Shared::bump(if faulted {
                        &counters.streams_aborted
                    } else {
                        &counters.streams_completed
                    });
                }
                Some((Ok(bytes), (it, guard, false)))
            }
            Step::Abort => {
                // Hyper drops its unflushed buffer when a body fails; pausing first lets
                // it write the chunks already yielded, so the cut lands mid-stream.
                tokio::time::sleep(FLUSH_PAUSE).await;
                guard.done = true;
                Shared::bump(&counters.streams_aborted);
                let err = io::Error::new(io::ErrorKind::ConnectionAborted, "cut_after");
                Some((Err(err), (it, guard, false)))
            }
        }
    });
    Body::from_stream(s)
}

/// Makes the `i`-th content chunk of an endless stream.
pub(crate) type ContentGen = Box<dyn FnMut(u64) -> Bytes + Send>;

/// A stream that never ends: the `prefix` frames, then a content chunk from `next`
/// every `delay` (at least 1 ms) until the client goes away. Nothing is kept between
/// chunks, so it runs in constant memory.
pub(crate) fn endless(
    shared: Arc<Shared>,
    prefix: Vec<Frame>,
    next: ContentGen,
    delay: Duration,
) -> Body {
    Shared::bump(&shared.counters.streams_started);
    let delay = delay.max(MIN_ENDLESS_DELAY);
    let guard = Guard {
        shared,
        done: false,
    };
    let state = (prefix.into_iter(), next, 0u64, guard, true);
    let s = stream::unfold(
        state,
        move |(mut prefix, mut next, i, guard, first)| async move {
            if !first {
                tokio::time::sleep(delay).await;
            }
            let (bytes, i) = match prefix.next() {
                Some(f) => (f.bytes, i),
                None => (next(i), i + 1),
            };
            Some((Ok::<_, io::Error>(bytes), (prefix, next, i, guard, false)))
        },
    );
    Body::from_stream(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::aside("a"),
            Frame::content("1"),
            Frame::aside("m"),
            Frame::content("2"),
            Frame::content("3"),
            Frame::tail("t"),
            Frame::terminal("z"),
        ]
    }

    fn sent(steps: &[Step]) -> String {
        steps
            .iter()
            .map(|s| match s {
                Step::Send(b) => String::from_utf8_lossy(b).into_owned(),
                Step::Abort => "!".into(),
            })
            .collect()
    }

    #[test]
    fn cut_and_error_positions() {
        assert_eq!(sent(&steps(frames(), None).0), "a1m23tz");
        assert_eq!(sent(&steps(frames(), Some(Fault::CutAfter(0))).0), "a!");
        assert_eq!(sent(&steps(frames(), Some(Fault::CutAfter(1))).0), "a1m!");
        assert_eq!(sent(&steps(frames(), Some(Fault::CutAfter(9))).0), "a1m23!");
        let e = Fault::ErrorAfter(2, Bytes::from("E"));
        assert_eq!(sent(&steps(frames(), Some(e)).0), "a1m2E");
        assert_eq!(
            sent(&steps(frames(), Some(Fault::NoTerminator)).0),
            "a1m23t"
        );
    }
}
