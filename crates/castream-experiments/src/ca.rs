//! The quick profile's models for a target: a shipped GAP backbone and its CA-Stream, trained on
//! the frozen backbone once and cached.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use castream_backbones::train::train;
use castream_backbones::CheckpointMeta;
use castream_data::discovery::{DatasetName, Locator};
use castream_data::labelled::{hex, Split};
use castream_data::scenes::SceneSet;
use castream_stream::{CaModel, FeatureCache, StreamTask};
use sha2::{Digest, Sha256};

use crate::progress;
use crate::quick::{load_backbone, load_recipe, ManifestEntry, SceneSubset};
use crate::spec::{Settings, StreamSpec};

/// A backbone with its trained stream, and where they came from.
pub struct QuickModels {
    pub name: String,
    pub ca: CaModel,
    pub meta: CheckpointMeta,
    pub manifest: ManifestEntry,
    /// Validation accuracy of the stream after training.
    pub stream_val_accuracy: f64,
    /// Memory the stream's feature cache held while training (0 when loaded from the cache).
    pub cache_bytes: usize,
    pub stream_file: PathBuf,
}

/// The Fashion-MNIST scene sets of the quick profile (train and test splits).
pub struct QuickData {
    pub train: SceneSet,
    pub test: SceneSet,
}

impl QuickData {
    pub fn load(settings: &Settings) -> Result<QuickData> {
        let name = DatasetName::FashionMnist;
        let located = Locator::from_environment(name).locate(name, &settings.data.fashion_mnist)?;
        let set = |split| -> Result<SceneSet> { Ok(SceneSet::new(located.load(split)?, name, split, settings.scenes.clone())?) };
        Ok(QuickData { train: set(Split::Train)?, test: set(Split::Test)? })
    }
}

/// Loads backbone `name` and its stream for `spec`: from the stream cache when this exact
/// combination was trained before, else trains it now (seeded, deterministic) and caches it.
pub fn quick_models(root: &Path, name: &str, spec: &StreamSpec, data: &QuickData) -> Result<QuickModels> {
    let (backbone, meta, manifest) = load_backbone(root, name)?;
    let ca = CaModel::new(backbone, &spec.config, spec.train.seed)?;
    let key = {
        let mut h = Sha256::new();
        h.update(&manifest.sha256);
        h.update(serde_json::to_vec(spec)?);
        h.update(serde_json::to_vec(&data.train.config)?);
        hex(&h.finalize())[..16].to_string()
    };
    let stream_file = root.join("target/castream/streams").join(format!("{name}-{key}.safetensors"));
    let meta_file = stream_file.with_extension("json");
    if stream_file.exists() && meta_file.exists() {
        let tensors = candle_core::safetensors::load(&stream_file, &Device::Cpu)?;
        for (var_name, var) in ca.stream.named_vars() {
            let t = tensors.get(&var_name).with_context(|| format!("{}: lacks `{var_name}`", stream_file.display()))?;
            var.set(t)?;
        }
        let stream_val_accuracy: f64 = serde_json::from_slice(&std::fs::read(&meta_file)?)?;
        return Ok(QuickModels { name: name.into(), ca, meta, manifest, stream_val_accuracy, cache_bytes: 0, stream_file });
    }

    let recipe = load_recipe(root)?;
    let first_val = data.train.len().saturating_sub(spec.val_images).max(recipe.data.train_images);
    let subset = |ids: Vec<usize>| SceneSubset { set: &data.train, indices: ids, normalisation: meta.normalisation };
    let (train_set, val_set) =
        (subset((0..spec.train_images.min(first_val)).collect()), subset((first_val..data.train.len()).collect()));
    let taps = ca.stream.config().taps.clone();
    let bar = progress::bar((train_set.indices.len() + val_set.indices.len()) as u64, format!("{name}: caching features"));
    let train_cache = FeatureCache::build(&ca.backbone, &train_set, &taps, 128, |n| bar.inc(n as u64))?;
    let val_cache = FeatureCache::build(&ca.backbone, &val_set, &taps, 128, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let cache_bytes = train_cache.bytes() + val_cache.bytes();
    let task = StreamTask { model: &ca, train: &train_cache, val: &val_cache, eval_batch_size: 256 };
    let run_dir = root.join("target/castream/stream-runs").join(format!("{name}-{key}"));
    let history = train(&task, &spec.train, &run_dir, false, &mut ())?;
    let stream_val_accuracy = history.last().map_or(f64::NAN, |h| h.val_accuracy);
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        ca.stream.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    std::fs::create_dir_all(stream_file.parent().expect("has a parent"))?;
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
    castream_data::atomic::write(&stream_file, &bytes)?;
    castream_data::atomic::write(&meta_file, serde_json::to_string(&stream_val_accuracy)?.as_bytes())?;
    Ok(QuickModels { name: name.into(), ca, meta, manifest, stream_val_accuracy, cache_bytes, stream_file })
}
