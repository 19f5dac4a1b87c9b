//! Layer-CAM (Jiang et al. 2021): positive gradients as per-position weights,
//! `S = sum_k relu(g^k) * A^k`.

use candle_core::{Result, Tensor};

use crate::gradients::target_gradients;
use crate::method::CamMethod;
use crate::subject::Subject;

pub struct LayerCam;

impl CamMethod for LayerCam {
    fn name(&self) -> &'static str {
        "Layer-CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let t = target_gradients(subject, x, classes)?;
        (t.gradients.relu()? * t.activations)?.sum(1)
    }
}
