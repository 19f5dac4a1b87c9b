//! The runnable targets. A spec names one: the `interpretability` kind, declared entirely by the
//! spec's keys, or one of the catalogue's fixed targets. A target reads its settings from the
//! [`RunContext`] and writes its tables and figures into the run's staging directory.

mod backbone_curves;
mod data_card;
mod figure1;
mod figure2;
mod figure3;
mod figure4;
mod inputs;
mod interpretability;
mod table1;
mod table4;

pub use inputs::{missing_inputs, pending, streams_to_train, uses_stream};
use inputs::{missing_stream, required_streams};

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;
use castream_data::discovery::{DatasetName, Locator};
use castream_data::image_folder::IMAGENET_CLASSES;
use castream_data::image_set::ImageSetSpec;
use castream_data::images::EvalImages;
use castream_data::labelled::Split;
use castream_data::scenes::SceneSet;
use castream_eval::saliency::image_list_sha256;
use castream_eval::{Evaluation, Sharding};
use castream_report::record::RunRecord;
use castream_stream::StreamConfig;
use castream_zoo::ca::{
    quick_models, trained_models, untrained_models, QuickData, QuickModels, StreamFeatures, StreamSpec,
};
use castream_zoo::stream_checkpoint;
use castream_zoo::train_stream::subset;
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
    /// The quick profile's scene sets, loaded on first use.
    pub quick: Option<Arc<QuickData>>,
    /// All images, one shard's part of every cell (`--shard`), or the merge of the shards' records.
    pub sharding: &'a Sharding,
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

/// Loads every model the spec evaluates ([`RunContext::models`]): on the quick profile, trains
/// and caches the streams it needs; on the paper profile, fetches the backbones' weights.
pub fn prepare(ctx: &mut RunContext) -> Result<()> {
    let (spec, s) = (ctx.spec, ctx.settings);
    let wanted: Vec<(&BackboneSpec, StreamConfig)> = if uses_stream(spec, s) {
        required_streams(spec, s)
    } else {
        s.backbones.iter().map(|b| (b, s.stream.config.clone())).collect()
    };
    // Stage features are shared by the streams of one backbone (table 4's variants).
    let mut features = None;
    let mut previous = None;
    for (backbone, config) in wanted {
        if previous != Some(backbone) {
            features = None;
            previous = Some(backbone);
        }
        ctx.seeded_models(backbone, &StreamSpec { config, ..s.stream.clone() }, &mut features)?;
    }
    Ok(())
}

impl<'a> RunContext<'a> {
    /// The cell evaluation of the images `ids` of `set` with the spec's batch size, seed and protocol.
    pub fn evaluation<'s>(&self, set: &'s dyn EvalImages, ids: &'s [usize]) -> Evaluation<'s>
    where
        'a: 's,
    {
        let s = self.settings;
        Evaluation {
            set,
            ids,
            batch_size: s.batch_size,
            protocol: s.protocol.protocol(),
            seed: s.seed,
            cache: self.root.join("target/castream/metrics"),
            device: self.device.clone(),
            sharding: self.sharding,
        }
    }

    /// The quick profile's scene sets from the spec's data location and scene settings (loaded
    /// once per run), recorded in `run.json`.
    pub fn quick_data(&mut self) -> Result<Arc<QuickData>> {
        if let Some(data) = &self.quick {
            return Ok(data.clone());
        }
        let data = Arc::new(QuickData::load(&self.settings.data.fashion_mnist, &self.settings.scenes)?);
        for set in [&data.train, &data.test] {
            self.record.read_data(set.record());
        }
        self.quick = Some(data.clone());
        Ok(data)
    }

    /// The evaluated images: the quick profile's Fashion-MNIST test scenes, or the paper profile's
    /// `[paper.data.imagenet]` (ImageNet validation), recorded in `run.json`.
    pub fn test_images(&mut self) -> Result<Arc<dyn EvalImages>> {
        match self.profile {
            Profile::Quick => Ok(self.quick_data()?.test.clone()),
            Profile::Paper => self.image_set(self.settings.data.imagenet.as_ref(), "imagenet", "imagenet", "val"),
        }
    }

