//! Percentile bootstrap confidence intervals of a mean, and of a paired difference of means (the
//! GAP-vs-CA comparisons: both models are scored on the same images, so images are resampled
//! jointly); with several stream seeds, a two-way bootstrap over seeds and images ([`crossed_interval`]).
//! Seeded, so a table is reproducible.

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
    percentiles(&mut means, mean, level)
}

/// The mean of `values[s][i]` over seeds `s` and images `i` (every seed's model scored on the same
/// images) and its percentile interval from a two-way bootstrap (Owen 2007, "the pigeonhole
/// bootstrap"): each resample draws seeds and images with replacement, independently, and averages
/// the drawn (seed, image) cells, so the interval widens with the spread across seeds as well as
/// across images. With one seed it is [`mean_interval`].
pub fn crossed_interval(values: &[&[f64]], resamples: usize, level: f64, seed: u64) -> Interval {
    let zeros = vec![0.0; values.first().map_or(0, |v| v.len())];
    crossed_paired_interval(values, &zeros, resamples, level, seed)
}

/// [`crossed_interval`] of the paired differences `a[s][i] - b[i]`: seed `s` of a model with a
/// trained stream against a model without one (the GAP network), on the same images.
pub fn crossed_paired_interval(a: &[&[f64]], b: &[f64], resamples: usize, level: f64, seed: u64) -> Interval {
    if let [one] = a {
        return paired_interval(one, b, resamples, level, seed);
    }
    assert!(a.iter().all(|v| v.len() == b.len()), "every seed must score the paired images");
    let (seeds, n) = (a.len(), b.len());
    if seeds == 0 || n == 0 {
        return Interval { mean: f64::NAN, low: f64::NAN, high: f64::NAN };
    }
    let diffs: Vec<Vec<f64>> = a.iter().map(|v| v.iter().zip(b).map(|(x, y)| x - y).collect()).collect();
    let mean = diffs.iter().flatten().sum::<f64>() / (seeds * n) as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = vec![0u32; n];
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            counts.iter_mut().for_each(|c| *c = 0);
            for _ in 0..n {
                counts[rng.random_range(0..n)] += 1;
            }
            let total: f64 = (0..seeds)
                .map(|_| {
                    let d = &diffs[rng.random_range(0..seeds)];
                    d.iter().zip(&counts).map(|(v, &c)| v * c as f64).sum::<f64>()
                })
                .sum();
            total / (seeds * n) as f64
        })
        .collect();
    percentiles(&mut means, mean, level)
}

/// The mean of `a - b` over paired observations (one seed's difference, without an interval).
pub fn mean_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "paired samples must have equal length");
    a.iter().zip(b).map(|(x, y)| x - y).sum::<f64>() / a.len().max(1) as f64
}

/// The interval of `mean` between the `level` percentiles of the bootstrap `means`.
fn percentiles(means: &mut [f64], mean: f64, level: f64) -> Interval {
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

    #[test]
    fn one_seed_is_the_image_bootstrap() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (a, b) = (sample(50, &mut rng), sample(50, &mut rng));
        assert_eq!(crossed_paired_interval(&[&a], &b, 300, 0.95, 4), paired_interval(&a, &b, 300, 0.95, 4));
        assert_eq!(crossed_interval(&[&a], 300, 0.95, 4), mean_interval(&a, 300, 0.95, 4));
    }

    #[test]
    fn seeds_alone_by_hand() {
        // Images identical within a seed: only the seed draw varies. Two seeds at 0 and 1 give
        // resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1].
        let (zero, one) = ([0.0; 5], [1.0; 5]);
        let iv = crossed_interval(&[&zero, &one], 4000, 0.95, 1);
        assert_eq!((iv.mean, iv.low, iv.high), (0.5, 0.0, 1.0));
        let iv = crossed_interval(&[&zero, &one], 4000, 0.40, 1);
        assert_eq!((iv.low, iv.high), (0.5, 0.5));
    }

    #[test]
    fn the_spread_is_the_two_way_bootstraps_variance() {
        // Additive cells x[s][i] = a_s + b_i: a resample's mean is the drawn seeds' mean of a plus
        // the drawn images' mean of b, whose variance is var(a)/S + var(b)/n (population
        // variances); with 40 seeds and 400 images it is near-normal, so the 95% interval is
        // ±1.96 of its square root around the mean.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (a, b) = (sample(40, &mut rng), sample(400, &mut rng));
        let cells: Vec<Vec<f64>> = a.iter().map(|s| b.iter().map(|i| 3.0 * s + i).collect()).collect();
        let refs: Vec<&[f64]> = cells.iter().map(Vec::as_slice).collect();
        let var = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64
        };
        let sd = (9.0 * var(&a) / 40.0 + var(&b) / 400.0).sqrt();
        let iv = crossed_interval(&refs, 4000, 0.95, 2);
        let half = (iv.high - iv.low) / 2.0;
        assert!((half / (1.96 * sd) - 1.0).abs() < 0.08, "half-width {half} vs {}", 1.96 * sd);
        // Ignoring the seeds (one seed's images only) would be far narrower.
        assert!(mean_interval(&cells[0], 4000, 0.95, 2).high - mean_interval(&cells[0], 4000, 0.95, 2).low < half);
    }

    #[test]
    fn paired_seeds_subtract_the_shared_reference() {
        let b = [10.0, 20.0, 30.0];
        let (s0, s1) = ([11.0, 21.0, 31.0], [13.0, 23.0, 33.0]);
        let iv = crossed_paired_interval(&[&s0, &s1], &b, 2000, 0.95, 5);
        assert_eq!((iv.mean, iv.low, iv.high), (2.0, 1.0, 3.0));
        assert_eq!((mean_difference(&s0, &b), mean_difference(&s1, &b)), (1.0, 3.0));
    }
}
