//! The quick profile's shipped GAP backbones: their training recipe
//! (`checkpoints/quick/backbones.toml`), training (`castream train-backbones`) and verified
//! loading by the targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use castream_backbones::model::sidecar_path;
use castream_backbones::train::{evaluate, train, Augment, EpochReport, GapTask, LabelledSet, TrainConfig};
use castream_backbones::{BackboneConfig, CheckpointMeta, Model};
use castream_data::discovery::{DataLocation, DatasetName, Locator};
use castream_data::labelled::{hex, Split};
use castream_data::scenes::{SceneConfig, SceneSet, SceneStats};
use castream_data::Normalisation;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress::TrainBars;
use castream_data::progress;
use castream_data::provenance::git_state;

/// Where the recipe, the checkpoints and the manifest live, relative to the repository root.
pub const CHECKPOINT_DIR: &str = "checkpoints/quick";
const RECIPE: &str = "backbones.toml";
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub data: RecipeData,
    #[serde(default)]
    pub scenes: SceneConfig,
    pub backbone: Vec<BackboneRecipe>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeData {
    /// Scenes `0..train_images` of the Fashion-MNIST train split train; the following
    /// `val_images` (default: all the rest) validate.
    pub train_images: usize,
    #[serde(default)]
    pub val_images: Option<usize>,
    pub eval_batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneRecipe {
    pub name: String,
    pub init_seed: u64,
    pub model: BackboneConfig,
    #[serde(default)]
    pub augment: Augment,
    pub train: TrainConfig,
}

/// One trained backbone's provenance, in `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub command: String,
    pub commit: String,
    pub recipe: BackboneRecipe,
    /// SHA-256 of the Fashion-MNIST train split's content.
    pub data_sha256: String,
    /// SHA-256 of the safetensors file.
    pub sha256: String,
    /// SHA-256 of its `.json` sidecar (configuration, class names, normalisation).
    pub sidecar_sha256: String,
    pub test_accuracy: f64,
    pub test_images: usize,
    pub val_accuracy: f64,
    pub parameters: usize,
    pub threads: usize,
    /// Training time over all epochs (also when resumed across runs).
    pub train_seconds: f64,
    pub history: Vec<EpochReport>,
}

pub type Manifest = BTreeMap<String, ManifestEntry>;

/// A subset of a scene set, normalised, as the trainer's input.
pub struct SceneSubset<'a> {
    pub set: &'a SceneSet,
    pub indices: Vec<usize>,
    pub normalisation: Normalisation,
}

impl LabelledSet for SceneSubset<'_> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn batch(&self, indices: &[usize], device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
        let ids: Vec<usize> = indices.iter().map(|&i| self.indices[i]).collect();
        Ok(self.set.batch(&ids, &self.normalisation, device)?)
    }
}

pub fn load_recipe(root: &Path) -> Result<Recipe> {
    let path = root.join(CHECKPOINT_DIR).join(RECIPE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the backbone recipe", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}Fix: see docs/backbones.md for the recipe schema", path.display()))
}

/// `checkpoints/quick/manifest.json`: every trained backbone's provenance and learning curve.
pub fn load_manifest(root: &Path) -> Result<Manifest> {
    let path = root.join(CHECKPOINT_DIR).join(MANIFEST);
    if !path.exists() {
        return Ok(Manifest::new());
    }
    let text = std::fs::read_to_string(&path)?;
    serde_json::from_str(&text).with_context(|| format!("{}: corrupt manifest", path.display()))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

pub fn checkpoint_path(root: &Path, name: &str) -> PathBuf {
    root.join(CHECKPOINT_DIR).join(format!("{name}.safetensors"))
}

/// Whether `name` has a trained checkpoint in the manifest.
pub fn is_shipped(root: &Path, name: &str) -> Result<bool> {
    Ok(load_manifest(root)?.contains_key(name))
}

/// Loads a shipped backbone after checking its file against the manifest's SHA-256.
pub fn load_backbone(root: &Path, name: &str, device: &Device) -> Result<(Model, CheckpointMeta, ManifestEntry)> {
    let manifest = load_manifest(root)?;
    let entry = manifest.get(name).cloned().with_context(|| {
        format!(
            "quick backbone `{name}` is not trained ({} has no entry); Fix: run `cargo xtask train-backbones`",
            CHECKPOINT_DIR
        )
    })?;
    let path = checkpoint_path(root, name);
    for (file, expected) in [(path.clone(), &entry.sha256), (sidecar_path(&path), &entry.sidecar_sha256)] {
        let sha = sha256_file(&file)?;
        if sha != *expected {
            bail!(
                "{}: SHA-256 {sha} differs from the manifest's {expected}; the file was modified or is an LFS pointer. \
                 Fix: restore it from git or run `cargo xtask train-backbones --retrain`",
                file.display(),
            );
        }
    }
    let (model, meta) = Model::load(&path, device)?;
    Ok((model, meta, entry))
}

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub device: castream_data::DeviceChoice,
    pub retrain: bool,
    pub resume: bool,
    pub only: Option<String>,
}

