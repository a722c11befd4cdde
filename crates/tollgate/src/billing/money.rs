//! Exact money: integer nano-dollars, parsed from and shown as decimal strings.

use std::fmt;
use std::str::FromStr;

/// Nano-dollars (1e-9 USD) in one credit (1 credit = 1 USD).
pub const NANOS_PER_CREDIT: i64 = 1_000_000_000;

/// An amount of credits held exactly as an integer number of nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Credits(i64);

/// Why a decimal amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("not a decimal number")]
    NotDecimal,
    #[error("more than 9 decimal places (the smallest unit is 0.000000001)")]
    TooPrecise,
    #[error("too large (the most is 1000000000 credits)")]
    TooLarge,
}

impl Credits {
    pub const ZERO: Credits = Credits(0);
    /// The largest amount accepted from outside (a key's `credit_limit`, a grant, an
    /// adjustment) and the most an account's grants may add up to: 10^9 credits, that is
    /// 10^18 nano-credits, about a ninth of `i64::MAX`. Sums of such amounts (grants, a
    /// limit plus a usage) then never overflow the ledger's 64-bit integer columns.
    pub const MAX_AMOUNT: Credits = Credits(1_000_000_000 * NANOS_PER_CREDIT);

    /// From a raw count of nano-dollars.
    pub const fn from_nanos(nanos: i64) -> Self {
        Credits(nanos)
    }

    /// The raw count of nano-dollars.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// The sum, or `None` if it does not fit.
    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    /// The difference, or `None` if it does not fit.
    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    /// The sum, held at the largest or smallest amount instead of overflowing.
    pub fn saturating_add(self, other: Credits) -> Credits {
        Credits(self.0.saturating_add(other.0))
    }

    /// The difference, held at the largest or smallest amount instead of overflowing.
    pub fn saturating_sub(self, other: Credits) -> Credits {
        Credits(self.0.saturating_sub(other.0))
    }

    /// Whether the amount is below zero.
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Reads an amount given from outside (the API, the command line) exactly: at most
    /// 9 decimal places and at most [`Credits::MAX_AMOUNT`] either side of zero.
    pub fn parse_amount(text: &str) -> Result<Credits, MoneyError> {
        let amount: Credits = text.parse()?;
        if amount.0.unsigned_abs() > Credits::MAX_AMOUNT.0.unsigned_abs() {
            return Err(MoneyError::TooLarge);
        }
        Ok(amount)
    }

    /// Shown with at least `min_decimals` decimals and no trailing zeros beyond them.
    pub fn to_decimal_string(self, min_decimals: usize) -> String {
        use std::fmt::Write;
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_CREDIT as u64;
        let mut frac = abs % NANOS_PER_CREDIT as u64;
        let mut decimals = 9;
        while decimals > min_decimals && frac.is_multiple_of(10) {
            frac /= 10;
            decimals -= 1;
        }
        let mut text = String::with_capacity(24);
        if self.0 < 0 {
            text.push('-');
        }
        let _ = write!(text, "{whole}");
        if decimals > 0 {
            let _ = write!(text, ".{frac:0decimals$}");
        }
        text
    }
}

