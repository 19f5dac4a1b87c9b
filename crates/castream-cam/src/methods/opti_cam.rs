//! Opti-CAM (Zhang, Torres, Sicre, Avrithis, Ayache, CVIU 2024): the map is a convex combination
//! of the rectified feature maps, `S = Σ_k softmax(u)_k A^k`, its weights `u` optimised per image
//! so that the class logit of the masked image `normalise(denormalise(x) · n(up(S)))` is as large
//! as possible (`up`: bilinear to the input, `n`: per-image min-max). As the official demo script
//! (`generate_opticam.py`): `u` starts at 0.5 everywhere (uniform weights), Adam (β 0.9 / 0.999,
//! ε 1e-8), learning rate 0.1, 50 iterations. Unlike it, there is no early stop: the official
//! check looks at the loss of the whole batch, which would make an image's map depend on the
//! images beside it. Each image has its own weights, and Adam treats each weight on its own.

use candle_core::{bail, Result, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use castream_stream::minmax_normalise;

use crate::method::{resize, weighted_sum, CamMethod};
use crate::subject::{class_index, Subject};

pub struct OptiCam {
    /// Adam steps.
    pub iterations: usize,
    pub learning_rate: f64,
}

/// What an optimisation ends with.
pub struct Optimised {
    /// `softmax(u)`, `(B, K)`.
    pub weights: Tensor,
    /// `Σ_k softmax(u)_k relu(A^k)`, `(B, h, w)` at the target layer's resolution.
    pub map: Tensor,
    /// The objective — the sum over the batch of the class logits of the masked images — before
    /// each step and after the last.
    pub history: Vec<f64>,
}

impl OptiCam {
    /// The official demo script's defaults.
    pub const ITERATIONS: usize = 50;
    pub const LEARNING_RATE: f64 = 0.1;

    pub fn optimise(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Optimised> {
        let (b, _, h, w) = x.dims4()?;
        let a = subject.activations(x)?.target.relu()?.detach();
        let k = a.dim(1)?;
        let pixels = subject.normalisation.to_pixels(x)?;
        let index = class_index(classes, x.device())?;
        let u = Var::from_tensor(&Tensor::full(0.5f32, (b, k), x.device())?.to_dtype(a.dtype())?)?;
        let params = ParamsAdamW { lr: self.learning_rate, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut adam = AdamW::new(vec![u.clone()], params)?;
        let objective = |u: &Tensor| -> Result<Tensor> {
            let weights = candle_nn::ops::softmax(u, D::Minus1)?;
            // The resize by matrices has a backward on every device (half-pixel, as `upsample`).
            let mask = minmax_normalise(&resize(&weighted_sum(&weights, &a)?, h, w, false)?)?;
            let masked = subject.normalisation.from_pixels(&pixels.broadcast_mul(&mask.unsqueeze(1)?)?)?;
            subject.logits(&masked)?.gather(&index, 1)?.sum_all()
        };
        let mut history = Vec::with_capacity(self.iterations + 1);
        for _ in 0..self.iterations {
            let score = objective(u.as_tensor())?;
            history.push(score.to_scalar::<f32>()? as f64);
            let grads = score.neg()?.backward()?;
            if grads.get(u.as_tensor()).is_none() {
                // AdamW would skip the weights silently and leave the uniform map.
                bail!(
                    "Opti-CAM: no gradient reaches the channel weights: the model's `logits` is not differentiable \
                     in its input (`CamModel::logits` defaults to the detached split forward); Fix: implement \
                     `logits` with the model's whole forward"
                );
            }
            adam.step(&grads)?;
        }
        history.push(objective(u.as_tensor())?.to_scalar::<f32>()? as f64);
        let weights = candle_nn::ops::softmax(u.as_tensor(), D::Minus1)?.detach();
        Ok(Optimised { map: weighted_sum(&weights, &a)?, weights, history })
    }
}

impl CamMethod for OptiCam {
    fn name(&self) -> &'static str {
        "Opti-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        Ok(self.optimise(subject, x, classes)?.map)
    }
}
