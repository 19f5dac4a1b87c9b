//! Spearman rank correlation, for the model-randomisation sanity checks: how much a saliency map still
//! resembles the original once weights are randomised, insensitive to monotone rescaling of the map.

/// Ranks from 1, tied values sharing the average of the ranks they span.
fn average_ranks(v: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let end = start + order[start..].iter().take_while(|&&i| v[i] == v[order[start]]).count().max(1);
        // Positions start..end hold ranks start + 1 ..= end, whose mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| ranks[i] = rank);
        start = end;
    }
    ranks
}

/// Spearman's rho: the Pearson correlation of the average ranks of `a` and `b`. Defined as 0 when
/// either input is constant (or has fewer than two values), where the correlation is undefined: a
/// constant map carries no ordering to agree with.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "spearman: inputs differ in length ({} vs {})", a.len(), b.len());
    let (ra, rb) = (average_ranks(a), average_ranks(b));
    // Average ranks always have mean (n + 1) / 2.
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        let (dx, dy) = (x - mean, y - mean);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn monotone_reversed_and_constant() {
        let a = [0.1, 0.5, 0.2, 0.9];
        let up = [1.0, 30.0, 2.0, 100.0];
        let down = [5.0, -3.0, 4.0, -10.0];
        assert!((spearman(&a, &up) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &down) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&a, &[2.0; 4]), 0.0);
        assert_eq!(spearman(&[], &[]), 0.0);
    }

    #[test]
    fn hand_computed_tie_example() {
        // a = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; b = [1, 3, 2, 4] -> ranks [1, 3, 2, 4].
        // Centred on 2.5: a' = [-1.5, 0, 0, 1.5], b' = [-1.5, 0.5, -0.5, 1.5]:
        // cov = 2.25 + 2.25 = 4.5, |a'|² = 4.5, |b'|² = 5, rho = 4.5 / sqrt(22.5) = 0.948683.
        assert_eq!(average_ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((rho - 4.5 / 22.5f64.sqrt()).abs() < 1e-12, "{rho}");
    }

    /// Rank by counting: 1 + (values below) + (other equal values) / 2.
    fn brute_ranks(v: &[f32]) -> Vec<f64> {
        v.iter()
            .map(|x| {
                let below = v.iter().filter(|y| *y < x).count();
                let equal = v.iter().filter(|y| *y == x).count();
                1.0 + below as f64 + (equal - 1) as f64 / 2.0
            })
            .collect()
    }

    fn pearson(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let sx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
        let sy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
        cov / (sx * sy).sqrt()
    }

    #[test]
    fn matches_pearson_on_brute_force_ranks() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in [2, 3, 10, 57] {
            for _ in 0..20 {
                // Few levels, so ties are frequent.
                let a: Vec<f32> = (0..n).map(|_| rng.random_range(0..6) as f32 / 5.0).collect();
                let b: Vec<f32> = a.iter().map(|v| v + rng.random_range(-0.5..0.5)).collect();
                let (ra, rb) = (brute_ranks(&a), brute_ranks(&b));
                assert_eq!(average_ranks(&a), ra);
                let want = pearson(&ra, &rb);
                let got = spearman(&a, &b);
                if want.is_nan() {
                    assert_eq!(got, 0.0);
                } else {
                    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
                }
            }
        }
    }
}
