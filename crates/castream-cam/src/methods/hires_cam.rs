//! HiResCAM (Draelos & Carin 2020): the element-wise product of gradient and activation summed
//! over channels, `S = sum_k g^k * A^k`, so every position keeps its own gradient.

use candle_core::{Result, Tensor};

use crate::gradients::target_gradients;
use crate::method::CamMethod;
use crate::subject::Subject;

pub struct HiResCam;

impl CamMethod for HiResCam {
    fn name(&self) -> &'static str {
        "HiResCAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let t = target_gradients(subject, x, classes)?;
        (t.gradients * t.activations)?.sum(1)
    }
}
