//! Counters near the 64-bit limit: reads that survive a counter that is not an integer
//! (an older version let SQLite turn overflowing sums into REALs), the activity roll-up
//! summed here when the database's own `SUM` overflows, and the once-per-row report of
//! such rows. The writers hold every counter within i64 in their SQL (`saturating_add!`
//! in each backend), so no new such row is made.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{ActivityRollup, KeyId, StoreError, UsageTotals};

/// One row of the daily roll-up (`usage_daily`) with its key's name.
pub(super) struct DailyRow {
    pub day: String,
    pub model: String,
    pub key_id: i64,
    pub key_name: String,
    pub totals: UsageTotals,
}

impl ActivityRollup {
    /// The roll-up of raw daily rows, grouped here with every sum held at the 64-bit
    /// limits: the way round a database whose own `SUM` overflowed (SQLite's raises an
    /// error), so an account whose counters reached the limit still has its activity.
    pub(super) fn of_rows(rows: impl IntoIterator<Item = DailyRow>) -> ActivityRollup {
        use std::collections::BTreeMap;
        let mut days: BTreeMap<String, UsageTotals> = BTreeMap::new();
        let mut models: BTreeMap<String, UsageTotals> = BTreeMap::new();
        let mut keys: BTreeMap<i64, (String, UsageTotals)> = BTreeMap::new();
        for row in rows {
            let day = days.entry(row.day).or_default();
            *day = day.saturating_add(&row.totals);
            let model = models.entry(row.model).or_default();
            *model = model.saturating_add(&row.totals);
            let key = keys
                .entry(row.key_id)
                .or_insert((row.key_name, UsageTotals::default()));
            key.1 = key.1.saturating_add(&row.totals);
        }
        let mut models: Vec<_> = models.into_iter().collect();
        // Most expensive first; ties by name (byte order), then by id: stable sorts of
        // lists already in name or id order.
        models.sort_by_key(|(_, totals)| std::cmp::Reverse(totals.cost));
        let mut keys: Vec<_> = keys
            .into_iter()
            .map(|(id, (name, totals))| (KeyId(id), name, totals))
            .collect();
        keys.sort_by_key(|(_, _, totals)| std::cmp::Reverse(totals.cost));
        ActivityRollup {
            days: days.into_iter().collect(),
            models,
            keys,
        }
    }
}

/// Logs a row whose counters cannot be read as they are (a money column an older version
/// let overflow into a REAL, or sums past the 64-bit limit), once per row and process:
/// the row is read as well as it can be, and an account endpoint that shows it keeps
/// answering without filling the log at every request.
pub(super) fn report_corrupt(table: &str, id: i64, column: &str, found: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    /// Rows reported so far; past this many, reports are no longer remembered (a badly
    /// damaged database must not grow this set without bound).
    const REMEMBERED: usize = 10_000;
    static REPORTED: OnceLock<Mutex<HashSet<(String, i64, String)>>> = OnceLock::new();
    let mut reported = REPORTED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let entry = (table.to_string(), id, column.to_string());
    if reported.contains(&entry) {
        return;
    }
    if reported.len() < REMEMBERED {
        reported.insert(entry);
    }
    tracing::error!(
        table,
        id,
        column,
        found,
        "ledger counter out of range: read as the nearest 64-bit integer, held at the limit (a counter that is not an integer is mended by its next charge)"
    );
}

/// A column that must hold an integer. A value that is not one (an older version let
/// counters overflow into REALs) is read as the nearest integer within i64 and reported
/// once, so one bad row cannot make every read of its account fail.
pub(super) fn integer(
    row: &SqliteRow,
    column: &str,
    table: &str,
    id: i64,
) -> Result<i64, StoreError> {
    match row.try_get::<i64, _>(column) {
        Ok(value) => Ok(value),
        Err(sqlx::Error::ColumnDecode { .. }) => {
            // `as` holds a float within i64 (and reads NaN as 0).
            let (value, found) = match row.try_get::<f64, _>(column) {
                Ok(real) => (real as i64, format!("REAL {real}")),
                Err(_) => match row.try_get::<String, _>(column) {
                    Ok(text) => (
                        text.trim().parse::<f64>().map_or(0, |v| v as i64),
                        format!("TEXT {:?}", text.chars().take(40).collect::<String>()),
                    ),
                    Err(_) => (0, "neither a number nor text".to_string()),
                },
            };
            report_corrupt(table, id, column, &found);
            Ok(value)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether SQLite refused a query because a `SUM` went past the 64-bit limit.
pub(super) fn sum_overflowed(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("integer overflow"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::report_corrupt;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_corrupt_row_is_reported_once() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                report_corrupt("accounts", -17, "charged", "REAL 2e19");
            }
            report_corrupt("api_keys", -17, "usage", "REAL 2e19");
        });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.contains("table=\"accounts\"") || text.contains("table=accounts"),
            "{text}"
        );
    }
}
