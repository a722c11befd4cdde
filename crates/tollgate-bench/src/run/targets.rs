//! The summary of every target.

#[allow(unused_imports)]
use super::*;

impl Bench {
    pub(super) fn summary_targets(&mut self) {
        let mut startups = self.startups_ms.clone();
        startups.sort_by(f64::total_cmp);
        if let (Some(min), Some(max)) = (startups.first().copied(), startups.last().copied()) {
            let median = startups[startups.len() / 2];
            self.target(
                "start-up to first healthy /readyz, existing SQLite file",
                "< 200 ms",
                format!(
                    "median {median:.1} ms, min {min:.1}, max {max:.1} ({} starts)",
                    startups.len()
                ),
                Some(max < 200.0),
            );
        }
        if let Some(max) = self.idle_rss.iter().copied().reduce(f64::max) {
            self.target(
                "RSS idle (1 s after start)",
                "< 32 MB",
                format!("{max:.1} MB (largest of {} starts)", self.idle_rss.len()),
                Some(max < 32.0),
            );
        }
    }
}
