//! Ablation-CAM (Desai & Ramaswamy 2020): the relative drop of the target logit when channel k of
//! the target activation is zeroed, `w_k = (y_c - y_c^(k)) / y_c` (pytorch-grad-cam's form). Only
//! the layers after the target run again, `chunk` ablated copies per forward pass.

use candle_core::{DType, Result, Tensor};

use crate::method::{weighted_sum, CamMethod};
use crate::subject::{class_index, Subject};

pub struct AblationCam {
    /// Ablated activations per forward pass.
    pub chunk: usize,
}

/// A logit this close to 0 is replaced by ±this in the denominator, so weights stay finite.
const MIN_SCORE: f32 = 1e-7;

impl CamMethod for AblationCam {
    fn name(&self) -> &'static str {
        "Ablation-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let acts = subject.activations(x)?;
        let a = &acts.target;
        let (b, k, _, _) = a.dims4()?;
        let dev = x.device();
        let score = |logits: Tensor, cls: &[u32]| -> Result<Vec<f32>> {
            logits.gather(&class_index(cls, dev)?, 1)?.flatten_all()?.to_vec1()
        };
        let base = score(subject.logits_from(&acts, a)?, classes)?;
        let pairs: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..k).map(move |c| (i, c))).collect();
        let mut weights = vec![0f32; b * k];
        crate::chunks::for_each_chunk(&pairs, self.chunk, "Ablation-CAM", |chunk| {
            let ids: Vec<u32> = chunk.iter().map(|&(i, _)| i as u32).collect();
            let keep: Vec<f32> =
                chunk.iter().flat_map(|&(_, c)| (0..k).map(move |j| if j == c { 0.0 } else { 1.0 })).collect();
            let keep = Tensor::from_vec(keep, (chunk.len(), k, 1, 1), dev)?.to_dtype(DType::F32)?;
            let sub = acts.select(&ids)?;
            let ablated = sub.target.broadcast_mul(&keep)?;
            let cls: Vec<u32> = chunk.iter().map(|&(i, _)| classes[i]).collect();
            for (&(i, c), y) in chunk.iter().zip(score(subject.logits_from(&sub, &ablated)?, &cls)?) {
                let y0 = base[i];
                let denominator = if y0.abs() < MIN_SCORE { MIN_SCORE.copysign(y0) } else { y0 };
                weights[i * k + c] = (y0 - y) / denominator;
            }
            Ok(())
        })?;
        weighted_sum(&Tensor::from_vec(weights, (b, k), dev)?, a)
    }
}