    /// Images of classes the network never saw: MNIST digit scenes (quick), or the paper
    /// profile's `[paper.data.unseen]` (MIT 67), recorded in `run.json`.
    pub fn unseen_images(&mut self) -> Result<Arc<dyn EvalImages>> {
        let s = self.settings;
        match self.profile {
            Profile::Quick => {
                let located =
                    Locator::from_environment(DatasetName::Mnist).locate(DatasetName::Mnist, &s.data.mnist)?;
                let digits =
                    SceneSet::new(located.load(Split::Test)?, DatasetName::Mnist, Split::Test, s.scenes.clone())?;
                self.record.read_data(digits.record());
                Ok(Arc::new(digits))
            }
            Profile::Paper => self.image_set(s.data.unseen.as_ref(), "unseen", "unseen", "test"),
        }
    }

    fn image_set(
        &mut self,
        spec: Option<&ImageSetSpec>,
        key: &str,
        dataset: &str,
        split: &str,
    ) -> Result<Arc<dyn EvalImages>> {
        let place = format!("{}: [{}.data.{key}]", self.spec.path.display(), self.profile);
        let Some(spec) = spec else {
            bail!("{place} is missing; Fix: set its `root` (and `list` for a `name,label` file)")
        };
        // Folder-per-class sets (MIT 67) carry their own classes; lists carry ImageNet indices.
        let set = spec.open(dataset, split, IMAGENET_CLASSES, &place)?;
        self.record.read_data(set.record());
        Ok(Arc::new(set))
    }

    /// `backbone` with each of the spec's `stream_seeds` streams for `stream` ([`Self::models`]
    /// with training seeds `stream.train.seed + k`), in seed order; one model for a spec that
    /// evaluates no stream.
    pub fn seeded_models(
        &mut self,
        backbone: &BackboneSpec,
        stream: &StreamSpec,
        features: &mut Option<StreamFeatures>,
    ) -> Result<Vec<QuickModels>> {
        // A spec without a CA model loads its GAP networks once.
        let seeds = if uses_stream(self.spec, self.settings) { self.settings.stream_seeds(self.profile) } else { 1 };
        (0..seeds).map(|k| self.models(backbone, &stream.seeded(k), features)).collect()
    }

    /// `backbone` and its CA-Stream for `stream`, their weights' SHA-256 and the stream's seed
    /// recorded in `run.json`: a trained stream listed in the spec's `streams` for this backbone
    /// and configuration is loaded (with several `stream_seeds`, only one trained with
    /// `stream.train.seed`); otherwise the quick profile trains one ([`quick_models`], cached) and
    /// the paper profile refuses (`pending` says so before the run).
    pub fn models(
        &mut self,
        backbone: &BackboneSpec,
        stream: &StreamSpec,
        features: &mut Option<StreamFeatures>,
    ) -> Result<QuickModels> {
        let mut found = stream_checkpoint::find(self.root, &self.settings.streams, backbone, &stream.config);
        let seeds = self.settings.stream_seeds(self.profile);
        if seeds > 1 {
            found.matches.retain(|(_, card)| card_seed(card) == Some(stream.train.seed));
        }
        // Streams of the backbone's name may have been trained on other weights of it: the first
        // that loads (its card's backbone SHA-256 is checked) is used.
        let mut refused = Vec::new();
        let mut loaded = None;
        for (path, card) in &found.matches {
            match trained_models(self.root, backbone, path, &self.device) {
                Ok(m) => {
                    loaded = Some((m, card));
                    break;
                }
                Err(e) => refused.push(format!("{e:#}")),
            }
        }
        // A pretrained backbone's inputs are normalised as the spec says (checkpoints carry their own).
        let pretrained = matches!(backbone, BackboneSpec::Hub { .. } | BackboneSpec::File { .. });
        let (mut m, seed) = match loaded {
            Some((m, card)) => {
                // `trained_models` took the normalisation the stream was trained with from its card.
                if pretrained && m.meta.normalisation != self.settings.normalisation {
                    bail!(
                        "{}: [{}] normalisation = {:?} differs from the {:?} the stream {} was trained with; Fix: use the stream's",
                        self.spec.path.display(),
                        self.profile,
                        self.settings.normalisation,
                        m.meta.normalisation,
                        m.stream_file.display()
                    );
                }
                let seed = card_seed(card).unwrap_or(stream.train.seed);
                (m, seed)
            }
            None if !refused.is_empty() => bail!("{}", refused.join("\n")),
            None if !uses_stream(self.spec, self.settings) => {
                (untrained_models(self.root, backbone, &stream.config, &self.device)?, stream.train.seed)
            }
            None if self.profile == Profile::Quick => {
                let data = self.quick_data()?;
                (quick_models(self.root, backbone, stream, &data, features, &self.device)?, stream.train.seed)
            }
            None => bail!(
                "{}",
                missing_stream(self.experiments, &self.settings.streams, &found.unavailable, backbone, &stream.config)
            ),
        };
        if pretrained {
            // The input normalisation changes every output: it joins the weights' identity.
            m.meta.normalisation = self.settings.normalisation;
            m.sidecar_sha256 = castream_zoo::backbone::pretrained_identity(&m.meta.config, &m.meta.normalisation)?;
        }
        let weights = &mut self.record.weights;
        weights.insert(format!("{} backbone", m.name), m.sha256.clone());
        weights.insert(format!("{} backbone sidecar", m.name), m.sidecar_sha256.clone());
        let stream_file = m.stream_file.file_name().map_or(String::new(), |f| f.to_string_lossy().into_owned());
        weights.insert(format!("{} stream {stream_file}", m.name), m.stream_sha256.clone());
        let k = seed.wrapping_sub(self.settings.stream.train.seed);
        let key = if seeds > 1 && k > 0 { format!("stream.{}.{k}", m.name) } else { format!("stream.{}", m.name) };
        self.record.seeds.insert(key, seed);
        Ok(m)
    }
}

