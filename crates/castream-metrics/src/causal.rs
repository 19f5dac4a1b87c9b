//! Insertion and deletion (RISE-style causal metrics, METHOD.md §5). Pixels are changed in order of
//! decreasing saliency, a fixed number per step, and the class probability is recorded along the way: a
//! good map makes it rise fast on insertion and fall fast on deletion. Every step image of a batch goes
//! through the model in large chunks, since one forward per image per step would dominate the run time.

use crate::blur::{blur, InsertionBlur, BLUR_SIZE};
use crate::confidence::class_probabilities;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

/// Whether pixels are restored into a blurred image or removed from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CausalMode {
    /// Start from the blurred image ([`InsertionBlur`]) and restore original pixels. Higher AUC
    /// is better.
    Insertion,
    /// Start from the image and set pixels to zero in normalised space (the dataset mean colour).
    /// Lower AUC is better.
    Deletion,
}

/// How many pixels change per step. The class explained is always the caller's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CausalVariant {
    /// The CA-Stream authors' code: `8 * w` pixels (eight rows) per step, i.e. 1792 pixels, 28 steps and
    /// 29 curve points at 224x224. Used with the ground-truth class.
    Authors,
    /// The Opti-CAM paper: 224 steps of 224 pixels at 224x224, generalised to one row (`w` pixels) per
    /// step, hence `h` steps. Used with the predicted class.
    OptiCam,
}

/// Pixels changed per step for an `h x w` image.
pub fn step_pixels(variant: CausalVariant, _h: usize, w: usize) -> usize {
    match variant {
        CausalVariant::Authors => 8 * w,
        CausalVariant::OptiCam => w,
    }
}

/// Number of steps for an `h x w` image, `ceil(h * w / step)`: the last step may change fewer pixels.
pub fn steps(variant: CausalVariant, h: usize, w: usize) -> usize {
    (h * w).div_ceil(step_pixels(variant, h, w).max(1))
}

/// The position of each pixel in the order of decreasing saliency, ties broken by lower index first so
/// curves are deterministic. Saliency must be finite.
fn rank_map(saliency: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..saliency.len()).collect();
    // Stable sort: equal values keep increasing index order; -0.0 and 0.0 tie.
    order.sort_by(|&a, &b| saliency[b].partial_cmp(&saliency[a]).expect("finite saliency"));
    let mut rank = vec![0; saliency.len()];
    order.iter().enumerate().for_each(|(r, &p)| rank[p] = r);
    rank
}

/// Insertion or deletion curves of a batch: one curve of `steps + 1` class probabilities per image, the
/// score taken before each step and after the last (point 0 is the start image, the last point the
/// fully deleted or fully restored image).
///
/// `score` (any candle model's forward) maps a normalised batch `(N, C, H, W)` to logits `(N, K)`; `x` is the normalised batch
/// `(B, C, H, W)`, `saliency` the maps `(B, H, W)` at the input size, `classes[i]` the class whose
/// softmax probability is tracked for image `i`. The `B * (steps + 1)` step images are built chunk by
/// chunk and scored `batch_size` at a time, so memory stays bounded by the chunk.
#[allow(clippy::too_many_arguments)]
pub fn causal_curves(
    score: &mut dyn FnMut(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    saliency: &Tensor,
    classes: &[u32],
    mode: CausalMode,
    variant: CausalVariant,
    blur_kind: InsertionBlur,
    batch_size: usize,
) -> Result<Vec<Vec<f64>>> {
    let (b, c, h, w) = x.dims4().context("causal curves: the input must be (B, C, H, W)")?;
    ensure!(
        saliency.dims() == [b, h, w],
        "causal curves: saliency shape {:?} does not match the input's (B, H, W) = {:?}",
        saliency.dims(),
        [b, h, w]
    );
    ensure!(classes.len() == b, "causal curves: {} classes for {b} images", classes.len());
    ensure!(batch_size > 0, "causal curves: the batch size must be positive");
    ensure!(h * w > 0, "causal curves: empty {h}x{w} images");
    let x = x.to_dtype(DType::F32)?;
    let pixels: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (start, replacement) = match mode {
        CausalMode::Deletion => (pixels.clone(), vec![0.0; pixels.len()]),
        CausalMode::Insertion => (blur(&x, &blur_kind.kernel(), BLUR_SIZE)?.flatten_all()?.to_vec1()?, pixels),
    };
    let saliency: Vec<f32> = saliency.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    ensure!(saliency.iter().all(|v| v.is_finite()), "causal curves: the saliency maps contain NaN or infinity");
    let (plane, image) = (h * w, c * h * w);
    let ranks: Vec<Vec<usize>> = saliency.chunks_exact(plane).map(rank_map).collect();
    let step = step_pixels(variant, h, w);
    let points = steps(variant, h, w) + 1;

    let jobs: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..points).map(move |k| (i, k))).collect();
    let mut curves = vec![Vec::with_capacity(points); b];
    for chunk in jobs.chunks(batch_size) {
        let mut data = Vec::with_capacity(chunk.len() * image);
        for &(i, k) in chunk {
            let (from, to, rank) = (&start[i * image..][..image], &replacement[i * image..][..image], &ranks[i]);
            let changed = k * step;
            for (from, to) in from.chunks_exact(plane).zip(to.chunks_exact(plane)) {
                data.extend((0..plane).map(|p| if rank[p] < changed { to[p] } else { from[p] }));
            }
        }
        let batch = Tensor::from_vec(data, (chunk.len(), c, h, w), x.device())?;
        let labels: Vec<u32> = chunk.iter().map(|&(i, _)| classes[i]).collect();
        let probs = class_probabilities(&score(&batch)?, &labels).context("causal curves: scoring step images")?;
        chunk.iter().zip(probs).for_each(|(&(i, _), p)| curves[i].push(p));
    }
    Ok(curves)
}