/// Parses a plain decimal such as `12`, `12.5`, `-0.000000001` or `1e-3` exactly, scaled
/// by 10^`scale_digits`, with integer arithmetic only (never a float). Exponent notation
/// is accepted because JSON numbers may use it. Zeros that do not change the value are
/// no error (`0.50000000000`, `0e-99`); digits below the unit are (`TooPrecise`).
pub fn parse_decimal_nanos(text: &str, scale_digits: u32) -> Result<i128, MoneyError> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(pos) => (&text[..pos], parse_exponent(&text[pos + 1..])?),
        None => (text, 0),
    };
    let (negative, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MoneyError::NotDecimal);
    }
    // The value is `all` × 10^(exponent - decimals); scaled, × 10^scale_digits more.
    let all: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).collect();
    let (Some(first), Some(last)) = (
        all.iter().position(|&b| b != b'0'),
        all.iter().rposition(|&b| b != b'0'),
    ) else {
        return Ok(0);
    };
    // Trailing zeros move into the power, so `significant` ends in a non-zero digit and
    // a negative power means digits below the unit.
    let significant = &all[first..=last];
    let power =
        exponent - frac_part.len() as i64 + i64::from(scale_digits) + (all.len() - 1 - last) as i64;
    if power < 0 {
        return Err(MoneyError::TooPrecise);
    }
    // Fewer than 39 digits in all: below 10^38, inside i128.
    if significant.len() as i64 + power > 38 {
        return Err(MoneyError::TooLarge);
    }
    let mut value: i128 = 0;
    for &b in significant {
        value = value * 10 + i128::from(b - b'0');
    }
    for _ in 0..power {
        value *= 10;
    }
    Ok(if negative { -value } else { value })
}

/// The exponent of `1e-3`: a sign and digits; beyond ±10^7 it is held there (no such
/// power of ten makes a non-zero amount that fits, so the answer is the same).
fn parse_exponent(text: &str) -> Result<i64, MoneyError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MoneyError::NotDecimal);
    }
    const HELD: i64 = 10_000_000;
    let magnitude = digits.parse::<i64>().map_or(HELD, |m| m.min(HELD));
    Ok(if negative { -magnitude } else { magnitude })
}

