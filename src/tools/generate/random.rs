//! The random draws of the generator, all from the one seeded ChaCha8 stream so that a seed gives
//! the same bytes: normal and exponential variates, Zipf popularity weights, picks by cumulative
//! weight, shuffles.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A standard normal draw (Box-Muller; one of the pair is enough here).
pub(super) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let radius = (-2.0 * (1.0 - rng.r#gen::<f64>()).ln()).sqrt();
    radius * (std::f64::consts::TAU * rng.r#gen::<f64>()).cos()
}

/// An exponential draw with `rate` (inverse CDF).
pub(super) fn exponential(rate: f64, rng: &mut ChaCha8Rng) -> f64 {
    -(1.0 - rng.r#gen::<f64>()).ln() / rate
}

/// Cumulative Zipf weights `1/(rank+1)^exponent`, normalized to end at 1.
pub(super) fn zipf_cumulative(count: usize, exponent: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cumulative: Vec<f64> = (0..count)
        .map(|rank| {
            total += 1.0 / ((rank + 1) as f64).powf(exponent);
            total
        })
        .collect();
    for value in &mut cumulative {
        *value /= total;
    }
    cumulative
}

/// The individual weights behind cumulative weights.
pub(super) fn weights(cumulative: &[f64]) -> impl Iterator<Item = f64> + '_ {
    cumulative.iter().scan(0.0, |previous, &value| {
        Some(value - std::mem::replace(previous, value))
    })
}

/// Draws an index by cumulative weights ending at 1.
pub(super) fn pick(cumulative: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let draw = rng.r#gen::<f64>();
    cumulative
        .partition_point(|&value| value <= draw)
        .min(cumulative.len() - 1)
}

/// Fisher-Yates, since `rand::seq` is not enabled.
pub(super) fn shuffle<V>(values: &mut [V], rng: &mut ChaCha8Rng) {
    for index in (1..values.len()).rev() {
        values.swap(index, rng.gen_range(0..=index));
    }
}
