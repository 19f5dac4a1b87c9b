//! CAM (Zhou et al. 2016): the classifier's weights of class c as channel weights,
//! `w_k = W_ck`. Defined only for a model whose logits are one linear layer on the global average
//! of the target activation (a ResNet's GAP network at its last stage); for it Grad-CAM gives the
//! same map (its gradient is `W_ck / hw`).

use candle_core::{bail, Result, Tensor};

use crate::method::{weighted_sum, CamMethod};
use crate::subject::Subject;

pub struct Cam;

impl CamMethod for Cam {
    fn name(&self) -> &'static str {
        "CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let Some(weight) = subject.model.class_weights()? else {
            bail!(
                "CAM needs logits that are a linear layer on the global average of the target layer (a GAP \
                 ResNet at stage 4); use Grad-CAM, which equals CAM there"
            );
        };
        let ids = Tensor::from_slice(classes, classes.len(), x.device())?;
        weighted_sum(&weight.index_select(&ids, 0)?, &subject.activations(x)?.target)
    }
}
