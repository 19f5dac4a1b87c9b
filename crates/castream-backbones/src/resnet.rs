//! ResNet-18/34/50 as torchvision builds them (v1.5: a bottleneck's stride sits on its 3x3
//! convolution), with torchvision's parameter names, so its checkpoints and timm's `*.tv_in1k`
//! load unchanged.

use std::ops::RangeInclusive;

use candle_core::{Result, Tensor};
use castream_kernels::{Conv2dParams, Kernels};

use crate::backbone::Backbone;
use crate::config::{Arch, BackboneConfig, Stem};
use crate::init::Init;
use crate::layers::{BatchNorm2d, Conv2d, Linear, Params, BN_EPS};

/// A convolution followed by its BatchNorm: `convN`/`bnN` in a block, `downsample.{0,1}`.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(ps: &mut Params, conv: &str, bn: &str, shape: [usize; 4], stride: usize) -> Result<ConvBn> {
        let params = Conv2dParams { stride, padding: shape[3] / 2, groups: 1 };
        Ok(ConvBn {
            conv: Conv2d::new(ps, conv, shape, params, Init::KaimingNormalFanOut, None)?,
            bn: BatchNorm2d::new(ps, bn, shape[0])?,
        })
    }

    /// As one layer of a residual block in training mode.
    fn layer(&self) -> Result<castream_kernels::ConvBnLayer<'_>> {
        self.bn.layer_after(&self.conv)
    }

    /// Evaluation: the conv with the BatchNorm folded in; `relu` appends a ReLU. (Training runs
    /// whole blocks, or the stem, as one op.)
    fn evaluate(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        self.bn.fold_into(&self.conv, x, relu)
    }
}

/// A BasicBlock (two 3x3 convolutions) or a Bottleneck (1x1, 3x3, 1x1): a chain of conv + BN with
/// ReLUs between, plus the shortcut, then ReLU.
struct Block {
    chain: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(ps: &mut Params, name: &str, c_in: usize, planes: usize, stride: usize, bottleneck: bool) -> Result<Block> {
        let (shapes, strides, c_out) = if bottleneck {
            let c_out = 4 * planes;
            (vec![[planes, c_in, 1, 1], [planes, planes, 3, 3], [c_out, planes, 1, 1]], vec![1, stride, 1], c_out)
        } else {
            (vec![[planes, c_in, 3, 3], [planes, planes, 3, 3]], vec![stride, 1], planes)
        };
        let chain = shapes
            .into_iter()
            .zip(strides)
            .enumerate()
            .map(|(i, (shape, s))| {
                ConvBn::new(ps, &format!("{name}.conv{}", i + 1), &format!("{name}.bn{}", i + 1), shape, s)
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || c_in != c_out {
            Some(ConvBn::new(
                ps,
                &format!("{name}.downsample.0"),
                &format!("{name}.downsample.1"),
                [c_out, c_in, 1, 1],
                stride,
            )?)
        } else {
            None
        };
        Ok(Block { chain, downsample })
    }

    /// As one block of a training op ([`ResNet::train_blocks`]).
    fn layers(&self) -> Result<castream_kernels::ResidualBlock<'_>> {
        Ok(castream_kernels::ResidualBlock {
            chain: self.chain.iter().map(ConvBn::layer).collect::<Result<_>>()?,
            shortcut: self.downsample.as_ref().map(ConvBn::layer).transpose()?,
        })
    }

    /// Evaluation: each conv with its BatchNorm folded in.
    fn evaluate(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, layer) in self.chain.iter().enumerate() {
            y = layer.evaluate(&y, i + 1 < self.chain.len())?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.evaluate(x, false)?,
            None => x.clone(),
        };
        castream_kernels::add_relu(&y, &shortcut, kernels)
    }
}

/// The stem's max-pool: kernel 3, stride 2, padding 1.
const STEM_POOL: (usize, usize, usize) = (3, 2, 1);

pub(crate) struct ResNet {
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    fc: Linear,
    widths: [usize; 5],
    num_classes: usize,
    kernels: Kernels,
}

