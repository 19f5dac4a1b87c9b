//! ADCC (Poppi, Cornia, Baraldi, Cucchiara, CVPR workshops 2021): one number that a map cannot earn
//! by keeping the whole image. The harmonic mean of three per-image terms in [0, 1]:
//! `ADCC = 3 / (1/Coherency + 1/(1 - Complexity) + 1/(1 - AverageDrop))`, where
//! - Coherency: the explanation of the explanation image should be the explanation,
//!   `(1 + ρ(S(x ⊙ S(x)), S(x))) / 2`, `ρ` Pearson's correlation of the two maps;
//! - Complexity: the map's L1 norm per pixel (its mean, maps being in [0, 1]): a small map is simpler;
//! - Average Drop: the relative confidence drop on the explanation image (as a fraction).
//!
//! A map of ones but for one pixel (Fake-CAM) has Complexity 1 − 1/(h·w), so its ADCC is close
//! to 0 whatever its AD.

/// `(1 + ρ) / 2` of two maps. Pearson's ρ is undefined when a map is constant: identical maps
/// count as coherent (1), otherwise as uncorrelated (1/2).
///
/// # Panics
/// If the lengths differ (a caller bug).
pub fn coherency(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "coherency: maps of {} and {} values", a.len(), b.len());
    if a == b {
        return 1.0;
    }
    let n = a.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    let rho = if va > 0.0 && vb > 0.0 { (cov / (va * vb).sqrt()).clamp(-1.0, 1.0) } else { 0.0 };
    (1.0 + rho) / 2.0
}

/// The map's mean absolute value, its L1 norm per pixel.
pub fn complexity(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// The harmonic mean of Coherency, 1 − Complexity and 1 − Average Drop (all fractions in [0, 1]);
/// 0 when any of the three is 0 (the limit of the harmonic mean).
pub fn adcc(coherency: f64, complexity: f64, drop: f64) -> f64 {
    let terms = [coherency, 1.0 - complexity, 1.0 - drop];
    if terms.iter().any(|&t| t <= 0.0) {
        return 0.0;
    }
    3.0 / terms.iter().map(|t| 1.0 / t).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coherency_of_hand_worked_maps() {
        assert_eq!(coherency(&[0.0, 0.5, 1.0], &[0.0, 0.5, 1.0]), 1.0);
        // Perfect anti-correlation: ρ = -1.
        assert!(coherency(&[0.0, 0.5, 1.0], &[1.0, 0.5, 0.0]).abs() < 1e-12);
        // A rescaled map is perfectly correlated: ρ = 1.
        assert!((coherency(&[0.0, 0.2, 0.4], &[0.1, 0.5, 0.9]) - 1.0).abs() < 1e-12);
        // (1, 0, 0, 1) vs (1, 1, 0, 0): means 1/2, cov 0, ρ = 0.
        assert!((coherency(&[1.0, 0.0, 0.0, 1.0], &[1.0, 1.0, 0.0, 0.0]) - 0.5).abs() < 1e-12);
        // x = (0, 1, 2), y = (0, 2, 1): cov 1, variances 2 and 2, ρ = 1/2.
        assert!((coherency(&[0.0, 1.0, 2.0], &[0.0, 2.0, 1.0]) - 0.75).abs() < 1e-12);
        assert_eq!(coherency(&[0.3; 4], &[0.0, 1.0, 0.0, 0.0]), 0.5);
    }

    #[test]
    fn complexity_and_the_harmonic_mean() {
        assert!((complexity(&[0.0, 0.5, 1.0, 0.5]) - 0.5).abs() < 1e-12);
        // 3 / (1/0.5 + 1/0.75 + 1/1) = 3 / (2 + 4/3 + 1) = 9/13.
        assert!((adcc(0.5, 0.25, 0.0) - 9.0 / 13.0).abs() < 1e-12);
        assert_eq!(adcc(1.0, 0.0, 0.0), 1.0);
        assert_eq!(adcc(1.0, 1.0, 0.0), 0.0, "a map of ones");
        assert_eq!(adcc(0.9, 0.2, 1.0), 0.0, "a total drop");
    }
}
