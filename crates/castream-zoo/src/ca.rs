//! The quick profile's models for a target: a shipped GAP backbone and its CA-Stream, trained on
//! the frozen backbone once and cached.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use castream_backbones::optim::OptimizerConfig;
use castream_backbones::schedule::Schedule;
use castream_backbones::train::{train, TrainConfig};
use castream_backbones::CheckpointMeta;
use castream_data::discovery::{DataLocation, DatasetName, Locator};
use castream_data::labelled::{hex, Split};
use castream_data::progress;
use castream_data::scenes::{SceneConfig, SceneSet};
use castream_stream::{CaModel, FeatureCache, StreamConfig, StreamTask};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backbone::{BackboneSpec, LoadedBackbone};
use crate::quick::{load_recipe, ManifestEntry, SceneSubset};

/// How the CA-Stream is built and trained (METHOD.md §2–3). Trained streams are cached under
/// `target/castream/streams/`, keyed by backbone checkpoint, this table and the scene settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSpec {
    pub config: StreamConfig,
    /// Training scenes (the first ones of the Fashion-MNIST train split), whose stage features are
    /// cached in memory once.
    pub train_images: usize,
    /// Validation scenes (from the end of the train split, outside the backbones' training set).
    pub val_images: usize,
    pub train: TrainConfig,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            config: StreamConfig::default(),
            train_images: 10_000,
            val_images: 2_000,
            train: TrainConfig {
                epochs: 10,
                batch_size: 128,
                optimizer: OptimizerConfig::adamw(3e-3, 0.0),
                schedule: Schedule::Cosine { warmup_epochs: 0.5, min_ratio: 0.01 },
                seed: 0,
            },
        }
    }
}

/// A backbone with its trained stream, and where they came from.
pub struct QuickModels {
    pub name: String,
    pub ca: CaModel,
    pub meta: CheckpointMeta,
    /// SHA-256 of the backbone's weight file.
    pub sha256: String,
    /// The shipped backbone's manifest entry; `None` for a checkpoint named by path.
    pub manifest: Option<ManifestEntry>,
    /// Validation accuracy of the stream after training.
    pub stream_val_accuracy: f64,
    /// Memory the stream's feature cache held while the stream trained.
    pub cache_bytes: usize,
    /// Whether the trained stream came from the stream cache.
    pub from_cache: bool,
    pub stream_file: PathBuf,
}

/// The Fashion-MNIST scene sets of the quick profile (train and test splits).
pub struct QuickData {
    pub train: SceneSet,
    pub test: SceneSet,
}

impl QuickData {
    /// Fashion-MNIST from `location` (else discovered), as scenes made with `scenes`.
    pub fn load(location: &DataLocation, scenes: &SceneConfig) -> Result<QuickData> {
        let name = DatasetName::FashionMnist;
        let located = Locator::from_environment(name).locate(name, location)?;
        let set = |split| -> Result<SceneSet> { Ok(SceneSet::new(located.load(split)?, name, split, scenes.clone())?) };
        Ok(QuickData { train: set(Split::Train)?, test: set(Split::Test)? })
    }
}

/// What a cached stream's JSON file records about its training.
#[derive(serde::Serialize, serde::Deserialize)]
struct StreamRecord {
    val_accuracy: f64,
    cache_bytes: usize,
}

/// Stage features of a backbone's stream-training and validation scenes, computed once (all five
/// taps) and shared by every stream variant trained on that backbone.
pub struct StreamFeatures {
    pub train: FeatureCache,
    pub val: FeatureCache,
}

impl StreamFeatures {
    pub fn bytes(&self) -> usize {
        self.train.bytes() + self.val.bytes()
    }
}

/// Loads backbone `name` and its stream for `spec`: from the stream cache when this exact
/// combination was trained before, else trains it now (seeded, deterministic) and caches it.
/// `features` holds the backbone's cached stage features across calls (built on first need).
pub fn quick_models(
    root: &Path,
    backbone: &BackboneSpec,
    spec: &StreamSpec,
    data: &QuickData,
    features: &mut Option<StreamFeatures>,
    device: &Device,
) -> Result<QuickModels> {
    let LoadedBackbone { model, meta, sha256, manifest } = crate::backbone::load(root, backbone, device)?;
    let name = backbone.name();
    let name = name.as_str();
    let ca = CaModel::new(model, &spec.config, spec.train.seed)?;
    let key = {
        let mut h = Sha256::new();
        h.update(&sha256);
        h.update(serde_json::to_vec(spec)?);
        h.update(serde_json::to_vec(&data.train.config)?);
        hex(&h.finalize())[..16].to_string()
    };
    let stream_file = root.join("target/castream/streams").join(format!("{name}-{key}.safetensors"));
    let meta_file = stream_file.with_extension("json");
    if stream_file.exists() && meta_file.exists() {
        let tensors = candle_core::safetensors::load(&stream_file, device)?;
        for (var_name, var) in ca.stream.named_vars() {
            let t = tensors.get(&var_name).with_context(|| format!("{}: lacks `{var_name}`", stream_file.display()))?;
            var.set(t)?;
        }
        let record: StreamRecord = serde_json::from_slice(&std::fs::read(&meta_file)?)
            .with_context(|| format!("{}: corrupt; delete it to retrain the stream", meta_file.display()))?;
        return Ok(QuickModels {
            name: name.into(),
            ca,
            meta,
            sha256,
            manifest,
            stream_val_accuracy: record.val_accuracy,
            cache_bytes: record.cache_bytes,
            from_cache: true,
            stream_file,
        });
    }

    if features.is_none() {
        let recipe = load_recipe(root)?;
        // Validation scenes come from the end of the train split, outside the backbone's training set.
        let first_val = data.train.len().saturating_sub(spec.val_images).max(recipe.data.train_images);
        let subset =
            |ids: Vec<usize>| SceneSubset { set: &data.train, indices: ids, normalisation: meta.normalisation };
        let (train_set, val_set) =
            (subset((0..spec.train_images.min(first_val)).collect()), subset((first_val..data.train.len()).collect()));
        let all_taps = [0, 1, 2, 3, 4];
        let bar = progress::bar(
            (train_set.indices.len() + val_set.indices.len()) as u64,
            format!("{name}: caching features"),
        );
        let train = FeatureCache::build(&ca.backbone, &train_set, &all_taps, 128, |n| bar.inc(n as u64))?;
        let val = FeatureCache::build(&ca.backbone, &val_set, &all_taps, 128, |n| bar.inc(n as u64))?;
        bar.finish_and_clear();
        *features = Some(StreamFeatures { train, val });
    }
    let cache = features.as_ref().expect("built above");
    let task = StreamTask { model: &ca, train: &cache.train, val: &cache.val, eval_batch_size: 256 };
    let run_dir = root.join("target/castream/stream-runs").join(format!("{name}-{key}"));
    let history = train(
        &task,
        &spec.train,
        &run_dir,
        false,
        &mut crate::progress::TrainBars::new(&format!("{name} stream"), false),
    )?;
    let stream_val_accuracy = history.last().map_or(f64::NAN, |h| h.val_accuracy);
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        ca.stream.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
    castream_data::atomic::write(&stream_file, &bytes)?;
    let record = StreamRecord { val_accuracy: stream_val_accuracy, cache_bytes: cache.bytes() };
    castream_data::atomic::write(&meta_file, &serde_json::to_vec(&record)?)?;
    Ok(QuickModels {
        name: name.into(),
        ca,
        meta,
        sha256,
        manifest,
        stream_val_accuracy,
        cache_bytes: record.cache_bytes,
        from_cache: false,
        stream_file,
    })
}
