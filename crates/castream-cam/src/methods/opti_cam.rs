//! Opti-CAM (Zhang, Torres, Sicre, Avrithis, Ayache, CVIU 2024): the map is a convex combination
//! of the rectified feature maps, `S = Σ_k softmax(u)_k A^k`, its weights `u` optimised per image
//! so that the class logit of the masked image `normalise(denormalise(x) · n(up(S)))` is as large
//! as possible (`up`: bilinear to the input, `n`: per-image min-max). As the official code: `u`
//! starts at 0.5 everywhere (uniform weights), Adam (β 0.9 / 0.999, ε 1e-8), learning rate 0.1,
//! 50 iterations. Unlike it, there is no early stop: the official check looks at the loss of the
//! whole batch, which would make an image's map depend on the images beside it.

use candle_core::{Result, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::method::{upsample, weighted_sum, CamMethod};
use crate::subject::{class_index, Subject};

pub struct OptiCam {
    /// Adam steps per batch.
    pub iterations: usize,
    pub learning_rate: f64,
}

impl OptiCam {
    /// The official code's defaults.
    pub const ITERATIONS: usize = 50;
    pub const LEARNING_RATE: f64 = 0.1;

    /// The optimised weights `softmax(u)` `(B, K)` and the objective — the sum over the batch of
    /// the class logits of the masked images — before each step and after the last.
    pub fn optimise(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<(Tensor, Vec<f64>)> {
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
            let mask = minmax_at_extremes(&upsample(&weighted_sum(&weights, &a)?, h, w)?)?;
            let masked = subject.normalisation.from_pixels(&pixels.broadcast_mul(&mask.unsqueeze(1)?)?)?;
            subject.logits(&masked)?.gather(&index, 1)?.sum_all()
        };
        let mut history = Vec::with_capacity(self.iterations + 1);
        for _ in 0..self.iterations {
            let score = objective(u.as_tensor())?;
            history.push(score.to_scalar::<f32>()? as f64);
            adam.backward_step(&score.neg()?)?;
        }
        history.push(objective(u.as_tensor())?.to_scalar::<f32>()? as f64);
        Ok((candle_nn::ops::softmax(u.as_tensor(), D::Minus1)?.detach(), history))
    }
}

/// Per-image min-max normalisation of `(B, H, W)` maps whose gradient reaches one extreme
/// element each, as torch's `max(dim)` does. An upsampled map is flat in its clamped corners (a
/// 7x7 map at 224 px ties 16x16 pixels at each corner value), and a max reduction's gradient
/// would reach every tied pixel, multiplying the true derivative by their count.
fn minmax_at_extremes(maps: &Tensor) -> Result<Tensor> {
    let flat = maps.flatten_from(1)?;
    let hi = flat.gather(&flat.argmax_keepdim(D::Minus1)?, D::Minus1)?;
    let lo = flat.gather(&flat.argmin_keepdim(D::Minus1)?, D::Minus1)?;
    let range = ((hi - &lo)? + 1e-7)?;
    flat.broadcast_sub(&lo)?.broadcast_div(&range)?.reshape(maps.shape())
}

impl CamMethod for OptiCam {
    fn name(&self) -> &'static str {
        "Opti-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let (weights, _) = self.optimise(subject, x, classes)?;
        weighted_sum(&weights, &subject.activations(x)?.target.relu()?)
    }
}
