//! castream's own networks as [`CamModel`]s: the GAP network and the CA model (the same frozen
//! backbone with CA-Stream), split at a stage `F_l`.

use candle_core::{bail, Result, Tensor};
use castream_backbones::Model;
use castream_stream::{attention_map, AttentionSelect, CaModel};

use crate::methods::PoolingKind;
use crate::model::{Activations, CamModel};

/// How the backbone's last feature map is pooled: the original GAP network, or the same frozen
/// backbone with CA-Stream.
#[derive(Clone, Copy)]
pub enum Pooling<'a> {
    Gap(&'a Model),
    Ca(&'a CaModel),
}

impl<'a> Pooling<'a> {
    pub fn backbone(&self) -> &'a Model {
        match *self {
            Pooling::Gap(m) => m,
            Pooling::Ca(m) => &m.backbone,
        }
    }

    pub fn kind(&self) -> PoolingKind {
        match self {
            Pooling::Gap(_) => PoolingKind::Gap,
            Pooling::Ca(_) => PoolingKind::Ca,
        }
    }
}

/// A castream network explained at stage `layer` (1–4; `F_4`, ResNet's `layer4`, by default).
#[derive(Clone, Copy)]
pub struct Network<'a> {
    pub pooling: Pooling<'a>,
    pub layer: usize,
}

impl<'a> Network<'a> {
    /// `pooling` explained at its last stage.
    pub fn new(pooling: Pooling<'a>) -> Network<'a> {
        Network { pooling, layer: 4 }
    }

    /// `pooling` explained at stage `layer`, which must be 1–4.
    pub fn at_stage(pooling: Pooling<'a>, layer: usize) -> Result<Network<'a>> {
        if !(1..=4).contains(&layer) {
            bail!("target layer {layer} is not a stage: choose 1, 2, 3 or 4");
        }
        Ok(Network { pooling, layer })
    }
}

impl CamModel for Network<'_> {
    fn activations(&self, x: &Tensor) -> Result<Activations> {
        let net = &self.pooling.backbone().net;
        let mut context = Vec::new();
        let mut f = net.stem(x, false)?;
        for l in 1..=self.layer {
            if self.pooling.kind() == PoolingKind::Ca {
                context.push(f.detach());
            }
            f = net.stage(l, &f, false)?;
        }
        Ok(Activations { context, target: f.detach() })
    }

    fn logits_from(&self, acts: &Activations, a: &Tensor) -> Result<Tensor> {
        let net = &self.pooling.backbone().net;
        match self.pooling {
            Pooling::Gap(_) => net.head(&net.forward_from(self.layer, a, false)?),
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

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match self.pooling {
            Pooling::Gap(m) => m.net.forward(x, false),
            Pooling::Ca(m) => Ok(m.forward(x)?.0),
        }
    }

    fn class_weights(&self) -> Result<Option<Tensor>> {
        Ok(match self.pooling {
            Pooling::Gap(m) if self.layer == 4 => m.net.linear_classifier().map(|(w, _)| w),
            _ => None,
        })
    }

    fn attention(&self, x: &Tensor, select: AttentionSelect) -> Result<Option<Tensor>> {
        let Pooling::Ca(m) = self.pooling else { return Ok(None) };
        let (_, _, h, w) = x.dims4()?;
        Ok(Some(attention_map(&m.forward(x)?.1, select, h, w)?))
    }
}