/// What a footer says of a backbone's streams (`seeded`, training seeds from `first_seed` on):
/// their number and validation accuracies.
pub fn streams_note(seeded: &[QuickModels], first_seed: u64) -> String {
    let accuracies: Vec<String> = seeded.iter().map(|m| format!("{:.2}", 100.0 * m.stream_val_accuracy)).collect();
    match seeded.len() {
        1 => format!("stream validation accuracy {}%", accuracies[0]),
        n => format!(
            "{n} streams (training seeds {}), validation accuracy {}%",
            (0..n as u64).map(|k| (first_seed + k).to_string()).collect::<Vec<_>>().join(", "),
            accuracies.join(", ")
        ),
    }
}

/// The training seed a stream's card records.
fn card_seed(card: &stream_checkpoint::StreamCard) -> Option<u64> {
    card.recipe.pointer("/train/seed").and_then(|s| s.as_u64())
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

/// The spec's first backbone: the one the figures draw.
pub fn first_backbone(s: &Settings) -> Result<&BackboneSpec> {
    s.backbones
        .first()
        .ok_or_else(|| anyhow::anyhow!("backbones is empty; Fix: name one, e.g. backbones = [\"resnet18\"]"))
}

/// The footer's line saying which images a table evaluated.
pub fn images_note(ctx: &RunContext, set: &dyn EvalImages, n: usize) -> String {
    match ctx.profile {
        Profile::Quick => format!("Quick profile: first {n} {} scenes", set.describe()),
        Profile::Paper => format!(
            "Paper profile: {n} of the {} {} images (a sample seeded by `seed` when fewer), {}x{} px",
            set.len(),
            set.describe(),
            set.side(),
            set.side()
        ),
    }
}

/// The evaluated images and the `images` of them used (spec or `--images`, else `default`): the
/// first ones on the quick profile, a seeded sample on the paper profile; recorded in `run.json`.
pub fn test_images(ctx: &mut RunContext, default: usize) -> Result<(Arc<dyn EvalImages>, Vec<usize>)> {
    let set = ctx.test_images()?;
    let n = image_count(ctx, default, set.len(), &set.describe())?;
    let ids = match ctx.profile {
        Profile::Quick => (0..n).collect(),
        Profile::Paper => subset(set.len(), Some(n), ctx.settings.seed)?,
    };
    ctx.record.image_list_sha256 = Some(image_list_sha256(&set.tag(), &ids));
    ctx.record.seeds.insert("bootstrap".into(), ctx.settings.seed);
    Ok((set, ids))
}
