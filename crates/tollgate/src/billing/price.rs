//! Prices of a model and the exact cost of one request's usage.

use serde::Serialize;

use super::money::{parse_decimal_nanos, Credits, MoneyError};

/// A price in femto-dollars (1e-15 USD) per unit, so per-token prices stay integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitPrice(i64);

const FEMTOS_PER_NANO: i128 = 1_000_000;

impl UnitPrice {
    /// From USD per million units, e.g. `"0.40"` per million tokens.
    pub fn per_million(text: &str) -> Result<Self, MoneyError> {
        Self::from_scaled(parse_decimal_nanos(text, 9)?)
    }

    /// From USD per single unit, e.g. `"0.04"` per image.
    pub fn per_unit(text: &str) -> Result<Self, MoneyError> {
        Self::from_scaled(parse_decimal_nanos(text, 15)?)
    }

    fn from_scaled(value: i128) -> Result<Self, MoneyError> {
        if value < 0 {
            return Err(MoneyError::NotDecimal);
        }
        i64::try_from(value)
            .map(UnitPrice)
            .map_err(|_| MoneyError::TooLarge)
    }

    pub fn femtos(self) -> i64 {
        self.0
    }

    /// USD per unit as an exact decimal string (for `/v1/models`).
    pub fn usd_per_unit(self) -> String {
        let whole = self.0 / 1_000_000_000_000_000;
        let mut frac = format!("{:015}", self.0 % 1_000_000_000_000_000);
        while frac.ends_with('0') {
            frac.pop();
        }
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    }
}

/// A hosted tool whose provider charges per call, on top of the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostedTool {
    WebSearch,
    FileSearch,
    CodeInterpreter,
    ImageGeneration,
}

impl HostedTool {
    pub const ALL: [HostedTool; 4] = [
        HostedTool::WebSearch,
        HostedTool::FileSearch,
        HostedTool::CodeInterpreter,
        HostedTool::ImageGeneration,
    ];

    /// The name of its price in the catalog (`pricing.web_search` ...).
    pub fn name(self) -> &'static str {
        match self {
            HostedTool::WebSearch => "web_search",
            HostedTool::FileSearch => "file_search",
            HostedTool::CodeInterpreter => "code_interpreter",
            HostedTool::ImageGeneration => "image_generation",
        }
    }

    /// Its position in per-tool arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a model charges, per endpoint kind. Absent prices are not charged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricing {
    pub input: Option<UnitPrice>,
    pub cached_input: Option<UnitPrice>,
    pub cache_write: Option<UnitPrice>,
    pub output: Option<UnitPrice>,
    pub per_image: Option<UnitPrice>,
    pub per_request: Option<UnitPrice>,
    pub per_audio_second: Option<UnitPrice>,
    pub per_character: Option<UnitPrice>,
    /// Per call of each hosted tool, by [`HostedTool::index`].
    pub tool_calls: [Option<UnitPrice>; 4],
}

/// Billable quantities of one request. `input_tokens` counts all input tokens,
/// including the cached and cache-write ones also counted separately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// The part of `output_tokens` spent reasoning (metrics only: priced as output).
    pub reasoning_tokens: u64,
    pub images: u64,
    pub audio_seconds: u64,
    pub characters: u64,
    /// Calls of each hosted tool, by [`HostedTool::index`].
    pub tool_calls: [u64; 4],
}

impl Pricing {
    /// Exact cost of `usage`, rounded up to the next nano-dollar once per request.
    pub fn cost(&self, usage: &Usage) -> Credits {
        let price = |p: Option<UnitPrice>| i128::from(p.map_or(0, UnitPrice::femtos));
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let cache_write = usage.cache_write_tokens.min(usage.input_tokens - cached);
        let uncached = usage.input_tokens - cached - cache_write;
        let cached_price = price(self.cached_input.or(self.input));
        let cache_write_price = price(self.cache_write.or(self.input));
        let femtos: i128 = i128::from(uncached) * price(self.input)
            + i128::from(cached) * cached_price
            + i128::from(cache_write) * cache_write_price
            + i128::from(usage.output_tokens) * price(self.output)
            + i128::from(usage.images) * price(self.per_image)
            + i128::from(usage.audio_seconds) * price(self.per_audio_second)
            + i128::from(usage.characters) * price(self.per_character)
            + usage
                .tool_calls
                .iter()
                .zip(self.tool_calls)
                .map(|(calls, fee)| i128::from(*calls) * price(fee))
                .sum::<i128>()
            + price(self.per_request);
        let nanos = (femtos + FEMTOS_PER_NANO - 1) / FEMTOS_PER_NANO;
        Credits::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(
            UnitPrice::per_million("0.40").map(UnitPrice::femtos),
            Ok(400_000_000)
        );
        assert_eq!(
            UnitPrice::per_unit("0.04").map(UnitPrice::femtos),
            Ok(40_000_000_000_000)
        );
        assert_eq!(
            UnitPrice::per_million("1.50").map(|p| p.usd_per_unit()),
            Ok("0.0000015".to_string())
        );
        assert!(UnitPrice::per_million("-1").is_err());
    }

    #[test]
    fn cost_is_exact_and_rounds_up_once() {
        let pricing = Pricing {
            input: UnitPrice::per_million("0.40").ok(),
            cached_input: UnitPrice::per_million("0.10").ok(),
            output: UnitPrice::per_million("1.60").ok(),
            ..Pricing::default()
        };
        let usage = Usage {
            input_tokens: 1000,
            cached_input_tokens: 200,
            output_tokens: 50,
            ..Usage::default()
        };
        // (800 * 0.40 + 200 * 0.10 + 50 * 1.60) / 1e6 USD = 0.00042 USD
        assert_eq!(pricing.cost(&usage).nanos(), 420_000);
        let tiny = Usage {
            input_tokens: 1,
            ..Usage::default()
        };
        let cheap = Pricing {
            input: UnitPrice::per_million("0.0375").ok(),
            ..Pricing::default()
        };
        // 0.0375 USD per million tokens is 37.5 nano-dollars a token: rounded up to 38.
        assert_eq!(cheap.cost(&tiny).nanos(), 38);
        let per_image = Pricing {
            per_image: UnitPrice::per_unit("0.04").ok(),
            per_request: UnitPrice::per_unit("0.001").ok(),
            ..Pricing::default()
        };
        let images = Usage {
            images: 3,
            ..Usage::default()
        };
        assert_eq!(per_image.cost(&images).nanos(), 121_000_000);
    }
}