/// Area under a curve sampled at `n + 1` evenly spaced points of [0, 1], by the trapezoid rule:
/// `(sum(a) - a_0 / 2 - a_n / 2) / n`. In [0, 1] for probabilities; tables report it x100.
///
/// # Panics
/// If the curve has fewer than two points.
pub fn auc(curve: &[f64]) -> f64 {
    assert!(curve.len() >= 2, "auc: a curve needs at least two points, got {}", curve.len());
    let n = (curve.len() - 1) as f64;
    (curve.iter().sum::<f64>() - (curve[0] + curve[curve.len() - 1]) / 2.0) / n
}

/// AOPC, the area over the perturbation curve (Samek et al., IEEE TNNLS 2017), of a deletion
/// (most relevant first) curve of `L + 1` points: `1/(L+1) Σ_{k=0..L} (a_0 - a_k)`, the mean drop
/// from the unperturbed score. Higher is better; tables report it x100.
///
/// # Panics
/// If the curve is empty.
pub fn aopc(curve: &[f64]) -> f64 {
    assert!(!curve.is_empty(), "aopc: an empty curve");
    curve.iter().map(|a| curve[0] - a).sum::<f64>() / curve.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn step_counts_of_both_variants() {
        assert_eq!(
            (step_pixels(CausalVariant::Authors, 224, 224), steps(CausalVariant::Authors, 224, 224)),
            (1792, 28)
        );
        assert_eq!(
            (step_pixels(CausalVariant::OptiCam, 224, 224), steps(CausalVariant::OptiCam, 224, 224)),
            (224, 224)
        );
        // 36 pixels in steps of 24: one full step and one of 12.
        assert_eq!((step_pixels(CausalVariant::Authors, 12, 3), steps(CausalVariant::Authors, 12, 3)), (24, 2));
    }

    #[test]
    fn ranks_follow_decreasing_saliency_with_lower_index_first_on_ties() {
        // Order: 1, 3 (value 1), then 0, 2 (0.5), then 4 (-0.0 ties 0.0 at 5, lower index first), 5.
        assert_eq!(rank_map(&[0.5, 1.0, 0.5, 1.0, -0.0, 0.0]), vec![2, 0, 3, 1, 4, 5]);
    }

    #[test]
    fn auc_of_known_curves() {
        assert!((auc(&[0.3; 7]) - 0.3).abs() < 1e-12);
        let linear: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
        assert!((auc(&linear) - 0.5).abs() < 1e-12);
        // Two trapezoids of width 1/2: (0 + 1) / 4 + (1 + 0.5) / 4.
        assert!((auc(&[0.0, 1.0, 0.5]) - 0.625).abs() < 1e-12);
    }

    #[test]
    fn aopc_of_known_curves() {
        assert_eq!(aopc(&[0.7; 5]), 0.0);
        // Drops 0, 0.25, 0.5, 0.75, 1 from 1: mean 0.5.
        let linear: Vec<f64> = (0..=4).map(|i| 1.0 - i as f64 / 4.0).collect();
        assert!((aopc(&linear) - 0.5).abs() < 1e-12);
        // (0 + 0.6 + 0.2) / 3; a rise counts against the map.
        assert!((aopc(&[0.8, 0.2, 0.6]) - 0.8 / 3.0).abs() < 1e-12);
        assert!(aopc(&[0.2, 0.9]) < 0.0);
    }

    /// A fixed random linear classifier on flattened images.
    struct Linear {
        weights: Tensor,
        calls: Vec<usize>,
    }

    impl Linear {
        fn new(inputs: usize, classes: usize, rng: &mut ChaCha8Rng) -> Linear {
            let scale = 3.0 / (inputs as f32).sqrt();
            let w: Vec<f32> = (0..inputs * classes).map(|_| rng.random_range(-scale..scale)).collect();
            Linear { weights: Tensor::from_vec(w, (inputs, classes), &cpu()).unwrap(), calls: vec![] }
        }

        fn logits(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
            self.calls.push(x.dim(0)?);
            x.flatten_from(1)?.matmul(&self.weights)
        }
    }

    /// One image, one step at a time, mutating the image as the RISE code does; the order found by
    /// repeatedly taking the first maximum among the remaining pixels.
    fn naive_curve(
        model: &mut Linear,
        start: &[f32],
        finish: &[f32],
        sal: &[f32],
        dims: (usize, usize),
        class: u32,
        step: usize,
    ) -> Vec<f64> {
        let (h, w) = dims;
        let plane = h * w;
        let mut left: Vec<usize> = (0..plane).collect();
        let mut order = vec![];
        while !left.is_empty() {
            let best = (1..left.len()).fold(0, |b, j| if sal[left[j]] > sal[left[b]] { j } else { b });
            order.push(left.remove(best));
        }
        let mut img = start.to_vec();
        let mut curve = vec![];
        for k in 0..=plane.div_ceil(step) {
            let t = Tensor::from_vec(img.clone(), (1, 3, h, w), &cpu()).unwrap();
            curve.push(class_probabilities(&model.logits(&t).unwrap(), &[class]).unwrap()[0]);
            for &p in order.iter().skip(k * step).take(step) {
                (0..3).for_each(|ch| img[ch * plane + p] = finish[ch * plane + p]);
            }
        }
        curve
    }

    #[test]
    fn batched_curves_equal_a_one_step_at_a_time_loop() {
        let (b, h, w, k) = (3, 12, 3, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut model = Linear::new(3 * h * w, k, &mut rng);
        let x: Vec<f32> = (0..b * 3 * h * w).map(|_| rng.random_range(-2.0..2.0)).collect();
        // Five levels, so ties are common.
        let sal: Vec<f32> = (0..b * h * w).map(|_| rng.random_range(0..5) as f32 / 4.0).collect();
        let xt = Tensor::from_vec(x.clone(), (b, 3, h, w), &cpu()).unwrap();
        let st = Tensor::from_vec(sal.clone(), (b, h, w), &cpu()).unwrap();
        let classes = [0u32, 3, 1];
        let blurred: Vec<f32> =
            blur(&xt, &InsertionBlur::Gkern.kernel(), BLUR_SIZE).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let zeros = vec![0.0; x.len()];
        let image = 3 * h * w;
        for variant in [CausalVariant::Authors, CausalVariant::OptiCam] {
            for mode in [CausalMode::Deletion, CausalMode::Insertion] {
                let (start, finish) = match mode {
                    CausalMode::Deletion => (&x, &zeros),
                    CausalMode::Insertion => (&blurred, &x),
                };
                model.calls.clear();
                let curves =
                    causal_curves(&mut |t| model.logits(t), &xt, &st, &classes, mode, variant, InsertionBlur::Gkern, 5)
                        .unwrap();
                let points = steps(variant, h, w) + 1;
                let calls = std::mem::take(&mut model.calls);
                assert_eq!(calls.len(), (b * points).div_ceil(5), "{calls:?}");
                assert!(calls.iter().all(|&n| n <= 5) && calls.iter().sum::<usize>() == b * points);
                for i in 0..b {
                    let (s, f) = (&start[i * image..][..image], &finish[i * image..][..image]);
                    let step = step_pixels(variant, h, w);
                    let want = naive_curve(&mut model, s, f, &sal[i * h * w..][..h * w], (h, w), classes[i], step);
                    assert_eq!(curves[i].len(), points);
                    for (g, w) in curves[i].iter().zip(&want) {
                        assert!((g - w).abs() < 1e-6, "{variant:?} {mode:?} image {i}: {g} vs {w}");
                    }
                    // The ends are the start image and the fully changed one.
                    let score = |m: &mut Linear, img: &[f32]| {
                        let t = Tensor::from_vec(img.to_vec(), (1, 3, h, w), &cpu()).unwrap();
                        class_probabilities(&m.logits(&t).unwrap(), &[classes[i]]).unwrap()[0]
                    };
                    assert!((curves[i][0] - score(&mut model, s)).abs() < 1e-6);
                    assert!((curves[i][points - 1] - score(&mut model, f)).abs() < 1e-6);
                }
            }
        }
        let bad = Tensor::from_vec(vec![f32::NAN; b * h * w], (b, h, w), &cpu()).unwrap();
        let mode = CausalMode::Deletion;
        assert!(causal_curves(
            &mut |t| model.logits(t),
            &xt,
            &bad,
            &classes,
            mode,
            CausalVariant::Authors,
            InsertionBlur::Gkern,
            5
        )
        .is_err());
        assert!(causal_curves(
            &mut |t| model.logits(t),
            &xt,
            &st,
            &classes,
            mode,
            CausalVariant::Authors,
            InsertionBlur::Gkern,
            0
        )
        .is_err());
    }
}
