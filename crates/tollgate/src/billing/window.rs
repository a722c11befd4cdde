//! Budget windows: a key's `credit_limit` may reset every day, week or month (00:00 UTC,
//! weeks Monday to Sunday, calendar months). A charge belongs to the window its request
//! was reserved in, so a request that straddles a boundary is counted in the window it
//! started in, and a window's usage is the sum of the daily roll-up's days in it.

use time::{Date, Duration, Month, OffsetDateTime, Time};

/// How often a key's limit starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitReset {
    Daily,
    Weekly,
    Monthly,
}

impl LimitReset {
    /// Every kind, in the order of [`Tallies`].
    pub const ALL: [LimitReset; 3] = [LimitReset::Daily, LimitReset::Weekly, LimitReset::Monthly];

    /// The API's (and the database's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReset::Daily => "daily",
            LimitReset::Weekly => "weekly",
            LimitReset::Monthly => "monthly",
        }
    }

    pub fn parse(text: &str) -> Option<LimitReset> {
        match text {
            "daily" => Some(LimitReset::Daily),
            "weekly" => Some(LimitReset::Weekly),
            "monthly" => Some(LimitReset::Monthly),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            LimitReset::Daily => 0,
            LimitReset::Weekly => 1,
            LimitReset::Monthly => 2,
        }
    }

    /// The window holding the unix time `at`.
    pub fn window_at(self, at: i64) -> Window {
        let date = date_of(at);
        let start = match self {
            LimitReset::Daily => date,
            LimitReset::Weekly => {
                date - Duration::days(i64::from(date.weekday().number_days_from_monday()))
            }
            LimitReset::Monthly => {
                Date::from_calendar_date(date.year(), date.month(), 1).unwrap_or(date)
            }
        };
        Window { reset: self, start }
    }
}

/// One window of one kind: the first day of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub reset: LimitReset,
    pub start: Date,
}

impl Window {
    /// The first day of the next window.
    pub fn end(&self) -> Date {
        match self.reset {
            LimitReset::Daily => self.start + Duration::days(1),
            LimitReset::Weekly => self.start + Duration::days(7),
            LimitReset::Monthly => {
                let (year, month) = match self.start.month() {
                    Month::December => (self.start.year() + 1, Month::January),
                    m => (self.start.year(), m.next()),
                };
                Date::from_calendar_date(year, month, 1).unwrap_or(self.start)
            }
        }
    }

    /// The unix time the next window starts (when the limit resets).
    pub fn resets_at(&self) -> i64 {
        unix_of(self.end())
    }

    /// A short name of the window (`d2027-01-31`, `w2027-01-25`, `m2027-01`), part of a
    /// shared budget's identity in Redis.
    pub fn tag(&self) -> String {
        match self.reset {
            LimitReset::Daily => format!("d{}", self.start),
            LimitReset::Weekly => format!("w{}", self.start),
            LimitReset::Monthly => {
                format!(
                    "m{:04}-{:02}",
                    self.start.year(),
                    u8::from(self.start.month())
                )
            }
        }
    }

    /// The first day of the window as the roll-up writes days (YYYY-MM-DD).
    pub fn first_day(&self) -> String {
        self.start.to_string()
    }

    /// Whether the roll-up's `day` (YYYY-MM-DD) is in this window.
    pub fn holds_day(&self, day: &str) -> bool {
        let (first, end) = (self.start.to_string(), self.end().to_string());
        day >= first.as_str() && day < end.as_str()
    }
}

/// The earliest first day of the windows holding `at` (the week's or the month's): a key's
/// window usages are the roll-up's days from it on.
pub fn earliest_start(at: i64) -> String {
    let week = LimitReset::Weekly.window_at(at).start;
    let month = LimitReset::Monthly.window_at(at).start;
    week.min(month).to_string()
}

/// A key's charges in the current window of each kind (daily, weekly, monthly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowUsage(pub [i64; 3]);

impl WindowUsage {
    /// Sums per-day costs `(day, cost)` into the windows holding `at`.
    pub fn from_days<'a>(at: i64, days: impl IntoIterator<Item = (&'a str, i64)>) -> Self {
        let windows = LimitReset::ALL.map(|r| r.window_at(at));
        let mut sums = [0i64; 3];
        for (day, cost) in days {
            for (sum, window) in sums.iter_mut().zip(&windows) {
                if window.holds_day(day) {
                    *sum = sum.saturating_add(cost);
                }
            }
        }
        WindowUsage(sums)
    }

    pub fn of(&self, reset: LimitReset) -> i64 {
        self.0[reset.index()]
    }
}

/// What the meter keeps of one key for each kind of window: the window it counts, what
/// was charged in it and what requests reserved in it still hold. Kept for every kind
/// whatever the key's `limit_reset`, so a change of it needs no reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub window: Window,
    pub used: i64,
    pub reserved: i64,
}

