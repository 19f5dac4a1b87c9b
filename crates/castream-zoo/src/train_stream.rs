//! `castream train-stream <recipe>`: trains a CA-Stream on a frozen pretrained backbone from an
//! image list or class folders (ImageNet train), decoding and augmenting as it goes, validating
//! on a held-out list after every epoch, checkpointing every epoch (`--resume` continues
//! bit-identically on CPU), and writing the trained stream with its card ([`stream_checkpoint`]).
//! The recipe is a TOML file (`experiments/streams/*.toml`, documented in docs/paper-profile.md).
//!
//! [`stream_checkpoint`]: crate::stream_checkpoint

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use castream_backbones::optim::OptimizerConfig;
use castream_backbones::schedule::Schedule;
use castream_backbones::train::{train, TrainConfig};
use castream_data::batching::batch_indices;
use castream_data::image_set::ImageSetSpec;
use castream_data::images::EvalImages;
use castream_data::labelled::hex;
use castream_data::provenance::git_state;
use castream_data::train_transform::TrainTransform;
use castream_data::valid::{in_range, OutOfRange};
use castream_data::Normalisation;
use castream_stream::streaming::ImageStreamTask;
use castream_stream::{CaModel, StreamConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backbone::{self, BackboneSpec, LoadedBackbone};
use crate::progress::TrainBars;
use crate::stream_checkpoint::{self, StreamCard, CARD_FORMAT};

/// How a stream is trained on a pretrained backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRecipe {
    /// Must equal the file name without `.toml`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub backbone: BackboneSpec,
    /// Where the trained stream is written (its card beside it, `<output>.json`).
    pub output: PathBuf,
    /// The training images (ImageNet train: class folders in synset order). Their `transform` is
    /// not used: training images go through `augment`.
    pub train_data: ImageSetSpec,
    /// The held-out images validated after every epoch, with their evaluation transform.
    pub val_data: ImageSetSpec,
    /// Validation images per epoch: a seeded subset of `val_data` (default: all).
    #[serde(default)]
    pub val_images: Option<usize>,
    #[serde(default = "imagenet")]
    pub normalisation: Normalisation,
    /// The training transform: random-resized crop and flip (torchvision's defaults).
    #[serde(default)]
    pub augment: TrainTransform,
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: usize,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default = "default_train")]
    pub train: TrainConfig,
}

fn imagenet() -> Normalisation {
    Normalisation::IMAGENET
}

fn default_eval_batch_size() -> usize {
    128
}

/// METHOD.md §3: the paper's schedule is unverified; a frozen backbone trains its stream well
/// with a short AdamW run (the authors' code defaults to SGD 0.1, 90 epochs, steps at 30/60).
pub fn default_train() -> TrainConfig {
    TrainConfig {
        epochs: 10,
        batch_size: 256,
        optimizer: OptimizerConfig::adamw(1e-3, 0.0),
        schedule: Schedule::Cosine { warmup_epochs: 0.5, min_ratio: 0.01 },
        seed: 0,
    }
}

impl StreamRecipe {
    /// Reads and validates a recipe; errors name the file and the key.
    pub fn load(path: &Path) -> Result<StreamRecipe> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the stream recipe", path.display()))?;
        let recipe: StreamRecipe = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: {e}Fix: correct the key or value above (docs/paper-profile.md documents the recipe)",
                path.display()
            )
        })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if recipe.name != stem {
            anyhow::bail!(
                "{}: `name = \"{}\"` differs from the file name; Fix: set `name = \"{stem}\"`",
                path.display(),
                recipe.name
            );
        }
        recipe.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(recipe)
    }

    /// The valid ranges: the training's, the augmentation's, `eval_batch_size` 1 to 65,536 and
    /// `val_images` at least 1.
    pub fn validate(&self) -> Result<(), OutOfRange> {
        self.train.validate().map_err(|e| e.within("train"))?;
        self.augment.validate().map_err(|e| e.within("augment"))?;
        in_range("eval_batch_size", self.eval_batch_size, 1..=65_536, 128)?;
        if let Some(n) = self.val_images {
            in_range("val_images", n, 1..=usize::MAX, 10_000)?;
        }
        Ok(())
    }

    /// What is missing on disk to train, if anything.
    pub fn missing(&self, file: &Path) -> Option<String> {
        let at = |key: &str| format!("{} [{key}]", file.display());
        self.train_data.missing(&at("train_data")).or_else(|| self.val_data.missing(&at("val_data")))
    }
}

