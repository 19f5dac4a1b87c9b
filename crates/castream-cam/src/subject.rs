//! The network being explained, split at the target layer. Gradients through candle exist only
//! for `Var`s, so every method works on [`Activations`]: the target stage's output `A` (which a
//! gradient method wraps in a `Var`) and the earlier stage outputs a CA model's stream also reads.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use castream_backbones::Model;
use castream_data::normalise::Normalisation;
use castream_stream::CaModel;

/// How the backbone's last feature map is pooled: the original GAP network, or the same frozen
/// backbone with CA-Stream.
#[derive(Clone, Copy)]
pub enum Pooling<'a> {
    Gap(&'a Model),
    Ca(&'a CaModel),
}

/// A network to explain: the pooling, the input normalisation it was trained with (Score-CAM
/// masks images in pixel space) and the target stage (`F_4`, ResNet's `layer4`, by default).
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub pooling: Pooling<'a>,
    pub normalisation: Normalisation,
    /// Stage `l` in 1..=4 whose output `F_l` is explained.
    pub layer: usize,
}

/// The forward pass up to the target stage.
pub struct Activations {
    /// `F_0 … F_{l-1}`, detached: the CA stream reads them (empty for a GAP model).
    pub context: Vec<Tensor>,
    /// `A = F_l`, detached, `(B, K, h, w)`.
    pub target: Tensor,
}

impl Activations {
    /// The rows `ids` of every tensor (a batch built from repeated images).
    pub fn select(&self, ids: &[u32]) -> Result<Activations> {
        let ids = Tensor::from_slice(ids, ids.len(), self.target.device())?;
        Ok(Activations {
            context: self.context.iter().map(|t| t.index_select(&ids, 0)).collect::<candle_core::Result<_>>()?,
            target: self.target.index_select(&ids, 0)?,
        })
    }
}

impl<'a> Subject<'a> {
    /// The last stage of `pooling`, with `normalisation`.
    pub fn new(pooling: Pooling<'a>, normalisation: Normalisation) -> Subject<'a> {
        Subject { pooling, normalisation, layer: 4 }
    }

    fn backbone(&self) -> &'a Model {
        match self.pooling {
            Pooling::Gap(m) => m,
            Pooling::Ca(m) => &m.backbone,
        }
    }

    pub fn is_ca(&self) -> bool {
        matches!(self.pooling, Pooling::Ca(_))
    }

    pub fn num_classes(&self) -> usize {
        self.backbone().net.num_classes()
    }

    /// Runs the backbone (evaluation mode) to the target stage.
    pub fn activations(&self, x: &Tensor) -> Result<Activations> {
        if !(1..=4).contains(&self.layer) {
            bail!("target layer {} is not a stage: choose 1, 2, 3 or 4", self.layer);
        }
        let net = &self.backbone().net;
        let mut context = Vec::new();
        let mut f = net.stem(x, false)?;
        for l in 1..=self.layer {
            if self.is_ca() {
                context.push(f.detach());
            }
            f = net.stage(l, &f, false)?;
        }
        Ok(Activations { context, target: f.detach() })
    }

    /// Logits with the target activation replaced by `a` (same batch as `acts`); gradients flow
    /// to `a` when it is a `Var`'s tensor.
    pub fn logits_from(&self, acts: &Activations, a: &Tensor) -> Result<Tensor> {
        let net = &self.backbone().net;
        match self.pooling {
            Pooling::Gap(_) => Ok(net.head(&net.forward_from(self.layer, a, false)?)?),
            Pooling::Ca(m) => {
                let mut features = acts.context.clone();
                features.push(a.clone());
                for l in self.layer + 1..=4 {
                    let next = net.stage(l, &features[l - 1], false)?;
                    features.push(next);
                }
                Ok(m.logits_from_features(&features)?.0)
            }
        }
    }

    /// Logits of a normalised input batch.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.pooling {
            Pooling::Gap(m) => m.net.forward(x, false)?,
            Pooling::Ca(m) => m.forward(x)?.0,
        })
    }

    /// The predicted class of every image.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        Ok(self.logits(x)?.argmax(1)?.to_vec1()?)
    }
}

/// Which class each map explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetClass {
    /// The label (the authors' choice, the default).
    #[default]
    GroundTruth,
    /// The network's top-1 prediction.
    Predicted,
}

impl TargetClass {
    /// The class per image: `labels` for the ground truth, the argmax otherwise.
    pub fn resolve(self, subject: &Subject, x: &Tensor, labels: &[u32]) -> Result<Vec<u32>> {
        match self {
            TargetClass::GroundTruth => Ok(labels.to_vec()),
            TargetClass::Predicted => subject.predict(x),
        }
    }
}

/// `(B, 1)` u32 indices for `gather`.
pub(crate) fn class_index(classes: &[u32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(classes, (classes.len(), 1), device)?.to_dtype(DType::U32)?)
}