/// The three tallies of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tallies(pub [Tally; 3]);

impl Tallies {
    /// The tallies at `at`, from the window usages read then.
    pub fn new(at: i64, usage: WindowUsage) -> Tallies {
        Tallies(LimitReset::ALL.map(|r| Tally {
            window: r.window_at(at),
            used: usage.of(r),
            reserved: 0,
        }))
    }

    /// The tally of `reset` at `at`: a window that ended starts the next one empty
    /// (every charge of a window is counted where its request was reserved).
    pub fn current(&mut self, reset: LimitReset, at: i64) -> &mut Tally {
        let window = reset.window_at(at);
        let tally = &mut self.0[reset.index()];
        if tally.window.start < window.start {
            *tally = Tally {
                window,
                used: 0,
                reserved: 0,
            };
        }
        tally
    }

    /// Holds `amount` in every window holding `at`.
    pub fn reserve(&mut self, at: i64, amount: i64) {
        for reset in LimitReset::ALL {
            self.current(reset, at).reserved += amount;
        }
    }

    /// Replaces a reservation made at `at` by its cost, in the windows it was made in
    /// (a window that has ended since is left alone: it is no longer counted).
    pub fn settle(&mut self, at: i64, amount: i64, cost: i64) {
        for reset in LimitReset::ALL {
            let window = reset.window_at(at);
            let tally = &mut self.0[reset.index()];
            if tally.window == window {
                tally.reserved -= amount;
                tally.used = tally.used.saturating_add(cost);
            }
        }
    }
}

fn date_of(at: i64) -> Date {
    OffsetDateTime::from_unix_timestamp(at)
        .map(OffsetDateTime::date)
        .unwrap_or(Date::MIN)
}

fn unix_of(date: Date) -> i64 {
    date.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        crate::parse_rfc3339(text).expect("time")
    }

    #[test]
    fn windows_start_at_midnight_utc_on_mondays_and_first_days() {
        let sunday = at("2026-11-29T23:59:59Z");
        let monday = at("2026-11-30T00:00:00Z");
        assert_eq!(LimitReset::Daily.window_at(sunday).tag(), "d2026-11-29");
        assert_eq!(LimitReset::Weekly.window_at(sunday).tag(), "w2026-11-23");
        assert_eq!(LimitReset::Weekly.window_at(monday).tag(), "w2026-11-30");
        assert_eq!(
            LimitReset::Weekly.window_at(sunday).resets_at(),
            monday,
            "a week ends at Monday 00:00"
        );
        assert_eq!(
            LimitReset::Daily.window_at(monday).resets_at(),
            at("2026-12-01T00:00:00Z")
        );
        let jan31 = at("2028-01-31T23:59:00Z");
        let m = LimitReset::Monthly.window_at(jan31);
        assert_eq!(m.tag(), "m2028-01");
        assert_eq!(m.resets_at(), at("2028-02-01T00:00:00Z"));
        let feb = LimitReset::Monthly.window_at(at("2028-02-15T00:00:00Z"));
        assert_eq!(feb.resets_at(), at("2028-03-01T00:00:00Z"));
        assert!(feb.holds_day("2028-02-29"), "leap day is in February 2028");
        assert!(!LimitReset::Monthly
            .window_at(at("2027-02-15T00:00:00Z"))
            .holds_day("2027-03-01"));
        let dec = LimitReset::Monthly.window_at(at("2026-12-31T12:00:00Z"));
        assert_eq!(dec.resets_at(), at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn usage_is_summed_per_window_and_tallies_roll_over() {
        let now = at("2026-12-02T10:00:00Z"); // a Wednesday
        let days = [
            ("2026-11-29", 5),
            ("2026-11-30", 7),
            ("2026-12-01", 11),
            ("2026-12-02", 13),
        ];
        let usage = WindowUsage::from_days(now, days.iter().map(|(d, c)| (*d, *c)));
        assert_eq!(usage.0, [13, 7 + 11 + 13, 11 + 13]);
        assert_eq!(earliest_start(now), "2026-11-30");

        let mut tallies = Tallies::new(now, usage);
        tallies.reserve(now, 100);
        assert_eq!(tallies.current(LimitReset::Daily, now).reserved, 100);
        // Straddling midnight: reserved on the 2nd, settled on the 3rd.
        let next_day = at("2026-12-03T00:00:00Z");
        assert_eq!(tallies.current(LimitReset::Daily, next_day).used, 0);
        tallies.settle(now, 100, 40);
        assert_eq!(tallies.current(LimitReset::Daily, next_day).used, 0);
        assert_eq!(tallies.current(LimitReset::Daily, next_day).reserved, 0);
        assert_eq!(tallies.current(LimitReset::Weekly, next_day).used, 31 + 40);
        assert_eq!(tallies.current(LimitReset::Monthly, next_day).reserved, 0);
    }
}
