//! Which network `explain` explains, loading it, and the warning when a photo meets a model that
//! only knows the quick profile's 64-px scenes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use castream_backbones::{CheckpointMeta, Model};
use castream_cam::{Pooling, PoolingKind, Subject};
use castream_data::Normalisation;
use castream_stream::CaModel;
use castream_zoo::ca::{quick_models, trained_models, QuickData, StreamSpec};
use castream_zoo::quick::load_backbone;
use castream_zoo::stream_checkpoint::{read_card, StreamSource};
use castream_zoo::BackboneSpec;

use super::{sanitise, Input};

/// Which network's weights.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A shipped quick backbone (`checkpoints/quick/<name>.safetensors`, checked against the manifest).
    Backbone(String),
    /// A checkpoint written by `Model::save` (`<path>` and its `<path>.json` sidecar).
    Checkpoint(PathBuf),
    /// Pretrained torchvision/timm-named weights (an ImageNet backbone): a spec's
    /// `{ arch, hub }` or `{ arch, file }` table ([`BackboneSpec::Hub`], [`BackboneSpec::File`]).
    Pretrained(BackboneSpec),
    /// A stream trained by `castream train-stream` (a file or `hub:owner/name`), with the backbone
    /// its card names.
    Stream(StreamSource),
}

/// An example for `--pretrained`: torchvision's ResNet-50 as timm publishes it.
pub const PRETRAINED_EXAMPLE: &str = r#"{ arch = "resnet50", hub = "timm/resnet50.tv_in1k" }"#;

/// `--pretrained`: a backbone table in the specs' syntax (docs/specs.md), `hub` or `file` form.
pub fn parse_pretrained(s: &str) -> Result<BackboneSpec> {
    #[derive(serde::Deserialize)]
    struct One {
        backbone: BackboneSpec,
    }
    let one: One = toml::from_str(&format!("backbone = {s}")).map_err(|e| {
        anyhow!("`{s}` is not a backbone table: {}. Fix: e.g. --pretrained '{PRETRAINED_EXAMPLE}'", e.message())
    })?;
    match one.backbone {
        spec @ (BackboneSpec::Hub { .. } | BackboneSpec::File { .. }) => Ok(spec),
        other => bail!(
            "`{s}` names {other}, not pretrained weights: --pretrained takes a table with `hub` or `file`. Fix: e.g. \
             --pretrained '{PRETRAINED_EXAMPLE}'; a shipped backbone is --backbone, a castream checkpoint --checkpoint"
        ),
    }
}

impl ModelSource {
    /// The short name in output file names.
    pub(super) fn tag(&self) -> String {
        let stem = |path: &Path| sanitise(&path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
        match self {
            ModelSource::Backbone(name) => sanitise(name),
            ModelSource::Checkpoint(path) | ModelSource::Stream(StreamSource::File(path)) => stem(path),
            ModelSource::Pretrained(spec) => sanitise(&spec.name()),
            ModelSource::Stream(StreamSource::Hub(repo)) => sanitise(&repo.repo),
        }
    }

    /// Whether a trained CA-Stream comes with it (`--pooling ca`).
    pub(super) fn has_stream(&self) -> bool {
        matches!(self, ModelSource::Backbone(_) | ModelSource::Stream(_))
    }

    /// The flag that chose it, for errors.
    pub(super) fn flag(&self) -> String {
        match self {
            ModelSource::Backbone(name) => format!("--backbone {name}"),
            ModelSource::Checkpoint(path) => format!("--checkpoint {}", path.display()),
            ModelSource::Pretrained(spec) => format!("--pretrained {spec}"),
            ModelSource::Stream(source) => format!("--stream {}", String::from(source.clone())),
        }
    }
}

/// The network(s) explained.
pub(super) enum Loaded {
    Gap(Model),
    Ca(Box<CaModel>),
}

impl Loaded {
    pub(super) fn backbone(&self) -> &Model {
        match self {
            Loaded::Gap(m) => m,
            Loaded::Ca(m) => &m.backbone,
        }
    }

    pub(super) fn subject(&self, pooling: PoolingKind, norm: Normalisation) -> Subject<'_> {
        match (pooling, self) {
            (PoolingKind::Ca, Loaded::Ca(m)) => Subject::of(Pooling::Ca(m), norm),
            _ => Subject::of(Pooling::Gap(self.backbone()), norm),
        }
    }
}

