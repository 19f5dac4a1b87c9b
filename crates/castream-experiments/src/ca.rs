//! The quick profile's models for a target: a shipped GAP backbone and its CA-Stream, trained on
//! the frozen backbone once and cached.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
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
    pub fn load(settings: &Settings) -> Result<QuickData> {
        let name = DatasetName::FashionMnist;
        let located = Locator::from_environment(name).locate(name, &settings.data.fashion_mnist)?;
        let set = |split| -> Result<SceneSet> {
            Ok(SceneSet::new(located.load(split)?, name, split, settings.scenes.clone())?)
        };
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
    name: &str,
    spec: &StreamSpec,
    data: &QuickData,
    features: &mut Option<StreamFeatures>,
) -> Result<QuickModels> {
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
        let record: StreamRecord = serde_json::from_slice(&std::fs::read(&meta_file)?)
            .with_context(|| format!("{}: corrupt; delete it to retrain the stream", meta_file.display()))?;
        return Ok(QuickModels {
            name: name.into(),
            ca,
            meta,
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
    let history =
        train(&task, &spec.train, &run_dir, false, &mut progress::TrainBars::new(&format!("{name} stream"), false))?;
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
        manifest,
        stream_val_accuracy,
        cache_bytes: record.cache_bytes,
        from_cache: false,
        stream_file,
    })
}

/// Per-image correctness (1 or 0) on the first `n` test scenes of the GAP network and of each CA
/// model, which must all share one backbone: the backbone runs once per batch.
pub fn correctness(
    models: &[&QuickModels],
    data: &QuickData,
    n: usize,
    batch: usize,
) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let first = models.first().context("no model to evaluate")?;
    let ids: Vec<usize> = (0..n.min(data.test.len())).collect();
    let (mut gap, mut ca) = (Vec::new(), vec![Vec::new(); models.len()]);
    let hits = |logits: &candle_core::Tensor, y: &candle_core::Tensor| -> Result<Vec<f64>> {
        Ok(logits.argmax(1)?.eq(y)?.to_dtype(DType::U8)?.to_vec1::<u8>()?.into_iter().map(f64::from).collect())
    };
    let bar = progress::bar(ids.len() as u64, format!("{}: evaluating", first.name));
    for chunk in ids.chunks(batch.max(1)) {
        let (x, y) = data.test.batch(chunk, &first.meta.normalisation, &Device::Cpu)?;
        let features = first.ca.backbone.net.stages(&x, false)?;
        gap.extend(hits(&first.ca.backbone.net.head(&features[4])?, &y)?);
        for (m, out) in models.iter().zip(&mut ca) {
            out.extend(hits(&m.ca.logits_from_features(&features)?.0, &y)?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((gap, ca))
}
