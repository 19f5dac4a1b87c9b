//! ConvNeXt-T/S/B in timm's layout and parameter names (`stem.{0,1}`,
//! `stages.{i}.downsample.{0,1}`, `stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}`,
//! `head.{norm,fc}`), so timm's `convnext_*` safetensors load unchanged. No stochastic depth: the
//! backbone is evaluated or fine-tuned without it.

use candle_core::{Result, Tensor};
use castream_kernels::Conv2dParams;

use crate::backbone::Backbone;
use crate::config::{Arch, BackboneConfig, Stem};
use crate::init::Init;
use crate::layers::{Conv2d, LayerNorm, Linear, Params};

const WEIGHT: Init = Init::TruncNormal { std: 0.02 };
const BIAS: Init = Init::Constant(0.0);
/// timm's `ls_init_value`: residual branches start almost switched off.
const LAYER_SCALE: f64 = 1e-6;

/// Depthwise 7x7 conv, LayerNorm over channels, MLP (x4, exact GELU), layer scale, residual.
struct Block {
    conv_dw: Conv2d,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
}

impl Block {
    fn new(ps: &mut Params, name: &str, c: usize, layer_scale: f64) -> Result<Block> {
        let dw = Conv2dParams { stride: 1, padding: 3, groups: c };
        Ok(Block {
            conv_dw: Conv2d::new(ps, &format!("{name}.conv_dw"), [c, 1, 7, 7], dw, WEIGHT, Some(BIAS))?,
            norm: LayerNorm::new(ps, &format!("{name}.norm"), c)?,
            fc1: Linear::new(ps, &format!("{name}.mlp.fc1"), c, 4 * c, WEIGHT, BIAS)?,
            fc2: Linear::new(ps, &format!("{name}.mlp.fc2"), 4 * c, c, WEIGHT, BIAS)?,
            gamma: ps.tensor(format!("{name}.gamma"), &[c], Init::Constant(layer_scale))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv_dw.forward(x)?.permute((0, 2, 3, 1))?;
        let y = self.fc1.forward(&self.norm.forward_last(&y)?)?.gelu_erf()?;
        let y = self.fc2.forward(&y)?.broadcast_mul(&self.gamma)?;
        y.permute((0, 3, 1, 2))? + x
    }
}

struct Stage {
    /// LayerNorm2d + 2x2/2 conv, for every stage but the first.
    downsample: Option<(LayerNorm, Conv2d)>,
    blocks: Vec<Block>,
}

impl Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.downsample {
            Some((norm, conv)) => conv.forward(&norm.forward(x, 1)?)?,
            None => x.clone(),
        };
        self.blocks.iter().try_fold(x, |x, b| b.forward(&x))
    }
}

pub(crate) struct ConvNext {
    stem_conv: Conv2d,
    stem_norm: LayerNorm,
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
        let patchify = Conv2dParams { stride: patch, padding: 0, groups: 1 };
        let stem_conv = Conv2d::new(ps, "stem.0", [dims[0], 3, patch, patch], patchify, WEIGHT, Some(BIAS))?;
        let stem_norm = LayerNorm::new(ps, "stem.1", dims[0])?;
        let mut stages = Vec::with_capacity(4);
        for (i, depth) in config.depths().into_iter().enumerate() {
            let name = format!("stages.{i}");
            let downsample = if i == 0 {
                None
            } else {
                let norm = LayerNorm::new(ps, &format!("{name}.downsample.0"), dims[i - 1])?;
                let halve = Conv2dParams { stride: 2, padding: 0, groups: 1 };
                let conv = Conv2d::new(
                    ps,
                    &format!("{name}.downsample.1"),
                    [dims[i], dims[i - 1], 2, 2],
                    halve,
                    WEIGHT,
                    Some(BIAS),
                )?;
                Some((norm, conv))
            };
            let layer_scale = config.layer_scale.unwrap_or(LAYER_SCALE);
            let blocks = (0..depth)
                .map(|j| Block::new(ps, &format!("{name}.blocks.{j}"), dims[i], layer_scale))
                .collect::<Result<_>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let head_norm = LayerNorm::new(ps, "head.norm", dims[3])?;
        let head_fc = Linear::new(ps, "head.fc", dims[3], config.num_classes, WEIGHT, BIAS)?;
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

    fn stem(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.stem_norm.forward(&self.stem_conv.forward(x)?, 1)
    }

    fn stage(&self, l: usize, f: &Tensor, _train: bool) -> Result<Tensor> {
        let stage = l.checked_sub(1).and_then(|i| self.stages.get(i));
        let Some(stage) = stage else { candle_core::bail!("ConvNeXt stage {l} does not exist (stages are 1..=4)") };
        stage.forward(f)
    }

    fn classify(&self, pooled: &Tensor) -> Result<Tensor> {
        self.head_fc.forward(&self.head_norm.forward_last(pooled)?)
    }
}
