//! Prices and costs. A built-in catalog of list prices (USD per million tokens, as the providers
//! publish them; a model's `price` in the config overrides it), matched by model name or by name
//! plus a dated suffix (`gpt-4.1-2025-04-14`, `claude-sonnet-4-5-20250929`). Costs are integer
//! nano-dollars, so sums and budgets are exact.

use crate::config::Price;
use crate::translate::ir::Usage;

/// (model, input, output, cached input, cache write), USD per million tokens.
const CATALOG: &[(&str, f64, f64, f64, f64)] = &[
    // OpenAI
    ("gpt-4.1", 2.00, 8.00, 0.50, 2.00),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10, 0.40),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025, 0.10),
    ("gpt-4o", 2.50, 10.00, 1.25, 2.50),
    ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.15),
    ("o1", 15.00, 60.00, 7.50, 15.00),
    ("o3", 2.00, 8.00, 0.50, 2.00),
    ("o3-mini", 1.10, 4.40, 0.55, 1.10),
    ("o4-mini", 1.10, 4.40, 0.275, 1.10),
    // Anthropic (cache writes: 5-minute cache, 1.25x input)
    ("claude-opus-4", 15.00, 75.00, 1.50, 18.75),
    ("claude-opus-4-1", 15.00, 75.00, 1.50, 18.75),
    ("claude-opus-4-5", 5.00, 25.00, 0.50, 6.25),
    ("claude-sonnet-4", 3.00, 15.00, 0.30, 3.75),
    ("claude-sonnet-4-5", 3.00, 15.00, 0.30, 3.75),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08, 1.00),
    // Google (prompts up to 200k tokens)
    ("gemini-2.5-pro", 1.25, 10.00, 0.31, 1.25),
    ("gemini-2.5-flash", 0.30, 2.50, 0.075, 0.30),
    ("gemini-2.5-flash-lite", 0.10, 0.40, 0.025, 0.10),
    // DeepSeek (V3.2 list prices; cache hits are the cached rate)
    ("deepseek-chat", 0.28, 0.42, 0.028, 0.28),
    ("deepseek-reasoner", 0.28, 0.42, 0.028, 0.28),
    ("deepseek-v3.2", 0.28, 0.42, 0.028, 0.28),
];

/// The catalog price of `model`: an exact entry, else the longest entry that `model` extends
/// with a `-<digit>` suffix (a dated snapshot).
pub fn catalog(model: &str) -> Option<Price> {
    let model = model.rsplit('/').next().unwrap_or(model);
    CATALOG
        .iter()
        .filter(|(name, ..)| {
            model == *name
                || model.strip_prefix(name).is_some_and(|rest| {
                    rest.strip_prefix('-')
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                })
        })
        .max_by_key(|(name, ..)| name.len())
        .map(|(_, input, output, cached, write)| {
            Price::per_million(*input, *output, *cached, *write)
        })
}

/// What `usage` costs at `price`, in nano-dollars: uncached input, cache reads and cache
/// writes each at their own rate, output (reasoning included) at the output rate.
pub fn cost(price: &Price, usage: &Usage) -> u64 {
    let uncached = usage
        .input
        .saturating_sub(usage.cache_read)
        .saturating_sub(usage.cache_write);
    uncached
        .saturating_mul(price.input)
        .saturating_add(usage.cache_read.saturating_mul(price.cached_input))
        .saturating_add(usage.cache_write.saturating_mul(price.cache_write))
        .saturating_add(usage.output.saturating_mul(price.output))
}

/// Nano-dollars as dollars, for display.
pub fn usd(nano: u64) -> f64 {
    nano as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_matches_names_and_dated_snapshots() {
        assert_eq!(catalog("gpt-4.1").unwrap().input, 2000);
        assert_eq!(catalog("gpt-4.1-2025-04-14").unwrap().output, 8000);
        assert_eq!(
            catalog("gpt-4.1-mini").unwrap().input,
            400,
            "not gpt-4.1's price"
        );
        assert_eq!(catalog("gpt-4.1-mini-2025-04-14").unwrap().input, 400);
        assert_eq!(
            catalog("claude-sonnet-4-5-20250929").unwrap().output,
            15_000
        );
        assert_eq!(catalog("claude-sonnet-4-5").unwrap().cache_write, 3750);
        assert_eq!(catalog("models/gemini-2.5-flash").unwrap().cached_input, 75);
        assert!(catalog("gpt-4.1-turbo").is_none());
        assert!(catalog("my-local-llama").is_none());
    }

    #[test]
    fn cost_prices_each_kind_of_token_once() {
        let price = Price::per_million(2.0, 8.0, 0.5, 2.5);
        let usage = Usage {
            input: 1_000,
            cache_read: 400,
            cache_write: 100,
            output: 300,
            reasoning: 50,
        };
        // 500 uncached * 2000 + 400 * 500 + 100 * 2500 + 300 * 8000 nano-dollars.
        assert_eq!(
            cost(&price, &usage),
            1_000_000 + 200_000 + 250_000 + 2_400_000
        );
        assert!((usd(cost(&price, &usage)) - 0.00385).abs() < 1e-12);
    }
}
