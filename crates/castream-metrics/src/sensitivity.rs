//! Max-sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar, NeurIPS 2019): the largest change of an
//! explanation when the input moves by a small random perturbation, estimated by Monte Carlo:
//! `max_s ||S(x + δ_s) - S(x)||_F / ||S(x)||_F`, `δ_s` uniform in `[-r, r]` per pixel and channel
//! (in pixel space, [0, 1]), the class explained held fixed. Captum's `sensitivity_max` divides by
//! the explanation's norm as here, and by 1 where that norm is 0 (its defaults: `r` = 0.02, 10
//! samples, ours too); it perturbs whatever input it is given, usually the normalised one, where
//! 0.02 is about 0.0045 in pixels at ImageNet's σ: our radius is stated in pixels so that it means
//! the same for every normalisation. Quantus's `MaxSensitivity` divides by the input's norm, which
//! depends on the input's scaling.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use castream_data::normalise::Normalisation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `||a - b||_F / ||a||_F`; `||a - b||_F` where `a` is zero everywhere (Captum's rule: the
/// denominator becomes 1).
///
/// # Panics
/// If the lengths differ (a caller bug).
pub fn relative_change(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "relative change: maps of {} and {} values", a.len(), b.len());
    let l2 = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let diff = a.iter().zip(b).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt();
    let norm = l2(a);
    diff / if norm > 0.0 { norm } else { 1.0 }
}

/// The normalised batch `x` `(B, C, H, W)` moved by `δ` uniform in `[-radius, radius]` in pixel
/// space, image `i`'s draws from `rngs[i]`.
pub fn perturbed(x: &Tensor, norm: &Normalisation, radius: f64, rngs: &mut [ChaCha8Rng]) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4().context("perturbation: the input must be (B, C, H, W)")?;
    ensure!(rngs.len() == b, "perturbation: {} generators for {b} images", rngs.len());
    let r = radius as f32;
    let delta: Vec<f32> =
        rngs.iter_mut().flat_map(|g| (0..c * h * w).map(|_| g.random_range(-r..=r)).collect::<Vec<_>>()).collect();
    let delta = Tensor::from_vec(delta, (b, c, h, w), x.device())?;
    Ok(norm.from_pixels(&(norm.to_pixels(&x.to_dtype(DType::F32)?)? + delta)?)?)
}

/// Per-image max-sensitivity, x100 (a relative change in percent), over `samples` perturbations of
/// radius `radius`. `explain` maps a normalised batch to its maps `(B, H, W)` at the input size, for
/// the same classes as `maps`, the maps of `x`; `seeds[i]` seeds image `i`'s perturbations.
pub fn max_sensitivity(
    explain: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    maps: &Tensor,
    norm: &Normalisation,
    (radius, samples): (f64, usize),
    seeds: &[u64],
) -> Result<Vec<f64>> {
    let (b, _, h, w) = x.dims4().context("max-sensitivity: the input must be (B, C, H, W)")?;
    ensure!(samples > 0, "max-sensitivity: 0 perturbations; valid: at least 1 (e.g. 10, Captum's default)");
    ensure!(seeds.len() == b, "max-sensitivity: {} seeds for {b} images; give one per image", seeds.len());
    ensure!(maps.dims() == [b, h, w], "max-sensitivity: maps {:?} for inputs {:?}", maps.dims(), x.dims());
    let reference: Vec<Vec<f32>> = maps.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2()?;
    let mut rngs: Vec<ChaCha8Rng> = seeds.iter().map(|&s| ChaCha8Rng::seed_from_u64(s)).collect();
    let mut worst = vec![0.0f64; b];
    for _ in 0..samples {
        let moved = explain(&perturbed(x, norm, radius, &mut rngs)?)?;
        ensure!(moved.dims() == [b, h, w], "max-sensitivity: the explanation returned {:?}", moved.dims());
        let moved: Vec<Vec<f32>> = moved.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2()?;
        for ((m, a), s) in worst.iter_mut().zip(&reference).zip(&moved) {
            *m = m.max(relative_change(a, s));
        }
    }
    Ok(worst.into_iter().map(|m| 100.0 * m).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;

    #[test]
    fn relative_change_of_hand_worked_maps() {
        // ||(0, 0, 3, 4) - 0|| / ||(0, 0, 3, 4)|| = 1; (3,4) vs (0,4): 3 / 5.
        assert_eq!(relative_change(&[0.0, 0.0, 3.0, 4.0], &[0.0; 4]), 1.0);
        assert!((relative_change(&[3.0, 4.0], &[0.0, 4.0]) - 0.6).abs() < 1e-12);
        assert_eq!(relative_change(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        // A zero map: the change itself, divided by 1 (Captum).
        assert_eq!(relative_change(&[0.0, 0.0], &[3.0, 4.0]), 5.0);
    }

    #[test]
    fn perturbations_stay_within_the_radius_in_pixel_space() {
        let norm = Normalisation::IMAGENET;
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &cpu()).unwrap();
        let mut rngs = vec![ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(2)];
        let moved = perturbed(&x, &norm, 0.05, &mut rngs).unwrap();
        let delta: Vec<f32> = (norm.to_pixels(&moved).unwrap() - norm.to_pixels(&x).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(delta.iter().all(|d| d.abs() <= 0.05 + 1e-6));
        assert!(delta.iter().map(|d| d.abs()).fold(0.0f32, f32::max) > 0.04, "draws span the radius");
    }

    #[test]
    fn the_maximum_over_samples_matches_a_loop_for_a_linear_explanation() {
        // S(x) = the first channel's pixels plus 1: the change is exactly the first channel's δ.
        let norm = Normalisation::IDENTITY;
        let x = Tensor::zeros((2, 3, 2, 2), DType::F32, &cpu()).unwrap();
        let mut explain = |t: &Tensor| -> Result<Tensor> { Ok((t.narrow(1, 0, 1)?.squeeze(1)? + 1.0)?) };
        let maps = explain(&x).unwrap();
        let got = max_sensitivity(&mut explain, &x, &maps, &norm, (0.1, 5), &[4, 9]).unwrap();
        for (i, &seed) in [4u64, 9].iter().enumerate() {
            let mut g = ChaCha8Rng::seed_from_u64(seed);
            let mut best = 0.0f64;
            for _ in 0..5 {
                let d: Vec<f32> = (0..12).map(|_| g.random_range(-0.1f32..=0.1)).collect();
                best = best.max(d[..4].iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() / 2.0);
            }
            assert!((got[i] - 100.0 * best).abs() < 1e-4, "image {i}: {} vs {}", got[i], 100.0 * best);
        }
        let err = max_sensitivity(&mut explain, &x, &maps, &norm, (0.1, 0), &[4, 9]).unwrap_err().to_string();
        assert!(err.contains("0 perturbations") && err.contains("at least 1"), "{err}");
    }
}
