//! What a backbone is, as written in a spec or a checkpoint sidecar. The defaults reproduce the
//! torchvision / timm ImageNet models exactly; `stem = "small"`, `base_width` and `depths` give the
//! quick profile's narrow networks for 64 px inputs.

use castream_kernels::Kernels;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    ConvnextTiny,
    ConvnextSmall,
    ConvnextBase,
}

impl Arch {
    pub fn is_resnet(self) -> bool {
        matches!(self, Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50)
    }

    /// The name used in configs (`resnet50`, `convnext-tiny`, …).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::ConvnextTiny => "convnext-tiny",
            Arch::ConvnextSmall => "convnext-small",
            Arch::ConvnextBase => "convnext-base",
        }
    }

    /// Blocks per stage of the published model.
    pub fn default_depths(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
            Arch::ConvnextTiny => [3, 3, 9, 3],
            Arch::ConvnextSmall | Arch::ConvnextBase => [3, 3, 27, 3],
        }
    }

    /// Width of the first stage of the published model (ResNet: also the stem width).
    pub fn default_base_width(self) -> usize {
        match self {
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => 64,
            Arch::ConvnextTiny | Arch::ConvnextSmall => 96,
            Arch::ConvnextBase => 128,
        }
    }
}

/// The layers before the first stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// The published stem, stride 4: ResNet 7x7/2 conv + BN + ReLU + 3x3/2 max-pool; ConvNeXt
    /// 4x4/4 patchify conv + LayerNorm. 224 px inputs give `F_0` 56x56 and `F_4` 7x7.
    #[default]
    Imagenet,
    /// Stride 2, for the quick profile's 64 px scenes, so that `F_0` is 32x32 and `F_4` still 4x4
    /// (a stride-4 stem would leave `F_4` 2x2, too coarse for saliency): ResNet 3x3/1 conv + BN +
    /// ReLU + 3x3/2 max-pool; ConvNeXt 2x2/2 patchify conv + LayerNorm.
    Small,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// Architecture family and size.
    pub arch: Arch,
    /// Outputs of the classifier (`fc` / `head.fc`).
    pub num_classes: usize,
    /// Stem variant; `imagenet` unless the inputs are small.
    #[serde(default)]
    pub stem: Stem,
    /// Width of the first stage (default 64 for ResNet, 96 for ConvNeXt-T/S, 128 for ConvNeXt-B);
    /// each later stage doubles it, ResNet-50's bottleneck expansion (x4) is kept. For ResNet it
    /// is also the stem width.
    pub base_width: Option<usize>,
    /// Blocks per stage, ConvNeXt only (default T `[3, 3, 9, 3]`, S/B `[3, 3, 27, 3]`).
    pub depths: Option<[usize; 4]>,
    /// Initial value of ConvNeXt's layer scales `gamma` (default timm's 1e-6). Trained from
    /// scratch for a few epochs on small data, 1e-6 keeps the residual branches off for too long:
    /// the quick ConvNeXt uses a larger value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_scale: Option<f64>,
    /// ConvNeXt's normalisation layers (default timm's `layer`). See [`ConvNorm`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<ConvNorm>,
    /// ConvNeXt's weight initialisation (default timm's `trunc-normal`). See [`WeightInit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<WeightInit>,
    /// Implementation of convolution and pooling.
    #[serde(default)]
    pub kernels: Kernels,
}

/// The normalisation of ConvNeXt's stem, blocks and downsampling layers.
///
/// Trained from scratch on the quick scenes (random background colours and tints), the
/// LayerNorm network stays near chance for hundreds of steps while the BatchNorm one learns as
/// fast as ResNet (docs/backbones.md has the probes). The head's norm stays a LayerNorm either way:
/// the classifier must not depend on batch statistics, since CA-Stream applies it to its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvNorm {
    /// timm's LayerNorm over channels.
    #[default]
    Layer,
    /// BatchNorm2d (batch statistics in training, running statistics in evaluation).
    Batch,
}

/// The initialisation of ConvNeXt's convolution and linear weights (biases start at zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightInit {
    /// timm's truncated normal, std 0.02 whatever the width: on a narrow network it leaves every
    /// MLP's GELU in its nearly linear range at the start.
    #[default]
    TruncNormal,
    /// LeCun normal, `N(0, 1 / fan_in)`: unit-variance pre-activations at any width.
    FanIn,
}

