//! Score-CAM (Wang et al. 2020), the authors' variant: each channel `A^k`, bilinearly upsampled
//! (with `align_corners = true` by default, as their `nn.UpsamplingBilinear2d`) and min-max normalised, masks the input in pixel space; `w_k` is the softmax probability of
//! class c on `normalise(denormalise(x) * mask_k)` — no softmax across channels, no baseline.
//! The `B x K` masked images go through the network in batches of `chunk`; models that share a
//! frozen backbone (the GAP network and its CA models) share them, each head scoring its own class.

use candle_core::{Result, Tensor, D};
use castream_stream::minmax_normalise;

use crate::method::{upsample, upsample_align_corners, weighted_sum, CamMethod};
use crate::methods::Upsampling;
use crate::subject::{class_index, Subject};

pub struct ScoreCam {
    /// Masked images per forward pass (the authors use 128).
    pub chunk: usize,
    /// Score only the `n` channels with the highest mean activation of each image; the others get
    /// weight 0. `None` scores every channel (the method as published). Subsampling trades
    /// fidelity for a `K / n` speed-up; tables state when it is used.
    pub channels: Option<usize>,
    /// How each channel is resized to the input (the authors': `align_corners = true`).
    pub upsampling: Upsampling,
}

impl ScoreCam {
    /// The `(image, channel)` pairs to score.
    fn pairs(&self, a: &Tensor) -> Result<Vec<(usize, usize)>> {
        let (b, k, _, _) = a.dims4()?;
        let n = self.channels.unwrap_or(k).min(k);
        if n == k {
            return Ok((0..b).flat_map(|i| (0..k).map(move |c| (i, c))).collect());
        }
        let means: Vec<Vec<f32>> = a.mean((2, 3))?.to_vec2()?;
        Ok(means
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let mut order: Vec<usize> = (0..k).collect();
                order.sort_by(|&p, &q| m[q].total_cmp(&m[p]).then(p.cmp(&q)));
                order.truncate(n);
                order.sort_unstable();
                order.into_iter().map(move |c| (i, c))
            })
            .collect())
    }
}

impl CamMethod for ScoreCam {
    fn name(&self) -> &'static str {
        "Score-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        Ok(self.scored(&[subject], x, &[classes.to_vec()])?.remove(0))
    }

    fn saliency_shared(&self, subjects: &[&Subject], x: &Tensor, classes: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        self.scored(subjects, x, classes)
    }
}

impl ScoreCam {
    /// Every subject's map from one set of masked images: the masks are the first subject's
    /// channels, and each masked batch runs once through the shared layers.
    fn scored(&self, subjects: &[&Subject], x: &Tensor, classes: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        let Some(&lead) = subjects.first() else { return Ok(Vec::new()) };
        if let Some(other) = subjects.iter().find(|s| s.normalisation != lead.normalisation) {
            candle_core::bail!(
                "Score-CAM of shared subjects needs one input normalisation, got {:?} and {:?}",
                lead.normalisation,
                other.normalisation
            );
        }
        let (b, _, h, w) = x.dims4()?;
        let a = lead.activations(x)?.target;
        let k = a.dim(1)?;
        // (B*K, H, W) masks in [0, 1]; a constant channel gives an all-zero mask.
        let channels = a.flatten_to(1)?;
        let resized = match self.upsampling {
            Upsampling::AlignCorners => upsample_align_corners(&channels, h, w)?,
            Upsampling::HalfPixel => upsample(&channels, h, w)?,
        };
        let masks = minmax_normalise(&resized)?.reshape((b, k, h, w))?;
        let pixels = lead.normalisation.to_pixels(x)?;
        let pairs = self.pairs(&a)?;
        let mut weights = vec![vec![0f32; b * k]; subjects.len()];
        crate::chunks::for_each_chunk(&pairs, self.chunk, "Score-CAM", |chunk| {
            let img = Tensor::from_iter(chunk.iter().map(|&(i, _)| i as u32), x.device())?;
            let flat = Tensor::from_iter(chunk.iter().map(|&(i, c)| (i * k + c) as u32), x.device())?;
            let mask = masks.flatten_to(1)?.index_select(&flat, 0)?.unsqueeze(1)?;
            let masked = lead.normalisation.from_pixels(&pixels.index_select(&img, 0)?.broadcast_mul(&mask)?)?;
            // One subject: its own forward (a model may make it cheaper than the split one).
            let logits: Vec<Tensor> = match subjects {
                [one] => vec![one.logits(&masked)?],
                _ => {
                    let acts = lead.activations(&masked)?;
                    subjects.iter().map(|s| s.logits_from(&acts, &acts.target)).collect::<Result<_>>()?
                }
            };
            for ((weights, logits), classes) in weights.iter_mut().zip(logits).zip(classes) {
                let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let cls: Vec<u32> = chunk.iter().map(|&(i, _)| classes[i]).collect();
                let p: Vec<f32> = probs.gather(&class_index(&cls, x.device())?, 1)?.flatten_all()?.to_vec1()?;
                for (&(i, c), p) in chunk.iter().zip(p) {
                    weights[i * k + c] = p;
                }
            }
            Ok(())
        })?;
        weights.into_iter().map(|wk| weighted_sum(&Tensor::from_vec(wk, (b, k), x.device())?, &a)).collect()
    }
}
