//! Prices and the cost of a request, in integer units (never floats).
//!
//! Prices are configured in USD per million tokens, the unit every provider's price list uses,
//! and stored as integer micro-dollars per million tokens (= pico-dollars per token). Costs are
//! integer nano-dollars: exact for any price with at most six decimals of a dollar per million
//! tokens, and 1,000 times finer than the micro-dollar the ledger must be exact to.

use std::fmt;

/// An amount of money in nano-dollars (1e-9 USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NanoUsd(pub u64);

impl NanoUsd {
    /// The amount in USD, for display and JSON only (lossy above 2^53 nano-dollars ≈ $9M).
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Saturating sum.
    pub fn saturating_add(self, other: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for NanoUsd {
    /// Decimal USD with trailing zeros trimmed, e.g. `0.0033792`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1_000_000_000;
        let frac = self.0 % 1_000_000_000;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:09}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A per-token price: micro-dollars per million tokens (equivalently pico-dollars per token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PerMillion(pub u64);

impl PerMillion {
    /// Converts a price in USD per million tokens, as written in configs and price lists.
    ///
    /// Returns `None` for a negative, non-finite or absurd (over $1,000,000 per million tokens)
    /// price. Rounds to the nearest micro-dollar per million tokens.
    pub fn from_usd(usd_per_million: f64) -> Option<PerMillion> {
        if !usd_per_million.is_finite() || !(0.0..=1e6).contains(&usd_per_million) {
            return None;
        }
        Some(PerMillion((usd_per_million * 1e6).round() as u64))
    }

    /// The price in USD per million tokens.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// Cost of `tokens` tokens, in pico-dollars.
    fn pico(self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.0)
    }
}

/// A model's prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    /// Uncached input tokens.
    pub input: PerMillion,
    /// Input tokens read from the provider's prompt cache.
    pub cached_input: PerMillion,
    /// Input tokens written to the provider's prompt cache (Anthropic bills them at 1.25× input
    /// for the 5-minute cache; <https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching>).
    pub cache_write: PerMillion,
    /// Output tokens (reasoning tokens included: providers bill them as output).
    pub output: PerMillion,
}

/// Token counts of one call, normalised across providers.
///
/// Follows OpenAI's convention: `input` counts every prompt token, cached ones included, and
/// `output` every generated token, reasoning ones included; `cached_input` and `reasoning` are
/// parts of those totals, never additions to them (shared case C27).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens.
    pub input: u64,
    /// The part of `input` read from the prompt cache.
    pub cached_input: u64,
    /// The part of `input` written to the prompt cache.
    pub cache_write: u64,
    /// All output tokens.
    pub output: u64,
    /// The part of `output` spent on hidden reasoning.
    pub reasoning: u64,
}

impl TokenUsage {
    /// Normalises OpenAI's `usage`.
    pub fn from_openai(u: &crate::openai::Usage) -> TokenUsage {
        TokenUsage {
            input: u.prompt_tokens,
            cached_input: u.cached_tokens().min(u.prompt_tokens),
            cache_write: 0,
            output: u.completion_tokens,
            reasoning: u.reasoning_tokens().min(u.completion_tokens),
        }
    }

    /// Normalises Anthropic's `usage`, whose `input_tokens` excludes cache reads and writes:
    /// all three are input here, and cache reads are the cached part. Thinking is already inside
    /// `output_tokens` (shared case C27 point 5).
    pub fn from_anthropic(u: &crate::anthropic::Usage) -> TokenUsage {
        let read = u.cache_read_input_tokens.unwrap_or(0);
        let write = u.cache_creation_input_tokens.unwrap_or(0);
        TokenUsage {
            input: u.input_tokens + read + write,
            cached_input: read,
            cache_write: write,
            output: u.output_tokens,
            reasoning: 0,
        }
    }

    /// Input plus output tokens: what counts against token budgets.
    pub fn total(&self) -> u64 {
        self.input + self.output
    }
}

