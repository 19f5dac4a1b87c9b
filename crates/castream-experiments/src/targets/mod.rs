//! The runnable targets. A spec names one: the `interpretability` kind, declared entirely by the
//! spec's keys, or one of the catalogue's fixed targets. A target reads its settings from the
//! [`RunContext`] and writes its tables and figures into the run's staging directory.

mod data_card;
mod figure1;
mod figure2;
mod figure3;
mod figure4;
mod interpretability;
mod table1;
mod table4;

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use castream_data::scenes::SceneSet;
use castream_eval::saliency::image_list_sha256;
use castream_eval::Evaluation;
use castream_report::record::{DataRecord, RunRecord};
use castream_zoo::ca::{quick_models, QuickData, QuickModels, StreamFeatures, StreamSpec};
use castream_zoo::quick::is_shipped;
use castream_zoo::BackboneSpec;

use crate::spec::{Profile, Settings, Spec, Target};

pub struct RunContext<'a> {
    pub spec: &'a Spec,
    pub profile: Profile,
    pub settings: &'a Settings,
    /// The staging directory of this run's outputs.
    pub out: &'a Path,
    /// The repository root: shipped checkpoints under `checkpoints/`, caches under `target/`.
    pub root: &'a Path,
    /// The specs' folder (`paper-values.toml` lives there).
    pub experiments: &'a Path,
    pub device: Device,
    pub record: &'a mut RunRecord,
}

/// A target that cannot run yet because something it needs does not exist (e.g. a checkpoint
/// that is not shipped). Reported as pending by `reproduce all`, never faked.
#[derive(Debug, thiserror::Error)]
#[error("{target}: not yet available: needs {needs}")]
pub struct NotYetAvailable {
    pub target: String,
    pub needs: String,
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    match ctx.spec.target {
        Target::Interpretability => interpretability::run(ctx),
        Target::DataCard => data_card::run(ctx),
        Target::Table1 => table1::run(ctx),
        Target::Table4 => table4::run(ctx),
        Target::Figure1 => figure1::run(ctx),
        Target::Figure2 => figure2::run(ctx),
        Target::Figure3 => figure3::run(ctx),
        Target::Figure4 => figure4::run(ctx),
    }
}

impl RunContext<'_> {
    /// The cell evaluation of the scenes `ids` of `set` with the spec's batch size, seed and protocol.
    pub fn evaluation<'s>(&self, set: &'s SceneSet, ids: &'s [usize]) -> Evaluation<'s> {
        let s = self.settings;
        Evaluation {
            set,
            ids,
            batch_size: s.batch_size,
            protocol: s.protocol.protocol(),
            seed: s.seed,
            cache: self.root.join("target/castream/metrics"),
            device: self.device.clone(),
        }
    }

    /// The quick profile's scene sets from the spec's data location and scene settings, recorded
    /// in `run.json`.
    pub fn quick_data(&mut self) -> Result<QuickData> {
        let data = QuickData::load(&self.settings.data.fashion_mnist, &self.settings.scenes)?;
        for set in [&data.train, &data.test] {
            self.record.read_data(data_record(set));
        }
        Ok(data)
    }

    /// `backbone` and its CA-Stream trained with `stream` ([`quick_models`]), their weights'
    /// SHA-256 and the stream's seed recorded in `run.json`.
    pub fn models(
        &mut self,
        backbone: &BackboneSpec,
        stream: &StreamSpec,
        data: &QuickData,
        features: &mut Option<StreamFeatures>,
    ) -> Result<QuickModels> {
        let m = quick_models(self.root, backbone, stream, data, features, &self.device)?;
        let weights = &mut self.record.weights;
        weights.insert(format!("{} backbone", m.name), m.sha256.clone());
        weights.insert(format!("{} backbone sidecar", m.name), m.sidecar_sha256.clone());
        let stream_file = m.stream_file.file_name().map_or(String::new(), |f| f.to_string_lossy().into_owned());
        weights.insert(format!("{} stream {stream_file}", m.name), m.stream_sha256.clone());
        self.record.seeds.insert(format!("stream.{}", m.name), stream.train.seed);
        Ok(m)
    }
}

/// The number of evaluation images: the spec's `images` (or `--images`), else `default`, checked
/// against the `available` images of the evaluated `split` before any work on them: a count
/// larger than the data is refused, naming `images`, where it was set and the split's size.
pub fn image_count(ctx: &RunContext, default: usize, available: usize, split: &str) -> Result<usize> {
    let Some(n) = ctx.settings.images else { return Ok(default.min(available)) };
    Settings::check_images(n, Some((available, split))).map_err(|e| {
        if ctx.record.overrides.iter().any(|o| o.starts_with("images=")) {
            anyhow::anyhow!("{}", e.as_flag("--images"))
        } else {
            anyhow::anyhow!("{}: [{}] {e}", ctx.spec.path.display(), ctx.profile)
        }
    })?;
    Ok(n)
}

/// A scene set's source split as `run.json` records it.
pub fn data_record(set: &SceneSet) -> DataRecord {
    DataRecord {
        dataset: set.dataset.display_name().into(),
        split: set.split.name().into(),
        images: set.len(),
        sha256: set.source.sha256.clone(),
        origin: serde_json::json!({ "images": set.source.files.images, "labels": set.source.files.labels }),
    }
}

/// The spec's first backbone: the one the figures draw.
pub fn first_backbone(s: &Settings) -> Result<&BackboneSpec> {
    s.backbones
        .first()
        .ok_or_else(|| anyhow::anyhow!("backbones is empty; Fix: name one, e.g. backbones = [\"resnet18\"]"))
}

/// Why `spec` cannot run on `profile` now, if it cannot: the paper profile's targets other than
/// the data card need an ImageNet-trained stream; a shipped backbone the spec names that is not
/// trained yet. Checked before a run starts and by `list`.
pub fn pending(spec: &Spec, profile: Profile, settings: &Settings, root: &Path) -> Result<Option<NotYetAvailable>> {
    let needs = |needs: String| Some(NotYetAvailable { target: spec.name.clone(), needs });
    if profile == Profile::Paper && spec.target != Target::DataCard {
        return Ok(needs(
            "a CA-Stream trained on ImageNet (stream training for the paper profile is not built yet; \
             `data-card --profile paper` checks the data)"
                .into(),
        ));
    }
    if spec.target == Target::DataCard {
        return Ok(None);
    }
    for b in &settings.backbones {
        if let BackboneSpec::Shipped(name) = b {
            if profile == Profile::Quick && !is_shipped(root, name)? {
                return Ok(needs(format!(
                    "the quick `{name}` backbone, which is not shipped (docs/backbones.md); train it with `cargo xtask train-backbones`"
                )));
            }
        }
    }
    Ok(None)
}

/// The quick profile's test scenes and the first `images` (spec or `--images`, else `default`)
/// of them, recorded in `run.json`.
pub fn test_scenes(ctx: &mut RunContext, default: usize) -> Result<(QuickData, Vec<usize>)> {
    let data = ctx.quick_data()?;
    let n = image_count(ctx, default, data.test.len(), "Fashion-MNIST test")?;
    let ids: Vec<usize> = (0..n).collect();
    ctx.record.image_list_sha256 = Some(image_list_sha256("fashion-mnist/test", &ids));
    ctx.record.seeds.insert("bootstrap".into(), ctx.settings.seed);
    Ok((data, ids))
}
