//! Result tables (Markdown, so a run can be pasted into `docs/benchmarks.md` as it is)
//! and the targets of issue 6, each marked met or missed.

use std::fmt::Write as _;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// One printed table: a title, column heads, and rows of cells.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub note: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, note: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            note: note.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, label: &str, cells: Vec<String>) {
        let mut row = vec![label.to_string()];
        row.extend(cells);
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(cell.chars().count());
                if i == 0 {
                    let _ = write!(s, " {cell}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(s, " {}{cell} |", " ".repeat(pad));
                }
            }
            s
        };
        let mut out = format!("### {}\n\n", self.title);
        if !self.note.is_empty() {
            let _ = writeln!(out, "{}\n", self.note);
        }
        let _ = writeln!(out, "{}", line(&self.columns));
        let mut rule = String::from("|");
        for (i, w) in widths.iter().enumerate() {
            if i == 0 {
                let _ = write!(rule, "{}|", "-".repeat(w + 2));
            } else {
                let _ = write!(rule, "{}:|", "-".repeat(w + 1));
            }
        }
        let _ = writeln!(out, "{rule}");
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

/// A number with `decimals` places, or `n/a`.
pub fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => {
            if decimals == 0 {
                group_thousands(v.round() as i64)
            } else {
                format!("{v:.decimals$}")
            }
        }
        _ => "n/a".to_string(),
    }
}

/// `b - a` with a sign, or `n/a`.
pub fn diff(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() => {
            let d = b - a;
            let sign = if d >= 0.0 { "+" } else { "-" };
            format!("{sign}{}", num(Some(d.abs()), decimals))
        }
        _ => "n/a".to_string(),
    }
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A target of issue 6 and how this run did.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub limit: String,
    pub measured: String,
    pub met: Option<bool>,
}

pub fn targets_table(targets: &[Target]) -> Table {
    let mut t = Table::new(
        "Targets (issue 6)",
        "",
        &["target", "limit", "measured", "result"],
    );
    for target in targets {
        t.row(
            &target.name,
            vec![
                target.limit.clone(),
                target.measured.clone(),
                match target.met {
                    Some(true) => "met".into(),
                    Some(false) => "MISSED".into(),
                    None => "not measured".into(),
                },
            ],
        );
    }
    t
}
