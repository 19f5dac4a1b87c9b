//! A backbone together with its configuration and parameter store: construction, weight loading
//! and checkpoints.
//!
//! A checkpoint is two files written atomically: `<path>` (safetensors, torchvision/timm names,
//! f32) and `<path>.json` (the [`CheckpointMeta`] sidecar: config, class names, normalisation).
//! The safetensors file alone loads into any model built from the same config, in castream or in
//! PyTorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Var};
use castream_data::hub::HubAccess;
use castream_data::Normalisation;
use serde::{Deserialize, Serialize};

use crate::backbone::Backbone;
use crate::config::BackboneConfig;
use crate::convnext::ConvNext;
use crate::layers::Params;
use crate::resnet::ResNet;
use crate::weights::{load_into, LoadReport, WeightSource};

/// What a checkpoint's sidecar records besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Rebuilds the network on load; must equal the saved model's config.
    pub config: BackboneConfig,
    /// Class names in logit order: `num_classes` of them, or empty when unnamed.
    pub classes: Vec<String>,
    /// The input normalisation the weights were trained with.
    pub normalisation: Normalisation,
    /// Free-form provenance (training run, dataset, metrics).
    #[serde(default)]
    pub extra: serde_json::Value,
}

pub struct Model {
    pub config: BackboneConfig,
    pub net: Box<dyn Backbone>,
    /// Where its tensors live.
    pub device: Device,
    /// Every parameter and BatchNorm running statistic, by torchvision/timm name.
    vars: BTreeMap<String, Var>,
    /// Built by [`Model::frozen`]: its layers hold the parameters detached.
    frozen: bool,
}

/// BatchNorm running statistics: state updated by the forward pass, never by an optimiser.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// `<path>.json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

impl Model {
    /// A freshly initialised network (torchvision / timm initialisation), a function of
    /// `(config, seed)` only.
    pub fn new(config: BackboneConfig, seed: u64, device: &Device) -> anyhow::Result<Model> {
        Model::build(config, Some(seed), device)
    }

    /// `seed = None` fills zeros, for networks whose weights are loaded next.
    fn build(config: BackboneConfig, seed: Option<u64>, device: &Device) -> anyhow::Result<Model> {
        config.validate()?;
        let ps = Params::new(seed, device, config.kernels);
        Model::assemble(config, ps, false)
    }

    fn assemble(config: BackboneConfig, mut ps: Params, frozen: bool) -> anyhow::Result<Model> {
        let net: Box<dyn Backbone> = if config.arch.is_resnet() {
            Box::new(ResNet::new(&config, &mut ps)?)
        } else {
            Box::new(ConvNext::new(&config, &mut ps)?)
        };
        let device = ps.device().clone();
        Ok(Model { config, net, device, vars: ps.into_vars(), frozen })
    }

    /// The same network with its parameters detached from autograd: forward passes record no
    /// graph for the weights (less memory, and the evaluation-only fused kernels apply), while
    /// gradients with respect to inputs and activations still flow, as CAM methods need. The
    /// parameters share storage with this model's (loading weights into one changes both); a
    /// frozen model has no trainable parameters.
    pub fn frozen(&self) -> anyhow::Result<Model> {
        Model::assemble(self.config.clone(), Params::frozen(&self.vars, &self.device, self.config.kernels), true)
    }

    /// Every parameter and running statistic, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// The parameters an optimiser may update (all but BatchNorm running statistics; none in a
    /// frozen model), sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars.iter().filter(|(n, _)| !self.frozen && !is_buffer(n)).map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// Number of trainable scalars, as `sum(p.numel() for p in model.parameters())` counts them.
    pub fn parameter_count(&self) -> usize {
        self.vars.iter().filter(|(n, _)| !is_buffer(n)).map(|(_, v)| v.elem_count()).sum()
    }

    /// Strictly loads pretrained weights (see [`crate::weights`]), downloading hub files that are
    /// not cached.
    pub fn load_weights(&mut self, source: &WeightSource) -> anyhow::Result<LoadReport> {
        self.load_weights_with(source, HubAccess::Download, None)
    }

