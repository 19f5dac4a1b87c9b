//! ConvNeXt-T/S/B in timm's layout and parameter names (`stem.{0,1}`,
//! `stages.{i}.downsample.{0,1}`, `stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}`,
//! `head.{norm,fc}`), so timm's `convnext_*` safetensors load unchanged. No stochastic depth: the
//! backbone is evaluated or fine-tuned without it. The quick profile's variant may swap the
//! LayerNorms of stem, blocks and downsampling for BatchNorms and timm's weight init for LeCun's
//! ([`ConvNorm`], [`WeightInit`]).

use candle_core::{Result, Tensor};
use castream_kernels::{Conv2dParams, Kernels, MlpParams};

use crate::backbone::Backbone;
use crate::config::{Arch, BackboneConfig, ConvNorm, Stem, WeightInit};
use crate::init::Init;
use crate::layers::{BatchNorm2d, Conv2d, LayerNorm, Linear, Params};

const BIAS: Init = Init::Constant(0.0);
/// timm's `ls_init_value`: residual branches start almost switched off.
const LAYER_SCALE: f64 = 1e-6;

/// How the layers are built: normalisation, weight init and the blocks' layer-scale value.
#[derive(Clone, Copy)]
struct Recipe {
    norm: ConvNorm,
    weight: WeightInit,
    layer_scale: f64,
}

impl Recipe {
    fn weight(self) -> Init {
        match self.weight {
            WeightInit::TruncNormal => Init::TruncNormal { std: 0.02 },
            WeightInit::FanIn => Init::LecunNormal,
        }
    }

    fn norm(self, ps: &mut Params, name: &str, c: usize) -> Result<Norm> {
        Ok(match self.norm {
            ConvNorm::Layer => Norm::Layer(LayerNorm::new(ps, name, c)?),
            ConvNorm::Batch => Norm::Batch(BatchNorm2d::new(ps, name, c)?),
        })
    }
}

/// A normalisation over the channels of an NCHW tensor.
enum Norm {
    Layer(LayerNorm),
    Batch(BatchNorm2d),
}

impl Norm {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Layer(ln) => ln.forward(x, 1),
            Norm::Batch(bn) => bn.forward(x, train, false),
        }
    }

    /// `norm(conv(x))`; an evaluation-mode BatchNorm is folded into the conv (one pass instead of
    /// four over the activation).
    fn after_conv(&self, conv: &Conv2d, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Batch(bn) if !train => bn.fold_into(conv, x, false),
            _ => self.forward(&conv.forward(x)?, train),
        }
    }
}

/// Depthwise 7x7 conv, norm over channels, MLP (x4, exact GELU), layer scale, residual. The norm
/// runs before the permute to channels-last (timm normalises after it: the same function).
struct Block {
    conv_dw: Conv2d,
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
    kernels: Kernels,
}