/// Loads `source`: with its CA-Stream when `poolings` has CA (a shipped backbone's is trained once
/// and cached from `data`).
pub(super) fn load(
    root: &Path,
    source: &ModelSource,
    poolings: &[PoolingKind],
    data: Option<&QuickData>,
    device: &Device,
) -> Result<(Loaded, CheckpointMeta)> {
    let flag = || source.flag();
    Ok(match source {
        ModelSource::Checkpoint(path) => {
            let (model, meta) = Model::load(path, device).with_context(flag)?;
            (Loaded::Gap(model.frozen()?), meta)
        }
        ModelSource::Pretrained(spec) => {
            let loaded = castream_zoo::backbone::load(root, spec, device).with_context(flag)?;
            (Loaded::Gap(loaded.model), loaded.meta)
        }
        ModelSource::Backbone(name) if poolings.contains(&PoolingKind::Ca) => {
            let data = data.expect("the quick data is loaded for a shipped backbone's CA-Stream");
            let stream = StreamSpec::default();
            let m = quick_models(root, &BackboneSpec::Shipped(name.clone()), &stream, data, &mut None, device)
                .with_context(flag)?;
            if !m.from_cache {
                println!("trained the CA-Stream of {name} (cached in {})", m.stream_file.display());
            }
            (Loaded::Ca(Box::new(m.ca)), m.meta)
        }
        ModelSource::Backbone(name) => {
            let (model, meta, _) = load_backbone(root, name, device).with_context(flag)?;
            (Loaded::Gap(model.frozen()?), meta)
        }
        ModelSource::Stream(stream) => {
            let path = stream.resolve(root).with_context(flag)?;
            let card = read_card(&path).with_context(flag)?;
            let m = trained_models(root, &card.backbone, &path, device).with_context(flag)?;
            (Loaded::Ca(Box::new(m.ca)), m.meta)
        }
    })
}

/// The warning for an image file explained by a model trained on the quick profile's scenes (its
/// sidecar records them): its classes are ten kinds of clothing at 64 px, so a photo's map explains
/// whichever of them the photo resembles.
pub fn scene_model_warning(meta: &CheckpointMeta, input: &Input) -> Option<String> {
    let Input::Image(path) = input else { return None };
    let scenes = meta.extra.get("scenes")?;
    let canvas = scenes.get("canvas").and_then(|v| v.as_u64()).unwrap_or(64);
    Some(format!(
        "warning: --image {}: this model was trained on {canvas}-px Fashion-MNIST scenes, and its only classes are \
         {}: a photo's subject is most likely none of them (a cat is not a Fashion-MNIST class), so its maps explain \
         whichever of them it resembles. For natural \
         photos explain an ImageNet backbone: --pretrained '{PRETRAINED_EXAMPLE}' (GAP), or --stream with a stream \
         trained on it (CA; docs/paper-profile.md)",
        path.display(),
        if meta.classes.is_empty() { "its ten clothing classes".to_string() } else { meta.classes.join(", ") },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_backbones::{Arch, BackboneConfig};

    fn meta(extra: serde_json::Value) -> CheckpointMeta {
        CheckpointMeta {
            config: BackboneConfig::new(Arch::Resnet18, 2),
            classes: vec!["T-shirt/top".into(), "Trouser".into()],
            normalisation: Normalisation::IMAGENET,
            extra,
        }
    }

    #[test]
    fn photos_on_scene_models_are_warned_about_and_nothing_else() {
        let photo = Input::Image("cat.jpg".into());
        let scenes = meta(serde_json::json!({ "scenes": { "canvas": 64 } }));
        let w = scene_model_warning(&scenes, &photo).expect("a scene model on a photo");
        assert!(w.contains("cat.jpg") && w.contains("64-px") && w.contains("T-shirt/top, Trouser"), "{w}");
        assert!(w.contains("--pretrained"), "{w}");
        assert_eq!(scene_model_warning(&scenes, &Input::Scenes(0..2)), None, "scenes are what it knows");
        assert_eq!(scene_model_warning(&meta(serde_json::json!({ "hub": "timm/resnet50.tv_in1k" })), &photo), None);
    }

    #[test]
    fn pretrained_takes_the_specs_hub_and_file_tables_only() {
        let spec = parse_pretrained(PRETRAINED_EXAMPLE).unwrap();
        assert!(matches!(&spec, BackboneSpec::Hub { arch: Arch::Resnet50, hub, .. } if hub == "timm/resnet50.tv_in1k"));
        let spec = parse_pretrained(r#"{ arch = "resnet18", file = "w.safetensors", num_classes = 10 }"#).unwrap();
        assert!(matches!(spec, BackboneSpec::File { shape, .. } if shape.num_classes == Some(10)));
        let err = parse_pretrained(r#""resnet18""#).unwrap_err().to_string();
        assert!(err.contains("--backbone") && err.contains("Fix:"), "{err}");
        let err = parse_pretrained("{ hub = 3 }").unwrap_err().to_string();
        assert!(err.contains("not a backbone table") && err.contains("Fix:"), "{err}");
    }
}
