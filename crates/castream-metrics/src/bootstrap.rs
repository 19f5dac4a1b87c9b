//! Percentile bootstrap confidence intervals of a mean, and of a paired difference of means (the
//! GAP-vs-CA comparisons: both models are scored on the same images, so images are resampled
//! jointly). Seeded, so a table is reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// The mean of `values` and its `level` (e.g. 0.95) percentile-bootstrap interval from
/// `resamples` resamples.
pub fn mean_interval(values: &[f64], resamples: usize, level: f64, seed: u64) -> Interval {
    paired_interval(values, &vec![0.0; values.len()], resamples, level, seed)
}

/// The mean of `a - b` over paired observations and its percentile-bootstrap interval.
pub fn paired_interval(a: &[f64], b: &[f64], resamples: usize, level: f64, seed: u64) -> Interval {
    assert_eq!(a.len(), b.len(), "paired samples must have equal length");
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = diffs.len();
    if n == 0 {
        return Interval { mean: f64::NAN, low: f64::NAN, high: f64::NAN };
    }
    let mean = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> =
        (0..resamples.max(1)).map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(|x, y| x.total_cmp(y));
    let tail = (1.0 - level) / 2.0;
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Interval { mean, low: at(tail), high: at(1.0 - tail) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws `n` values of a skewed distribution with known mean 1 (exponential).
    fn sample(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
        (0..n).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect()
    }

    #[test]
    fn the_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let trials = 300;
        let covered = (0..trials)
            .filter(|&t| {
                let iv = mean_interval(&sample(200, &mut rng), 500, 0.95, t as u64);
                iv.low <= 1.0 && 1.0 <= iv.high
            })
            .count();
        let rate = covered as f64 / trials as f64;
        // Binomial(300, 0.95) stays within [0.90, 0.99] with overwhelming probability.
        assert!((0.90..=0.99).contains(&rate), "coverage {rate}");
    }

    #[test]
    fn paired_differences_find_a_known_shift_and_a_null_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let base = sample(400, &mut rng);
        let shifted: Vec<f64> = base.iter().map(|v| v + 0.1 + 0.01 * rng.random::<f64>()).collect();
        let iv = paired_interval(&shifted, &base, 1000, 0.95, 0);
        assert!(iv.low > 0.1 && iv.high < 0.111 && (iv.mean - 0.105).abs() < 0.002, "{iv:?}");
        let same = paired_interval(&base, &base, 100, 0.95, 0);
        assert_eq!((same.mean, same.low, same.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn hand_checked_mean_and_determinism() {
        let v = [1.0, 2.0, 3.0, 6.0];
        let a = mean_interval(&v, 200, 0.9, 7);
        assert_eq!(a.mean, 3.0);
        assert!(a.low >= 1.0 && a.high <= 6.0 && a.low < 3.0 && a.high > 3.0);
        assert_eq!(a, mean_interval(&v, 200, 0.9, 7));
        assert!(mean_interval(&[], 10, 0.95, 0).mean.is_nan());
    }
}
