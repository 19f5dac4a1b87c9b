//! XGrad-CAM (Fu et al. 2020): gradients weighted by the normalised activation,
//! `w_k = sum_ij A^k_ij g^k_ij / (sum_ij A^k_ij + eps)`.

use candle_core::{Result, Tensor};

use crate::gradients::target_gradients;
use crate::method::{weighted_sum, CamMethod};
use crate::subject::Subject;

/// pytorch-grad-cam's epsilon.
pub const EPS: f64 = 1e-7;

pub struct XGradCam;

impl CamMethod for XGradCam {
    fn name(&self) -> &'static str {
        "XGrad-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let t = target_gradients(subject, x, classes)?;
        let a = &t.activations;
        let sum_a = (a.sum((2, 3))? + EPS)?;
        let w = ((&t.gradients * a)?.sum((2, 3))? / sum_a)?;
        weighted_sum(&w, a)
    }
}