pub struct TrainStreamOptions {
    pub device: Device,
    /// Continue from the last epoch checkpoint of the same recipe.
    pub resume: bool,
}

/// Trains the stream of the recipe at `path` and writes it to its `output` (relative to `root`);
/// returns the output path and the card.
pub fn train_stream(root: &Path, path: &Path, opts: &TrainStreamOptions) -> Result<(PathBuf, StreamCard)> {
    let recipe = StreamRecipe::load(path)?;
    if let Some(missing) = recipe.missing(path) {
        anyhow::bail!("{missing}");
    }
    let LoadedBackbone { model, sha256, .. } = backbone::load(root, &recipe.backbone, &opts.device)?;
    let classes = model.config.num_classes;
    let at = |key: &str| format!("{} [{key}]", path.display());
    let train_set = recipe.train_data.open("train", "train", classes, &at("train_data"))?;
    let val_set = recipe.val_data.open("validation", "val", classes, &at("val_data"))?;
    for (key, set) in [("train_data", &train_set), ("val_data", &val_set)] {
        // A stray or missing class folder would shift every later label.
        if !set.list.classes.is_empty() && set.list.classes.len() != classes {
            anyhow::bail!(
                "{} [{key}] root = {:?} holds {} class folders, but {} has {classes} classes; Fix: one folder per \
                 class of the backbone (ImageNet: the 1000 synsets), nothing else",
                path.display(),
                set.root,
                set.list.classes.len(),
                recipe.backbone
            );
        }
    }
    let val_ids = subset(val_set.len(), recipe.val_images, recipe.train.seed)?;
    let ca = CaModel::new(model, &recipe.stream, recipe.train.seed)?;
    let task = ImageStreamTask {
        model: &ca,
        train: &train_set.list,
        augment: recipe.augment,
        val: &val_set,
        val_ids: &val_ids,
        normalisation: recipe.normalisation,
        eval_batch_size: recipe.eval_batch_size,
    };
    // One run folder per (recipe, backbone weights, data): --resume finds exactly its own.
    let key = serde_json::to_vec(&(&recipe, &sha256, &train_set.sha256, &val_set.sha256))?;
    let run_dir =
        root.join("target/castream/stream-runs").join(format!("{}-{}", recipe.name, &hex(&Sha256::digest(key))[..16]));
    eprintln!(
        "{}: training a stream on {} ({} training images, {} validation images), epoch checkpoints in {}",
        recipe.name,
        recipe.backbone,
        train_set.len(),
        val_ids.len(),
        run_dir.display()
    );
    let mut bars = TrainBars::new(&format!("{} stream", recipe.name), true).counting_images(recipe.train.batch_size);
    if opts.resume && !castream_backbones::train::checkpoint_path(&run_dir).exists() {
        anyhow::bail!(
            "--resume: no epoch checkpoint of this recipe in {} (the recipe, the backbone weights or the image lists \
             changed since that run, or it never finished an epoch); Fix: run without --resume",
            run_dir.display()
        );
    }
    let history = train(&task, &recipe.train, &run_dir, opts.resume, &mut bars)?;
    let (commit, dirty) = git_state(root);
    let card = StreamCard {
        format: CARD_FORMAT,
        architecture: "ca-stream".into(),
        backbone: recipe.backbone.clone(),
        backbone_sha256: sha256,
        stream: recipe.stream.clone(),
        recipe: serde_json::to_value(&recipe)?,
        data: vec![train_set.record(), val_set.record()],
        val_top1: history.last().map_or(f64::NAN, |h| h.val_accuracy),
        history,
        commit,
        dirty,
        command: std::env::args().collect(),
        weights_sha256: String::new(),
    };
    let output = root.join(&recipe.output);
    let card = stream_checkpoint::save(&output, &ca, card)?;
    Ok((output, card))
}

/// The recipes in `dir` that load, with their files (for pointing at the one that trains a
/// missing stream).
pub fn recipes(dir: &Path) -> Vec<(PathBuf, StreamRecipe)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files.into_iter().filter_map(|f| StreamRecipe::load(&f).ok().map(|r| (f, r))).collect()
}

/// `n` of `len` indices, a seeded sample in ascending order (all of them when `n` is `None` or
/// at least `len`).
pub fn subset(len: usize, n: Option<usize>, seed: u64) -> Result<Vec<usize>> {
    match n {
        Some(n) if n < len => {
            let mut ids: Vec<usize> = batch_indices(len, len, Some(seed))?.into_iter().flatten().take(n).collect();
            ids.sort_unstable();
            Ok(ids)
        }
        _ => Ok((0..len).collect()),
    }
}
