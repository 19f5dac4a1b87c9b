//! The quick profile's models for a target: a shipped GAP backbone and its CA-Stream, trained on
//! the frozen backbone once and cached.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use candle_core::Device;
use castream_backbones::optim::OptimizerConfig;
use castream_backbones::schedule::Schedule;
use castream_backbones::train::{train, TrainConfig};
use castream_backbones::CheckpointMeta;
use castream_data::cache::{CacheKind, Entry};
use castream_data::discovery::{DataLocation, DatasetName, Locator};
use castream_data::labelled::Split;
use castream_data::progress;
use castream_data::scenes::{SceneConfig, SceneSet};
use castream_stream::{CaModel, FeatureCache, StreamConfig, StreamTask};
use serde::{Deserialize, Serialize};

use crate::backbone::{BackboneSpec, LoadedBackbone};
use crate::quick::{load_recipe, ManifestEntry, SceneSubset};

/// How the CA-Stream is built and trained (METHOD.md §2–3). Trained streams are cached under
/// `target/castream/streams/` ([`STREAM_CACHE`]), keyed by the backbone's and the data's SHA-256,
/// this table and the scene settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSpec {
    pub config: StreamConfig,
    /// Training scenes (the first ones of the Fashion-MNIST train split), whose stage features are
    /// cached once (in memory up to [`FEATURE_MEMORY_BUDGET`], the rest on disk).
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

impl StreamSpec {
    /// Scenes of the Fashion-MNIST train split, the most `train_images` or `val_images` can ask for.
    pub const MAX_IMAGES: usize = 60_000;

    /// The stream of seed `k` of several: this one with training seed `train.seed + k`.
    pub fn seeded(&self, k: usize) -> StreamSpec {
        let mut stream = self.clone();
        stream.train.seed += k as u64;
        stream
    }

    /// The valid ranges (docs/specs.md, "Valid ranges"): `train_images` and `val_images` 1 to
    /// [`Self::MAX_IMAGES`], and the training's ([`TrainConfig::validate`]).
    pub fn validate(&self) -> Result<(), castream_data::valid::OutOfRange> {
        use castream_data::valid::in_range;
        in_range("train_images", self.train_images, 1..=Self::MAX_IMAGES, 10_000)?;
        in_range("val_images", self.val_images, 1..=Self::MAX_IMAGES, 2_000)?;
        self.train.validate().map_err(|e| e.within("train"))
    }
}

/// A backbone with its trained stream, and where they came from.
pub struct QuickModels {
    pub name: String,
    pub ca: CaModel,
    pub meta: CheckpointMeta,
    /// SHA-256 of the backbone's weight file.
    pub sha256: String,
    /// SHA-256 of the backbone's sidecar.
    pub sidecar_sha256: String,
    /// The shipped backbone's manifest entry; `None` for a checkpoint named by path.
    pub manifest: Option<ManifestEntry>,
    /// Validation accuracy of the stream after training.
    pub stream_val_accuracy: f64,
    /// Bytes of stage features the stream trained on (in memory or spilled to disk, see
    /// [`FEATURE_MEMORY_BUDGET`]).
    pub cache_bytes: usize,
    /// Whether the trained stream came from the stream cache.
    pub from_cache: bool,
    pub stream_file: PathBuf,
    /// SHA-256 of the trained stream's weights (`stream_file`).
    pub stream_sha256: String,
}

/// The Fashion-MNIST scene sets of the quick profile (train and test splits).
pub struct QuickData {
    pub train: Arc<SceneSet>,
    pub test: Arc<SceneSet>,
}

impl QuickData {
    /// Fashion-MNIST from `location` (else discovered), as scenes made with `scenes`.
    pub fn load(location: &DataLocation, scenes: &SceneConfig) -> Result<QuickData> {
        let name = DatasetName::FashionMnist;
        let located = Locator::from_environment(name).locate(name, location)?;
        let set = |split| -> Result<Arc<SceneSet>> {
            Ok(Arc::new(SceneSet::new(located.load(split)?, name, split, scenes.clone())?))
        };
        Ok(QuickData { train: set(Split::Train)?, test: set(Split::Test)? })
    }
}

/// The trained-stream cache; raise `format` when stream training changes.
pub const STREAM_CACHE: CacheKind = CacheKind { dir: "streams", format: 1 };

/// What a cached stream's card records about its training.
#[derive(serde::Serialize, serde::Deserialize)]
struct StreamRecord {
    val_accuracy: f64,
    cache_bytes: usize,
}

/// Memory the stage features of a backbone's stream-training and validation scenes may hold
/// (1.5 GiB); larger stages are spilled to disk and read back per batch, with bit-identical
/// values. Without this bound the ConvNeXt's 12,000 scenes held 4.3 GiB (and twice that while
/// being built), and a cold `table1` peaked at about 9 GB.
pub const FEATURE_MEMORY_BUDGET: usize = 3 << 29;

/// Stage features of a backbone's stream-training and validation scenes, computed once (all five
/// taps) and shared by every stream variant trained on that backbone.
pub struct StreamFeatures {
    pub train: FeatureCache,
    pub val: FeatureCache,
}

impl StreamFeatures {
    /// Bytes of all cached features, in memory and on disk.
    pub fn bytes(&self) -> usize {
        self.train.bytes() + self.val.bytes()
    }
}

