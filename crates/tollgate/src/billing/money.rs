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
    #[error("too large")]
    TooLarge,
}

impl Credits {
    pub const ZERO: Credits = Credits(0);

    /// From a raw count of nano-dollars.
    pub const fn from_nanos(nanos: i64) -> Self {
        Credits(nanos)
    }

    /// The raw count of nano-dollars.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    pub fn saturating_add(self, other: Credits) -> Credits {
        Credits(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Credits) -> Credits {
        Credits(self.0.saturating_sub(other.0))
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
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

/// Parses a plain decimal such as `12`, `12.5`, `-0.000000001` or `1e-3` exactly.
/// Exponent notation is accepted because JSON numbers may use it.
pub fn parse_decimal_nanos(text: &str, scale_digits: u32) -> Result<i128, MoneyError> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(pos) => {
            let exp: i32 = text[pos + 1..]
                .parse()
                .map_err(|_| MoneyError::NotDecimal)?;
            (&text[..pos], exp)
        }
        None => (text, 0),
    };
    let (negative, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MoneyError::NotDecimal);
    }
    if exponent.unsigned_abs() > 40 || int_part.len() + frac_part.len() > 60 {
        return Err(MoneyError::TooLarge);
    }
    // value = int_part.frac_part * 10^exponent, scaled by 10^scale_digits.
    let all_digits = format!("{int_part}{frac_part}");
    let shift = scale_digits as i32 + exponent - frac_part.len() as i32;
    let significant = all_digits.trim_start_matches('0');
    let mut value: i128 = 0;
    for b in significant.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or(MoneyError::TooLarge)?;
    }
    if shift >= 0 {
        for _ in 0..shift {
            value = value.checked_mul(10).ok_or(MoneyError::TooLarge)?;
        }
    } else {
        for _ in 0..(-shift) {
            if value % 10 != 0 {
                return Err(MoneyError::TooPrecise);
            }
            value /= 10;
        }
    }
    Ok(if negative { -value } else { value })
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
        assert_eq!(".5".parse::<Credits>(), Ok(Credits(500_000_000)));
        assert_eq!("0.1000000000".parse::<Credits>(), Ok(Credits(100_000_000)));
    }

    #[test]
    fn refuses_what_is_not_exact() {
        assert_eq!(
            "0.0000000001".parse::<Credits>(),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!("abc".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("1.2.3".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!("NaN".parse::<Credits>(), Err(MoneyError::NotDecimal));
        assert_eq!(
            "99999999999999999999".parse::<Credits>(),
            Err(MoneyError::TooLarge)
        );
        assert_eq!("1e999".parse::<Credits>(), Err(MoneyError::TooLarge));
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
    }
}