impl FromStr for Credits {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let nanos = parse_decimal_nanos(text, 9)?;
        i64::try_from(nanos)
            .map(Credits)
            .map_err(|_| MoneyError::TooLarge)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("12.34".parse::<Credits>(), Ok(Credits(12_340_000_000)));
        assert_eq!("50".parse::<Credits>(), Ok(Credits(50_000_000_000)));
        assert_eq!("0.000000001".parse::<Credits>(), Ok(Credits(1)));
        assert_eq!("-1.5".parse::<Credits>(), Ok(Credits(-1_500_000_000)));
        assert_eq!("2.5e-3".parse::<Credits>(), Ok(Credits(2_500_000)));
        assert_eq!("1E2".parse::<Credits>(), Ok(Credits(100_000_000_000)));
        assert_eq!("1.5E+3".parse::<Credits>(), Ok(Credits(1_500_000_000_000)));
        assert_eq!(".5".parse::<Credits>(), Ok(Credits(500_000_000)));
        assert_eq!("0.1000000000".parse::<Credits>(), Ok(Credits(100_000_000)));
        assert_eq!(
            "12345678.123456789".parse::<Credits>(),
            Ok(Credits(12_345_678_123_456_789))
        );
        assert_eq!("1e-9".parse::<Credits>(), Ok(Credits(1)));
        assert_eq!("-0".parse::<Credits>(), Ok(Credits(0)));
        assert_eq!("0e-99999999999".parse::<Credits>(), Ok(Credits(0)));
        assert_eq!("000.000".parse::<Credits>(), Ok(Credits(0)));
    }

    #[test]
    fn zeros_that_change_nothing_are_no_error() {
        let long_tail = format!("0.5{}", "0".repeat(200));
        assert_eq!(long_tail.parse::<Credits>(), Ok(Credits(500_000_000)));
        let long_head = format!("{}7", "0".repeat(200));
        assert_eq!(long_head.parse::<Credits>(), Ok(Credits(7_000_000_000)));
        assert_eq!("70e-1".parse::<Credits>(), Ok(Credits(7_000_000_000)));
        assert_eq!("0.0000000010e0".parse::<Credits>(), Ok(Credits(1)));
    }

    #[test]
    fn refuses_what_is_not_exact() {
        assert_eq!(
            "0.0000000001".parse::<Credits>(),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(
            "12345678.1234567891".parse::<Credits>(),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!("1e-10".parse::<Credits>(), Err(MoneyError::TooPrecise));
        assert_eq!(
            "1e-99999999999".parse::<Credits>(),
            Err(MoneyError::TooPrecise)
        );
        let tiny = format!("0.{}1", "0".repeat(100));
        assert_eq!(tiny.parse::<Credits>(), Err(MoneyError::TooPrecise));
        assert_eq!("abc".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!(".".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("-".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("--1".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("1e".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("e5".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("1e+".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("1.2.3".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("1_000".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("NaN".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("inf".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("0x10".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!(
            "99999999999999999999".parse::<Credits>(),
            Err(MoneyError::TooLarge)
        );
        assert_eq!("1e999".parse::<Credits>(), Err(MoneyError::TooLarge));
        assert_eq!(
            "1e99999999999999999999".parse::<Credits>(),
            Err(MoneyError::TooLarge)
        );
        let huge = format!("1{}", "0".repeat(100));
        assert_eq!(huge.parse::<Credits>(), Err(MoneyError::TooLarge));
    }

    #[test]
    fn amounts_from_outside_stay_within_the_maximum() {
        assert_eq!(Credits::parse_amount("1000000000"), Ok(Credits::MAX_AMOUNT));
        assert_eq!(
            Credits::parse_amount("-1000000000"),
            Ok(Credits(-Credits::MAX_AMOUNT.0))
        );
        assert_eq!(
            Credits::parse_amount("1000000000.000000001"),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(
            Credits::parse_amount("-1000000000.000000001"),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(
            Credits::parse_amount("9223372036.854775807"),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(
            Credits::parse_amount("0.0000000005"),
            Err(MoneyError::TooPrecise)
        );
        // Nine maximum amounts still fit in the ledger's 64-bit columns.
        let nine = (0..9).try_fold(Credits::ZERO, |sum, _| sum.checked_add(Credits::MAX_AMOUNT));
        assert!(nine.is_some());
    }

    #[test]
    fn arithmetic_never_wraps() {
        let max = Credits(i64::MAX);
        let min = Credits(i64::MIN);
        let one = Credits(1);
        assert_eq!(max.checked_add(one), None);
        assert_eq!(min.checked_sub(one), None);
        assert_eq!(max.checked_sub(one), Some(Credits(i64::MAX - 1)));
        assert_eq!(max.saturating_add(one), max);
        assert_eq!(max.saturating_add(max), max);
        assert_eq!(min.saturating_sub(one), min);
        assert_eq!(Credits::ZERO.saturating_sub(max), Credits(-i64::MAX));
        assert_eq!(min.saturating_sub(max), min);
        assert_eq!(min.saturating_add(max), Credits(-1));
    }

    #[test]
    fn shows_decimal_strings() {
        assert_eq!(Credits(125_500_000_000).to_string(), "125.50");
        assert_eq!(Credits(0).to_string(), "0.00");
        assert_eq!(Credits(1).to_string(), "0.000000001");
        assert_eq!(Credits(-2_000_000_000).to_string(), "-2.00");
        assert_eq!(Credits(25_000_000_000).to_decimal_string(1), "25.0");
        assert_eq!(Credits(3_000_000_000).to_decimal_string(0), "3");
        assert_eq!(Credits(-1_230_000_000).to_decimal_string(0), "-1.23");
        assert_eq!(
            Credits(i64::MIN).to_decimal_string(0),
            "-9223372036.854775808"
        );
        assert_eq!(Credits(i64::MAX).to_string(), "9223372036.854775807");
    }

    #[test]
    fn every_shown_amount_reads_back_the_same() {
        for nanos in [
            0,
            1,
            -1,
            12_345_678_123_456_789,
            i64::MAX,
            i64::MIN,
            Credits::MAX_AMOUNT.0,
            999_999_999,
        ] {
            for min_decimals in [0, 1, 2, 9] {
                let text = Credits(nanos).to_decimal_string(min_decimals);
                assert_eq!(text.parse::<Credits>(), Ok(Credits(nanos)), "{text}");
            }
        }
    }
}