/// Trains the recipe's backbones that are missing (all of them with `retrain`), writing each
/// checkpoint, its sidecar and the manifest entry.
pub fn train_backbones(root: &Path, opts: &TrainOptions) -> Result<()> {
    let device = opts.device.device()?;
    let recipe = load_recipe(root)?;
    if let Some(only) = &opts.only {
        if !recipe.backbone.iter().any(|b| &b.name == only) {
            bail!("no backbone `{only}` in {}/{RECIPE}", CHECKPOINT_DIR);
        }
    }
    let name = DatasetName::FashionMnist;
    let located = Locator::from_environment(name).locate(name, &DataLocation::default())?;
    let train_split = located.load(Split::Train)?;
    let data_sha256 = train_split.sha256.clone();
    if recipe.data.train_images >= train_split.len() {
        bail!(
            "[data] train_images = {} leaves no validation images of {}",
            recipe.data.train_images,
            train_split.len()
        );
    }
    let train_set = SceneSet::new(train_split, name, Split::Train, recipe.scenes.clone())?;
    let test_set = SceneSet::new(located.load(Split::Test)?, name, Split::Test, recipe.scenes.clone())?;
    let train_ids: Vec<usize> = (0..recipe.data.train_images).collect();
    let val_end =
        recipe.data.val_images.map_or(train_set.len(), |v| (recipe.data.train_images + v).min(train_set.len()));
    let val_ids: Vec<usize> = (recipe.data.train_images..val_end).collect();
    let bar = progress::bar(train_ids.len() as u64, "normalisation statistics");
    let normalisation = SceneStats::measure(&train_set, &train_ids, 1024, |n| bar.inc(n as u64)).normalisation();
    bar.finish_and_clear();

    let mut manifest = load_manifest(root)?;
    for b in &recipe.backbone {
        if opts.only.as_ref().is_some_and(|o| o != &b.name) {
            continue;
        }
        let path = checkpoint_path(root, &b.name);
        if !opts.retrain && path.exists() && manifest.get(&b.name).is_some_and(|e| e.recipe == *b) {
            println!("{}: trained ({}); `--retrain` regenerates it", b.name, path.display());
            continue;
        }
        let model = Model::new(b.model.clone(), b.init_seed, &device)?;
        let subset = |ids: &[usize], set| SceneSubset { set, indices: ids.to_vec(), normalisation };
        let (train_data, val_data) = (subset(&train_ids, &train_set), subset(&val_ids, &train_set));
        let task = GapTask {
            model: &model,
            train: &train_data,
            val: &val_data,
            augment: b.augment.clone(),
            eval_batch_size: recipe.data.eval_batch_size,
        };
        let run_dir = root.join("target/castream/train").join(&b.name);
        println!(
            "{}: training {} ({} parameters) on {} scenes",
            b.name,
            b.model.describe(),
            model.parameter_count(),
            train_ids.len()
        );
        let history = train(&task, &b.train, &run_dir, opts.resume, &mut TrainBars::new(&b.name, true))?;
        // Summed over the epochs, so that a training spread over several `--resume`d runs counts whole.
        let train_seconds = history.iter().map(|h| h.seconds).sum();
        let test_ids: Vec<usize> = (0..test_set.len()).collect();
        let test_accuracy = evaluate(&model, &subset(&test_ids, &test_set), recipe.data.eval_batch_size)?;
        let meta = CheckpointMeta {
            config: b.model.clone(),
            classes: name.class_names().iter().map(|c| c.to_string()).collect(),
            normalisation,
            extra: serde_json::json!({ "scenes": recipe.scenes, "trained_on": "Fashion-MNIST scenes" }),
        };
        model.save(&path, &meta)?;
        let entry = ManifestEntry {
            command: format!("cargo xtask train-backbones --only {}", b.name),
            commit: git_state(root).0,
            recipe: b.clone(),
            data_sha256: data_sha256.clone(),
            sha256: sha256_file(&path)?,
            sidecar_sha256: sha256_file(&sidecar_path(&path))?,
            test_accuracy,
            test_images: test_ids.len(),
            val_accuracy: history.last().map_or(f64::NAN, |h| h.val_accuracy),
            parameters: model.parameter_count(),
            threads: rayon::current_num_threads(),
            train_seconds,
            history,
        };
        println!("{}: test accuracy {:.2}% -> {}", b.name, 100.0 * test_accuracy, path.display());
        manifest.insert(b.name.clone(), entry);
        castream_data::atomic::write(
            &root.join(CHECKPOINT_DIR).join(MANIFEST),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
    }
    Ok(())
}
