//! One side of a comparison (what the load generator saw, CPU and memory) and the comparison table.

#[allow(unused_imports)]
use super::*;

pub(super) fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// CPU and peak RSS of some processes over one run.
pub(super) struct Probe {
    pub(super) groups: Vec<Vec<u32>>,
    pub(super) cpu_before: Vec<f64>,
}

impl Probe {
    pub(super) fn start(groups: Vec<Vec<u32>>) -> Probe {
        for g in &groups {
            for pid in g {
                let _ = procs::reset_peak(*pid);
            }
        }
        let cpu_before = groups.iter().map(|g| procs::group_cpu_seconds(g)).collect();
        Probe { groups, cpu_before }
    }

    /// Per group: CPU seconds used, peak RSS in MB.
    pub(super) fn finish(self) -> Vec<(f64, f64)> {
        self.groups
            .iter()
            .zip(self.cpu_before)
            .map(|(g, before)| {
                (
                    procs::group_cpu_seconds(g) - before,
                    mb(procs::group_peak(g)),
                )
            })
            .collect()
    }
}

/// One side of a comparison: what the load generator saw plus CPU and memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side {
    pub(super) latency: Latency,
    pub(super) rps: f64,
    pub(super) cpu_us_per_request: f64,
    pub(super) peak_rss_mb: f64,
    /// Peak RSS of the first process group alone (Tollgate's, through Tollgate).
    pub(super) own_peak_mb: f64,
    pub(super) completed: u64,
    pub(super) failed: u64,
}

impl Side {
    pub(super) fn new(
        latency: Latency,
        rps: f64,
        completed: u64,
        failed: u64,
        measured: &[(f64, f64)],
    ) -> Side {
        let cpu: f64 = measured.iter().map(|(c, _)| c).sum();
        Side {
            latency,
            rps,
            cpu_us_per_request: cpu * 1e6 / (completed.max(1) as f64),
            peak_rss_mb: measured.iter().map(|(_, r)| r).sum(),
            own_peak_mb: measured.first().map_or(f64::NAN, |m| m.1),
            completed,
            failed,
        }
    }
}

/// Rows shared by every comparison table: `sides[0]` is the baseline.
pub(super) fn comparison(
    title: &str,
    note: &str,
    heads: &[&str],
    sides: &[Side],
    extra: &[usize],
) -> Table {
    // Columns: label, then each side, with a "+/-" column after each side listed in `extra`.
    let mut columns = vec!["metric"];
    let mut plan: Vec<(usize, bool)> = Vec::new();
    for (i, head) in heads.iter().enumerate() {
        columns.push(head);
        plan.push((i, false));
        if extra.contains(&i) {
            columns.push("difference");
            plan.push((i, true));
        }
    }
    let mut t = Table::new(title, note, &columns);
    let base = sides[0];
    let row = |t: &mut Table, label: &str, get: &dyn Fn(&Side) -> f64, d: usize| {
        let cells = plan
            .iter()
            .map(|(i, is_diff)| {
                if *is_diff {
                    diff(Some(get(&base)), Some(get(&sides[*i])), d)
                } else {
                    num(Some(get(&sides[*i])), d)
                }
            })
            .collect();
        t.row(label, cells);
    };
    row(&mut t, "p50 latency (ms)", &|s| s.latency.p50_ms, 3);
    row(&mut t, "p99 latency (ms)", &|s| s.latency.p99_ms, 3);
    row(&mut t, "p99.9 latency (ms)", &|s| s.latency.p999_ms, 3);
    row(&mut t, "requests/s", &|s| s.rps, 0);
    row(&mut t, "CPU per request (µs)", &|s| s.cpu_us_per_request, 1);
    row(&mut t, "peak RSS (MB)", &|s| s.peak_rss_mb, 1);
    row(&mut t, "failed requests", &|s| s.failed as f64, 0);
    t
}
