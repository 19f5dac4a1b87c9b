//! Average Drop, Average Gain and Average Increase (METHOD.md §5): how the class probability changes
//! when the model sees only the explanation image, i.e. the input multiplied by its saliency map in
//! pixel space. Values are kept per image so tables can bootstrap them; their means are AD/AG/AI.

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use castream_data::normalise::Normalisation;

/// The explanation images `normalise(denormalise(x) * S)` of a normalised batch `x` `(B, 3, H, W)` and
/// saliency maps `S` `(B, H, W)` in [0, 1] at the input size, the map shared by the three channels.
/// The product is taken in pixel space so that a zero saliency gives a black pixel, not the mean colour.
pub fn explanation_images(x: &Tensor, saliency: &Tensor, norm: &Normalisation) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4().context("explanation images: the input must be (B, 3, H, W)")?;
    ensure!(c == 3, "explanation images: the input has {c} channels, expected 3");
    ensure!(
        saliency.dims() == [b, h, w],
        "explanation images: saliency shape {:?} does not match the input's (B, H, W) = {:?}",
        saliency.dims(),
        [b, h, w]
    );
    let masked = norm.to_pixels(x)?.broadcast_mul(&saliency.unsqueeze(1)?.to_dtype(x.dtype())?)?;
    Ok(norm.from_pixels(&masked)?)
}

/// The softmax probability of `classes[i]` in row `i` of `logits` `(B, K)`. Computed in f64 with the
/// maximum subtracted, so large logits neither overflow nor lose the small probabilities.
pub fn class_probabilities(logits: &Tensor, classes: &[u32]) -> Result<Vec<f64>> {
    let (b, k) = logits.dims2().context("class probabilities: logits must be (B, K)")?;
    ensure!(classes.len() == b, "class probabilities: {} classes for {b} rows of logits", classes.len());
    let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    rows.iter()
        .zip(classes)
        .map(|(row, &c)| {
            ensure!((c as usize) < k, "class probabilities: class {c} out of range for {k} logits");
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            Ok((row[c as usize] as f64 - max).exp() / total)
        })
        .collect()
}

/// Per-image confidence changes, in percent; the mean of each vector is the metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Confidence {
    /// `max(0, Y - O) / Y * 100` (0 when `Y == 0`: nothing can drop). Average Drop, lower is better.
    pub drop: Vec<f64>,
    /// `max(0, O - Y) / (1 - Y) * 100` (0 when `Y == 1`: nothing can be gained). Average Gain, higher is better.
    pub gain: Vec<f64>,
    /// `100` if `O > Y`, else `0`. Average Increase, higher is better.
    pub increase: Vec<f64>,
}

/// The per-image drops, gains and increases from the class probabilities `y` on the images and `o` on
/// their explanation images.
///
/// # Panics
/// If `y` and `o` differ in length: they must describe the same images, so a mismatch is a caller bug.
pub fn confidence(y: &[f64], o: &[f64]) -> Confidence {
    assert_eq!(y.len(), o.len(), "confidence: {} probabilities on images but {} on explanations", y.len(), o.len());
    let ratio = |num: f64, den: f64| if den > 0.0 { num / den * 100.0 } else { 0.0 };
    let pairs = || y.iter().zip(o);
    Confidence {
        drop: pairs().map(|(&y, &o)| ratio((y - o).max(0.0), y)).collect(),
        gain: pairs().map(|(&y, &o)| ratio((o - y).max(0.0), 1.0 - y)).collect(),
        increase: pairs().map(|(&y, &o)| if o > y { 100.0 } else { 0.0 }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn hand_computed_drop_gain_and_increase() {
        let y = [0.5, 0.8, 0.2, 1.0, 0.0];
        let o = [0.25, 0.9, 0.2, 0.7, 0.3];
        let c = confidence(&y, &o);
        // drop: 0.25/0.5, 0, 0, 0.3/1, 0 (Y = 0); gain: 0, 0.1/0.2, 0, 0 (Y = 1), 0.3/1.
        let want_drop = [50.0, 0.0, 0.0, 30.0, 0.0];
        let want_gain = [0.0, 50.0, 0.0, 0.0, 30.0];
        for (got, want) in c.drop.iter().zip(want_drop).chain(c.gain.iter().zip(want_gain)) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        assert_eq!(c.increase, vec![0.0, 100.0, 0.0, 0.0, 100.0]);
        assert!((mean(&c.drop) - 16.0).abs() < 1e-9);
        assert!((mean(&c.gain) - 16.0).abs() < 1e-9);
        assert_eq!(mean(&c.increase), 40.0);
    }

    #[test]
    #[should_panic(expected = "confidence")]
    fn mismatched_lengths_panic() {
        confidence(&[0.5], &[0.5, 0.5]);
    }

    #[test]
    fn class_probabilities_match_a_hand_softmax() {
        let l2 = 2f32.ln();
        let l3 = 3f32.ln();
        // Row 0: exp = 1, 2, 3 -> 1/6, 2/6, 3/6. Row 1: shifted by 1000, same probabilities if stable.
        let logits = Tensor::new(&[[0.0, l2, l3], [1000.0, 1000.0 + l2, 1000.0 + l3]], &cpu()).unwrap();
        let p = class_probabilities(&logits, &[2, 0]).unwrap();
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 1.0 / 6.0).abs() < 1e-4, "{p:?}");
        assert!(class_probabilities(&logits, &[3, 0]).is_err());
        assert!(class_probabilities(&logits, &[0]).is_err());
    }

    #[test]
    fn explanation_images_match_a_per_pixel_loop() {
        let norm = Normalisation { mean: [0.4, 0.5, 0.6], std: [0.2, 0.25, 0.3] };
        let (b, h, w) = (2, 3, 4);
        let x: Vec<f32> = (0..b * 3 * h * w).map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5).collect();
        let s: Vec<f32> = (0..b * h * w).map(|i| ((i * 11) % 13) as f32 / 12.0).collect();
        let xt = Tensor::from_vec(x.clone(), (b, 3, h, w), &cpu()).unwrap();
        let st = Tensor::from_vec(s.clone(), (b, h, w), &cpu()).unwrap();
        let got: Vec<f32> = explanation_images(&xt, &st, &norm).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut want = x;
        for (i, img) in want.chunks_exact_mut(3 * h * w).enumerate() {
            norm.invert(img);
            for (p, v) in img.iter_mut().enumerate() {
                *v *= s[i * h * w + p % (h * w)];
            }
            norm.apply(img);
        }
        got.iter().zip(&want).for_each(|(g, w)| assert!((g - w).abs() < 1e-5, "{g} vs {w}"));
        let bad = Tensor::zeros((b, h, w + 1), candle_core::DType::F32, &cpu()).unwrap();
        assert!(explanation_images(&xt, &bad, &norm).is_err());
    }
}