impl Price {
    /// Cost of `usage` at these prices, rounded to the nearest nano-dollar.
    ///
    /// `(input − cached − written) × input + cached × cached_input + written × cache_write +
    /// output × output`, per million tokens. Reasoning tokens are already inside `output` and
    /// are not added again.
    pub fn cost(&self, usage: &TokenUsage) -> NanoUsd {
        let cached = usage.cached_input.min(usage.input);
        let written = usage.cache_write.min(usage.input - cached);
        let pico = self.input.pico(usage.input - cached - written)
            + self.cached_input.pico(cached)
            + self.cache_write.pico(written)
            + self.output.pico(usage.output);
        let nanos = (pico + 500) / 1000;
        NanoUsd(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Blended price used to order models of one tier: input + output per million tokens.
    pub fn blended(&self) -> u64 {
        self.input.0.saturating_add(self.output.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, cached: f64, output: f64) -> Price {
        Price {
            input: PerMillion::from_usd(input).unwrap(),
            cached_input: PerMillion::from_usd(cached).unwrap(),
            cache_write: PerMillion::from_usd(input * 1.25).unwrap(),
            output: PerMillion::from_usd(output).unwrap(),
        }
    }

    /// Shared case C27: reasoning tokens are a part of completion tokens, billed once.
    #[test]
    fn reasoning_tokens_are_not_billed_twice() {
        let p = price(1.10, 0.55, 4.40);
        let u = TokenUsage { input: 2008, cached_input: 0, output: 266, reasoning: 261, ..Default::default() };
        let c = p.cost(&u);
        assert_eq!(c, NanoUsd(3_379_200));
        assert_eq!(c.to_string(), "0.0033792");
        assert_eq!(u.total(), 2274);
    }

    #[test]
    fn cached_tokens_use_their_own_price() {
        // 1,000 uncached at $3 + 1,800 cached at $0.30 + 12 output at $15, per million.
        let p = price(3.0, 0.30, 15.0);
        let u = TokenUsage { input: 2800, cached_input: 1800, output: 12, reasoning: 0, ..Default::default() };
        assert_eq!(p.cost(&u), NanoUsd(3_000 * 1000 + 540 * 1000 + 180 * 1000));
        assert_eq!(p.cost(&u).to_string(), "0.00372");
    }

    #[test]
    fn budget_race_case_prices() {
        // Shared case C29: 100 in at $1 + 100 out at $3 per million = $0.0004.
        let p = price(1.0, 1.0, 3.0);
        let u = TokenUsage { input: 100, cached_input: 0, output: 100, reasoning: 0, ..Default::default() };
        assert_eq!(p.cost(&u).to_string(), "0.0004");
    }

    /// Anthropic cache writes at 1.25× input: 1,000 written + 200 uncached at $3, 50 out at $15.
    #[test]
    fn cache_writes_use_their_own_price() {
        let p = price(3.0, 0.30, 15.0);
        let u = TokenUsage { input: 1200, cached_input: 0, cache_write: 1000, output: 50, reasoning: 0 };
        assert_eq!(p.cost(&u), NanoUsd(200 * 3000 + 1000 * 3750 + 50 * 15000));
        let from = TokenUsage::from_anthropic(&serde_json::from_str(r#"{"input_tokens":200,"cache_creation_input_tokens":1000,"cache_read_input_tokens":0,"output_tokens":50}"#).unwrap());
        assert_eq!(from, u);
    }

    #[test]
    fn bad_prices_are_rejected() {
        assert_eq!(PerMillion::from_usd(-1.0), None);
        assert_eq!(PerMillion::from_usd(f64::NAN), None);
        assert_eq!(PerMillion::from_usd(0.075), Some(PerMillion(75_000)));
    }

    #[test]
    fn rounding_is_to_nearest_nano() {
        // $0.0004 per million = 400 pico-dollars a token → 0.4 nano → 0; $0.0015 → 1.5 nano → 2.
        let one = TokenUsage { input: 1, ..Default::default() };
        assert_eq!(price(0.0004, 0.0, 0.0).cost(&one), NanoUsd(0));
        assert_eq!(price(0.0015, 0.0, 0.0).cost(&one), NanoUsd(2));
        assert_eq!(price(0.0004, 0.0, 0.0).cost(&TokenUsage { input: 10, ..Default::default() }), NanoUsd(4));
    }
}