impl ResNet {
    pub(crate) fn new(config: &BackboneConfig, ps: &mut Params) -> Result<ResNet> {
        let bottleneck = config.arch == Arch::Resnet50;
        let expansion = if bottleneck { 4 } else { 1 };
        let w = config.base_width();
        let (k, stride) = match config.stem {
            Stem::Imagenet => (7, 2),
            Stem::Small => (3, 1),
        };
        let stem = ConvBn::new(ps, "conv1", "bn1", [w, 3, k, k], stride)?;
        let mut widths = [w; 5];
        let mut c_in = w;
        let mut layers = Vec::with_capacity(4);
        for (i, depth) in config.depths().into_iter().enumerate() {
            let planes = w << i;
            let blocks = (0..depth)
                .map(|j| {
                    let stride = if i > 0 && j == 0 { 2 } else { 1 };
                    let block = Block::new(ps, &format!("layer{}.{j}", i + 1), c_in, planes, stride, bottleneck);
                    c_in = planes * expansion;
                    block
                })
                .collect::<Result<Vec<_>>>()?;
            widths[i + 1] = c_in;
            layers.push(blocks);
        }
        let fc_init = Init::linear_default(c_in);
        let fc = Linear::new(ps, "fc", c_in, config.num_classes, fc_init, fc_init)?;
        Ok(ResNet { stem, layers, fc, widths, num_classes: config.num_classes, kernels: config.kernels })
    }
}

impl Backbone for ResNet {
    fn stage_widths(&self) -> [usize; 5] {
        self.widths
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn stem(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Conv, BatchNorm (folded in evaluation), ReLU and pool in one op.
        if train {
            return self.stem.bn.train_after_pooled(&self.stem.conv, x, STEM_POOL);
        }
        self.stem.bn.fold_into_pooled(&self.stem.conv, x, STEM_POOL)
    }

    fn stage(&self, l: usize, f: &Tensor, train: bool) -> Result<Tensor> {
        self.run_stages(l..=l, f, train)
    }

    /// Training runs all the stages' blocks as one op (one gradient edge between the stem and
    /// the head instead of one per block); evaluation block after block.
    fn run_stages(&self, stages: RangeInclusive<usize>, f: &Tensor, train: bool) -> Result<Tensor> {
        if let Some(l) = stages.clone().find(|l| !(1..=4).contains(l)) {
            candle_core::bail!("ResNet stage {l} does not exist (stages are 1..=4)")
        }
        let mut blocks = stages.flat_map(|l| &self.layers[l - 1]);
        if !train {
            return blocks.try_fold(f.clone(), |x, b| b.evaluate(&x, self.kernels));
        }
        let blocks: Vec<&Block> = blocks.collect();
        let ops = blocks.iter().map(|b| b.layers()).collect::<Result<Vec<_>>>()?;
        let (y, stats) = castream_kernels::residual_blocks_train(f, &ops, BN_EPS, self.kernels)?;
        for (b, stats) in blocks.iter().zip(stats) {
            for (l, s) in b.chain.iter().chain(&b.downsample).zip(stats) {
                l.bn.update_running(s)?;
            }
        }
        Ok(y)
    }

    fn classify(&self, pooled: &Tensor) -> Result<Tensor> {
        self.fc.forward(pooled)
    }

    fn linear_classifier(&self) -> Option<(Tensor, Tensor)> {
        Some(self.fc.parameters())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;
    use castream_data::device::cpu;

    #[test]
    fn folded_evaluation_equals_convolution_then_batchnorm() {
        let mut ps = Params::new(Some(0), &cpu(), Kernels::default());
        let layer = ConvBn::new(&mut ps, "conv", "bn", [4, 3, 3, 3], 2).unwrap();
        let vars = ps.into_vars();
        for (name, value) in [
            ("bn.running_mean", [0.5f32, -1.0, 0.0, 2.0]),
            ("bn.running_var", [0.25, 4.0, 1.0, 9.0]),
            ("bn.bias", [1.0, 0.0, -1.0, 3.0]),
        ] {
            vars[name].set(&Tensor::new(&value, &cpu()).unwrap()).unwrap();
        }
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 49.0, &cpu()).unwrap().sin().unwrap().reshape((2, 3, 7, 7)).unwrap();
        for relu in [false, true] {
            let folded = layer.evaluate(&x, relu).unwrap();
            let unfolded = layer.bn.forward(&layer.conv.forward(&x).unwrap(), false, false).unwrap();
            let unfolded = if relu { unfolded.relu().unwrap() } else { unfolded };
            let diff = (folded - unfolded).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "relu {relu}: {diff}");
        }
    }
}