/// A configuration that cannot describe a network.
#[derive(Debug, thiserror::Error)]
#[error("backbone config: `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl BackboneConfig {
    /// The published architecture with `num_classes` outputs and every other field at its default.
    pub fn new(arch: Arch, num_classes: usize) -> BackboneConfig {
        BackboneConfig {
            arch,
            num_classes,
            stem: Stem::Imagenet,
            base_width: None,
            depths: None,
            layer_scale: None,
            norm: None,
            init: None,
            kernels: Kernels::default(),
        }
    }

    /// Most classifier outputs a config may ask for (ImageNet-21k has 21,843).
    pub const MAX_CLASSES: usize = 100_000;
    /// Widest first stage a config may ask for (twice ConvNeXt-B's 128; ResNet-50 at 256 already
    /// has about 16 times its 25.6M parameters).
    pub const MAX_BASE_WIDTH: usize = 256;

    /// The valid values (docs/specs.md, "Valid ranges"): `num_classes` 1 to [`Self::MAX_CLASSES`],
    /// `base_width` 1 to [`Self::MAX_BASE_WIDTH`], ConvNeXt depths at least 1, ConvNeXt-only
    /// options on ConvNeXt only. Checked before any tensor is allocated.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        let range = |field: &'static str, value: usize, max: usize, example: usize| {
            castream_data::valid::in_range(field, value, 1..=max, example).map_err(|e| ConfigError {
                field,
                reason: format!("{} is out of range; valid: {}. Fix: e.g. {field} = {}", e.value, e.valid, e.example),
            })
        };
        range("num_classes", self.num_classes, Self::MAX_CLASSES, 1000)?;
        if let Some(width) = self.base_width {
            range("base_width", width, Self::MAX_BASE_WIDTH, self.arch.default_base_width())?;
        }
        if let Some(depths) = self.depths {
            if self.arch.is_resnet() {
                return err(
                    "depths",
                    format!(
                        "only ConvNeXt depths can be changed; {} has fixed depths {:?}",
                        self.arch.name(),
                        self.arch.default_depths()
                    ),
                );
            }
            if depths.contains(&0) {
                return err("depths", format!("{depths:?}: every stage needs at least one block"));
            }
        }
        if self.arch.is_resnet() {
            let convnext_only = [
                ("layer_scale", self.layer_scale.is_some()),
                ("norm", self.norm.is_some()),
                ("init", self.init.is_some()),
            ];
            if let Some((field, _)) = convnext_only.into_iter().find(|(_, set)| *set) {
                return err(
                    field,
                    format!("only ConvNeXt has this option; remove it from the {} config", self.arch.name()),
                );
            }
        }
        Ok(())
    }

    pub fn base_width(&self) -> usize {
        self.base_width.unwrap_or(self.arch.default_base_width())
    }

    pub fn depths(&self) -> [usize; 4] {
        self.depths.unwrap_or(self.arch.default_depths())
    }

    /// One line for messages: `resnet18 (10 classes, small stem, base width 16)`.
    pub fn describe(&self) -> String {
        let stem = match self.stem {
            Stem::Imagenet => "imagenet",
            Stem::Small => "small",
        };
        let mut s = format!(
            "{} ({} classes, {stem} stem, base width {}",
            self.arch.name(),
            self.num_classes,
            self.base_width()
        );
        if !self.arch.is_resnet() {
            s += &format!(", depths {:?}", self.depths());
            if self.norm == Some(ConvNorm::Batch) {
                s += ", BatchNorm";
            }
        }
        s + ")"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kebab_case_with_defaults_and_rejects_unknown_fields() {
        let c: BackboneConfig =
            serde_json::from_str(r#"{"arch":"convnext-tiny","num_classes":10,"base_width":null,"depths":[1,1,2,1]}"#)
                .unwrap();
        assert_eq!(c.stem, Stem::Imagenet);
        assert_eq!(c.depths(), [1, 1, 2, 1]);
        assert_eq!(c.base_width(), 96);
        let bad = serde_json::from_str::<BackboneConfig>(r#"{"arch":"resnet18","num_classes":10,"widht":3}"#);
        assert!(bad.unwrap_err().to_string().contains("widht"));
    }

    #[test]
    fn widths_and_class_counts_out_of_range_name_value_and_range() {
        let mut c = BackboneConfig::new(Arch::Resnet18, 10);
        c.base_width = Some(100_000);
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("`base_width`: 100000 is out of range; valid: 1 to 256"), "{msg}");
        c.base_width = Some(0);
        assert!(c.validate().unwrap_err().to_string().contains("valid: 1 to 256"));
        c.base_width = Some(256);
        c.num_classes = 1_000_000_000_000;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("`num_classes`: 1000000000000 is out of range; valid: 1 to 100000"), "{msg}");
    }

    #[test]
    fn depths_on_a_resnet_is_a_clear_error() {
        let mut c = BackboneConfig::new(Arch::Resnet18, 10);
        c.depths = Some([1, 1, 1, 1]);
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("depths") && msg.contains("resnet18"), "{msg}");
        let mut c = BackboneConfig::new(Arch::Resnet50, 10);
        c.norm = Some(ConvNorm::Batch);
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("`norm`") && msg.contains("resnet50"), "{msg}");
    }
}
