//! CAM (Zhou et al. 2016): the classifier's weights of class c as channel weights,
//! `w_k = W_ck`. Defined only for a GAP network whose classifier is one linear layer on the
//! pooled last stage (ResNet); for it Grad-CAM gives the same map (its gradient is `W_ck / hw`).

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::method::{weighted_sum, CamMethod};
use crate::subject::{Pooling, Subject};

pub struct Cam;

impl CamMethod for Cam {
    fn name(&self) -> &'static str {
        "CAM"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let Pooling::Gap(model) = subject.pooling else {
            bail!("CAM explains a GAP network; for the CA model use Grad-CAM or raw attention");
        };
        if subject.layer != 4 {
            bail!(
                "CAM reads the classifier weights, so it explains the last stage only (layer 4, not {})",
                subject.layer
            );
        }
        let Some((weight, _)) = model.net.linear_classifier() else {
            bail!(
                "CAM needs a linear classifier on the pooled features ({:?} normalises first); use Grad-CAM",
                model.config.arch
            );
        };
        let ids = Tensor::from_slice(classes, classes.len(), x.device())?;
        weighted_sum(&weight.index_select(&ids, 0)?, &subject.activations(x)?.target)
    }
}