    /// [`Model::load_weights`] with explicit hub access and cache directory (`None`: hf-hub's
    /// default, following `HF_HUB_CACHE` / `HF_HOME`).
    pub fn load_weights_with(
        &mut self,
        source: &WeightSource,
        access: HubAccess,
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<LoadReport> {
        let file = source.resolve(access, cache_dir)?;
        load_into(&self.vars, &file, &self.config.describe())
    }

    /// Writes `<path>` (weights) and `<path>.json` (`meta`), each atomically.
    pub fn save(&self, path: &Path, meta: &CheckpointMeta) -> anyhow::Result<()> {
        if meta.config != self.config {
            bail!(
                "{}: checkpoint meta describes {} but the model is {}",
                path.display(),
                meta.config.describe(),
                self.config.describe()
            );
        }
        if !meta.classes.is_empty() && meta.classes.len() != self.config.num_classes {
            bail!(
                "{}: {} class names for a model with {} classes",
                path.display(),
                meta.classes.len(),
                self.config.num_classes
            );
        }
        let tensors = self.vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor()));
        let bytes = safetensors::serialize(tensors, None)
            .with_context(|| format!("{}: serialising weights", path.display()))?;
        castream_data::atomic::write(path, &bytes)?;
        castream_data::atomic::write(&sidecar_path(path), &serde_json::to_vec_pretty(meta)?)
    }

    /// Reads a checkpoint written by [`Model::save`]: builds the network from the sidecar's config
    /// and strictly loads the weights.
    pub fn load(path: &Path, device: &Device) -> anyhow::Result<(Model, CheckpointMeta)> {
        let sidecar = sidecar_path(path);
        let text = std::fs::read_to_string(&sidecar).with_context(|| {
            format!(
                "{}: cannot read the checkpoint sidecar (written next to the weights by Model::save)",
                sidecar.display()
            )
        })?;
        let meta: CheckpointMeta = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid checkpoint sidecar", sidecar.display()))?;
        meta.config.validate().with_context(|| format!("{}: invalid checkpoint sidecar", sidecar.display()))?;
        let model = Model::build(meta.config.clone(), None, device)?;
        load_into(&model.vars, path, &model.config.describe())?;
        Ok((model, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;
    use candle_core::Tensor;
    use castream_data::device::cpu;

    /// Counts of `torchvision.models.*` / `timm.create_model("convnext_*")` with 1000 classes.
    #[test]
    fn parameter_counts_equal_torchvision_and_timm() {
        let expected = [
            (Arch::Resnet18, 11_689_512),
            (Arch::Resnet34, 21_797_672),
            (Arch::Resnet50, 25_557_032),
            (Arch::ConvnextTiny, 28_589_128),
            (Arch::ConvnextSmall, 50_223_688),
            (Arch::ConvnextBase, 88_591_464),
        ];
        for (arch, count) in expected {
            let model = Model::build(BackboneConfig::new(arch, 1000), None, &cpu()).unwrap();
            assert_eq!(model.parameter_count(), count, "{}", arch.name());
        }
    }

    #[test]
    fn buffers_are_listed_but_not_trainable() {
        let model = Model::build(BackboneConfig::new(Arch::Resnet18, 10), None, &cpu()).unwrap();
        let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for expected in [
            "conv1.weight",
            "bn1.running_var",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean",
            "fc.bias",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing");
        }
        let trainable = model.trainable_vars();
        assert!(trainable.iter().all(|(n, _)| !n.contains("running")));
        assert_eq!(names.len() - trainable.len(), 2 * 20, "ResNet-18 has 20 BatchNorms");
    }

    /// A frozen copy computes the same logits (evaluation and training mode), records no graph
    /// for its weights, still passes gradients to its input, and shares the parameters' storage.
    #[test]
    fn frozen_models_share_weights_and_track_only_inputs() {
        for arch in [Arch::Resnet18, Arch::ConvnextTiny] {
            let config = BackboneConfig { base_width: Some(8), ..BackboneConfig::new(arch, 5) };
            let model = Model::new(config, 3, &cpu()).unwrap();
            let frozen = model.frozen().unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &cpu()).unwrap();
            let (a, b) = (model.net.forward(&x, false).unwrap(), frozen.net.forward(&x, false).unwrap());
            assert!(a.track_op() && !b.track_op(), "{}", arch.name());
            let diff =
                |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff(&a, &b) < 1e-5, "{}: logits differ by {}", arch.name(), diff(&a, &b));
            assert!(frozen.trainable_vars().is_empty() && frozen.named_vars().len() == model.named_vars().len());

            // Gradients reach the input through the frozen weights, equal to the trainable model's.
            let grad_of = |m: &Model| {
                let xv = candle_core::Var::from_tensor(&x).unwrap();
                let g = m.net.forward(xv.as_tensor(), false).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(xv.as_tensor()).unwrap().clone()
            };
            assert!(diff(&grad_of(&model), &grad_of(&frozen)) < 1e-5, "{}: input gradients differ", arch.name());

            // One storage: changing a parameter of the trainable model changes the frozen one's output.
            let (name, var) = model.trainable_vars().into_iter().find(|(n, _)| n.ends_with("weight")).unwrap();
            var.set(&var.as_tensor().affine(2.0, 0.5).unwrap()).unwrap();
            let (a, b) = (model.net.forward(&x, false).unwrap(), frozen.net.forward(&x, false).unwrap());
            assert!(diff(&a, &b) < 1e-5, "{}: {name} not shared", arch.name());
        }
    }
}
