//! Grad-CAM++ (Chattopadhay et al. 2018) in the closed form with gradient powers used by the
//! authors and by pytorch-grad-cam: `alpha = g^2 / (2 g^2 + (sum_ij A^k_ij) g^3 + eps)`,
//! `alpha = 0` where `g = 0`, `w_k = sum_ij relu(g_ij) alpha_ij`.

use candle_core::{Result, Tensor};

use crate::gradients::target_gradients;
use crate::method::{weighted_sum, CamMethod};
use crate::subject::Subject;

/// pytorch-grad-cam's epsilon.
pub const EPS: f64 = 1e-6;

pub struct GradCamPlusPlus;

impl CamMethod for GradCamPlusPlus {
    fn name(&self) -> &'static str {
        "Grad-CAM++"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let t = target_gradients(subject, x, classes)?;
        let (a, g) = (&t.activations, &t.gradients);
        let g2 = g.sqr()?;
        let g3 = (&g2 * g)?;
        let sum_a = a.sum_keepdim((2, 3))?;
        let denominator = ((g2.affine(2.0, EPS)?) + g3.broadcast_mul(&sum_a)?)?;
        // Where g = 0 the numerator is 0 as well; the mask keeps a 0/0 from ever appearing.
        let alpha = g.ne(0f32)?.where_cond(&(&g2 / denominator)?, &g.zeros_like()?)?;
        weighted_sum(&(g.relu()? * alpha)?.sum((2, 3))?, a)
    }
}