impl Block {
    fn new(ps: &mut Params, name: &str, c: usize, recipe: Recipe) -> Result<Block> {
        let dw = Conv2dParams { stride: 1, padding: 3, groups: c };
        let w = recipe.weight();
        Ok(Block {
            conv_dw: Conv2d::new(ps, &format!("{name}.conv_dw"), [c, 1, 7, 7], dw, w, Some(BIAS))?,
            norm: recipe.norm(ps, &format!("{name}.norm"), c)?,
            fc1: Linear::new(ps, &format!("{name}.mlp.fc1"), c, 4 * c, w, BIAS)?,
            fc2: Linear::new(ps, &format!("{name}.mlp.fc2"), 4 * c, c, w, BIAS)?,
            gamma: ps.tensor(format!("{name}.gamma"), &[c], Init::Constant(recipe.layer_scale))?,
            kernels: ps.kernels,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm.after_conv(&self.conv_dw, x, train)?;
        let ((w1, b1), (w2, b2)) = (self.fc1.tensors(), self.fc2.tensors());
        let p = MlpParams { w1, b1, w2, b2, gamma: &self.gamma };
        castream_kernels::convnext_mlp(x, &y, &p, self.kernels)
    }
}

struct Stage {
    /// Norm + 2x2/2 conv, for every stage but the first.
    downsample: Option<(Norm, Conv2d)>,
    blocks: Vec<Block>,
}

impl Stage {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match &self.downsample {
            Some((norm, conv)) => conv.forward(&norm.forward(x, train)?)?,
            None => x.clone(),
        };
        self.blocks.iter().try_fold(x, |x, b| b.forward(&x, train))
    }
}

pub(crate) struct ConvNext {
    stem_conv: Conv2d,
    stem_norm: Norm,
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    head_fc: Linear,
    widths: [usize; 5],
    num_classes: usize,
}

impl ConvNext {
    pub(crate) fn new(config: &BackboneConfig, ps: &mut Params) -> Result<ConvNext> {
        debug_assert!(matches!(config.arch, Arch::ConvnextTiny | Arch::ConvnextSmall | Arch::ConvnextBase));
        let dims: [usize; 4] = std::array::from_fn(|i| config.base_width() << i);
        let patch = match config.stem {
            Stem::Imagenet => 4,
            Stem::Small => 2,
        };
        let recipe = Recipe {
            norm: config.norm.unwrap_or_default(),
            weight: config.init.unwrap_or_default(),
            layer_scale: config.layer_scale.unwrap_or(LAYER_SCALE),
        };
        let weight = recipe.weight();
        let patchify = Conv2dParams { stride: patch, padding: 0, groups: 1 };
        let stem_conv = Conv2d::new(ps, "stem.0", [dims[0], 3, patch, patch], patchify, weight, Some(BIAS))?;
        let stem_norm = recipe.norm(ps, "stem.1", dims[0])?;
        let mut stages = Vec::with_capacity(4);
        for (i, depth) in config.depths().into_iter().enumerate() {
            let name = format!("stages.{i}");
            let downsample = if i == 0 {
                None
            } else {
                let norm = recipe.norm(ps, &format!("{name}.downsample.0"), dims[i - 1])?;
                let halve = Conv2dParams { stride: 2, padding: 0, groups: 1 };
                let conv = Conv2d::new(
                    ps,
                    &format!("{name}.downsample.1"),
                    [dims[i], dims[i - 1], 2, 2],
                    halve,
                    weight,
                    Some(BIAS),
                )?;
                Some((norm, conv))
            };
            let blocks = (0..depth)
                .map(|j| Block::new(ps, &format!("{name}.blocks.{j}"), dims[i], recipe))
                .collect::<Result<_>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let head_norm = LayerNorm::new(ps, "head.norm", dims[3])?;
        let head_fc = Linear::new(ps, "head.fc", dims[3], config.num_classes, weight, BIAS)?;
        let widths = [dims[0], dims[0], dims[1], dims[2], dims[3]];
        Ok(ConvNext { stem_conv, stem_norm, stages, head_norm, head_fc, widths, num_classes: config.num_classes })
    }
}

impl Backbone for ConvNext {
    fn stage_widths(&self) -> [usize; 5] {
        self.widths
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn stem(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.stem_norm.after_conv(&self.stem_conv, x, train)
    }

    fn stage(&self, l: usize, f: &Tensor, train: bool) -> Result<Tensor> {
        let stage = l.checked_sub(1).and_then(|i| self.stages.get(i));
        let Some(stage) = stage else { candle_core::bail!("ConvNeXt stage {l} does not exist (stages are 1..=4)") };
        stage.forward(f, train)
    }

    fn classify(&self, pooled: &Tensor) -> Result<Tensor> {
        self.head_fc.forward(&self.head_norm.forward_last(pooled)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;
    use castream_kernels::Kernels;

    use super::*;
    use castream_data::device::cpu;

    /// The folded evaluation path of a depthwise conv + BatchNorm against the two layers applied
    /// one after the other, with running statistics and affine parameters far from identity.
    #[test]
    fn folded_batchnorm_after_a_depthwise_conv_equals_the_two_layers() {
        let mut ps = Params::new(Some(0), &cpu(), Kernels::default());
        let dw = Conv2dParams { stride: 1, padding: 3, groups: 3 };
        let conv = Conv2d::new(&mut ps, "dw", [3, 1, 7, 7], dw, Init::LecunNormal, Some(Init::Constant(0.5))).unwrap();
        let norm = Norm::Batch(BatchNorm2d::new(&mut ps, "bn", 3).unwrap());
        let vars = ps.into_vars();
        for (name, value) in [
            ("bn.running_mean", [0.5f32, -1.0, 2.0]),
            ("bn.running_var", [0.25, 4.0, 9.0]),
            ("bn.weight", [2.0, -1.0, 0.5]),
            ("bn.bias", [1.0, 0.0, -3.0]),
        ] {
            vars[name].set(&Tensor::new(&value, &cpu()).unwrap()).unwrap();
        }
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 81.0, &cpu()).unwrap().cos().unwrap().reshape((2, 3, 9, 9)).unwrap();
        let folded = norm.after_conv(&conv, &x, false).unwrap();
        let separate = norm.forward(&conv.forward(&x).unwrap(), false).unwrap();
        let diff = (folded - separate).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
