//! The clock that decides a key's budget window (and the time of a request's charge).
//! Normally the system's; tests move it without sleeping: `set` in process, or the
//! environment variable `TOLLGATE_CLOCK_FILE` naming a file that holds the time (unix
//! seconds or RFC 3339), read at every call, so several replicas share one test clock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The environment variable naming a clock file (tests only).
pub const CLOCK_FILE_ENV: &str = "TOLLGATE_CLOCK_FILE";

/// No fixed time set.
const UNSET: i64 = i64::MIN;

/// The time source of windows and charges; clones share it.
#[derive(Clone, Debug)]
pub struct Clock {
    fixed: Arc<AtomicI64>,
    file: Option<Arc<PathBuf>>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock {
            fixed: Arc::new(AtomicI64::new(UNSET)),
            file: None,
        }
    }

    /// A clock that reads the time from `path` at every call (the system's time when
    /// the file is missing or unreadable).
    pub fn from_file(path: PathBuf) -> Clock {
        Clock {
            file: Some(Arc::new(path)),
            ..Clock::system()
        }
    }

    /// Fixes the time at `unix` seconds (tests).
    pub fn set(&self, unix: i64) {
        self.fixed.store(unix, Ordering::Relaxed);
    }

    /// The current unix time in seconds.
    pub fn now(&self) -> i64 {
        let fixed = self.fixed.load(Ordering::Relaxed);
        if fixed != UNSET {
            return fixed;
        }
        if let Some(path) = &self.file {
            if let Some(t) = std::fs::read_to_string(&**path)
                .ok()
                .and_then(|text| parse(text.trim()))
            {
                return t;
            }
        }
        crate::now()
    }
}

fn parse(text: &str) -> Option<i64> {
    text.parse::<i64>()
        .ok()
        .or_else(|| crate::parse_rfc3339(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_clock_and_a_file_clock_tell_their_time() {
        let clock = Clock::system();
        let real = clock.now();
        assert!((real - crate::now()).abs() <= 1);
        clock.clone().set(1_000);
        assert_eq!(clock.now(), 1_000);

        let dir = std::env::temp_dir().join(format!("tg-clock-{}", std::process::id()));
        let file = Clock::from_file(dir.clone());
        assert!(
            (file.now() - crate::now()).abs() <= 1,
            "missing file: system time"
        );
        std::fs::write(&dir, "2027-01-31T23:59:00Z\n").expect("write");
        assert_eq!(file.now(), 1_801_439_940);
        std::fs::write(&dir, "42").expect("write");
        assert_eq!(file.now(), 42);
        let _ = std::fs::remove_file(&dir);
    }
}