/// `backbone` with the trained stream at `path` (a file written by `castream train-stream`), which
/// must have been trained on exactly these backbone weights.
pub fn trained_models(root: &Path, backbone: &BackboneSpec, path: &Path, device: &Device) -> Result<QuickModels> {
    let LoadedBackbone { model, mut meta, sha256, sidecar_sha256, manifest } =
        crate::backbone::load(root, backbone, device)?;
    let card = crate::stream_checkpoint::read_card(path)?;
    // The stream learnt on inputs normalised as its recipe said.
    if let Some(n) = card.recipe.get("normalisation").cloned().and_then(|v| serde_json::from_value(v).ok()) {
        meta.normalisation = n;
    }
    let ca = CaModel::new(model, &card.stream, 0)?;
    let card = crate::stream_checkpoint::load(path, &ca, &sha256)?;
    Ok(QuickModels {
        name: backbone.name(),
        ca,
        meta,
        sha256,
        sidecar_sha256,
        manifest,
        stream_val_accuracy: card.val_top1,
        cache_bytes: 0,
        from_cache: true,
        stream_file: path.to_path_buf(),
        stream_sha256: card.weights_sha256,
    })
}

/// `backbone` with a fresh, untrained stream, for experiments that explain the GAP network only
/// (the stream is never evaluated; its weights are recorded as `untrained`).
pub fn untrained_models(
    root: &Path,
    backbone: &BackboneSpec,
    config: &StreamConfig,
    device: &Device,
) -> Result<QuickModels> {
    let LoadedBackbone { model, meta, sha256, sidecar_sha256, manifest } =
        crate::backbone::load(root, backbone, device)?;
    Ok(QuickModels {
        name: backbone.name(),
        ca: CaModel::new(model, config, 0)?,
        meta,
        sha256,
        sidecar_sha256,
        manifest,
        stream_val_accuracy: f64::NAN,
        cache_bytes: 0,
        from_cache: false,
        stream_file: PathBuf::new(),
        stream_sha256: "untrained".into(),
    })
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
    let LoadedBackbone { model, meta, sha256, sidecar_sha256, manifest } =
        crate::backbone::load(root, backbone, device)?;
    let name = backbone.name();
    let name = name.as_str();
    let ca = CaModel::new(model, &spec.config, spec.train.seed)?;
    let recipe = load_recipe(root)?;
    // Everything the trained stream depends on: the backbone's weights, the training scenes'
    // source data and settings, the stream's spec, and where validation scenes start.
    let entry = Entry::new(
        &root.join("target/castream"),
        STREAM_CACHE,
        &format!("{name}{}", castream_data::device::cache_tag(device)),
        "safetensors",
        &(&sha256, &sidecar_sha256, &data.train.source.sha256, &data.train.config, spec, recipe.data.train_images),
    )?;
    if let Some(hit) = entry.load() {
        // Everything is checked before any weight is set: a failed load leaves the freshly
        // initialised stream untouched for the retraining that follows.
        let loaded = (|| -> Result<StreamRecord> {
            let record: StreamRecord = serde_json::from_value(hit.extra.clone())?;
            crate::stream_checkpoint::set_weights(&ca, &hit.bytes)?;
            Ok(record)
        })();
        match loaded {
            Ok(record) => {
                return Ok(QuickModels {
                    name: name.into(),
                    ca,
                    meta,
                    sha256,
                    sidecar_sha256,
                    manifest,
                    stream_val_accuracy: record.val_accuracy,
                    cache_bytes: record.cache_bytes,
                    from_cache: true,
                    stream_file: entry.path,
                    stream_sha256: hit.sha256,
                });
            }
            Err(e) => eprintln!("warning: cache entry {}: {e:#}; retraining the stream", entry.path.display()),
        }
    }

    if features.is_none() {
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
        // The smallest stages stay in memory within FEATURE_MEMORY_BUDGET (train first, val in the
        // rest); the others are spilled to unnamed files under target/castream/features/.
        let spill = root.join("target/castream/features");
        let build = |set: &SceneSubset, budget: usize| {
            FeatureCache::build_bounded(&ca.backbone, set, &all_taps, 128, budget, &spill, |n| bar.inc(n as u64))
        };
        let train = build(&train_set, FEATURE_MEMORY_BUDGET)?;
        let val = build(&val_set, FEATURE_MEMORY_BUDGET.saturating_sub(train.memory_bytes()))?;
        bar.finish_and_clear();
        *features = Some(StreamFeatures { train, val });
    }
    let cache = features.as_ref().expect("built above");
    let task = StreamTask { model: &ca, train: &cache.train, val: &cache.val, eval_batch_size: 256 };
    let run_dir = root.join("target/castream/stream-runs").join(entry.path.file_stem().expect("named by Entry"));
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
    let record = StreamRecord { val_accuracy: stream_val_accuracy, cache_bytes: cache.bytes() };
    let stream_sha256 = entry.store(&bytes, serde_json::to_value(&record)?)?;
    Ok(QuickModels {
        name: name.into(),
        ca,
        meta,
        sha256,
        sidecar_sha256,
        manifest,
        stream_val_accuracy,
        cache_bytes: record.cache_bytes,
        from_cache: false,
        stream_file: entry.path,
        stream_sha256,
    })
}
