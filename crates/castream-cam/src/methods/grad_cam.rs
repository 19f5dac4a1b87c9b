//! Grad-CAM (Selvaraju et al. 2017): `w_k = mean_ij dy_c/dA^k_ij`.

use candle_core::{Result, Tensor};

use crate::gradients::target_gradients;
use crate::method::{weighted_sum, CamMethod};
use crate::subject::Subject;

pub struct GradCam;

impl CamMethod for GradCam {
    fn name(&self) -> &'static str {
        "Grad-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let t = target_gradients(subject, x, classes)?;
        weighted_sum(&t.gradients.mean((2, 3))?, &t.activations)
    }
}
