//! Per-image interpretability scores of a saliency source on test images (METHOD.md §5): the
//! confidence metrics (AD, AG, AI), the causal metrics (insertion, deletion AUC) and localisation
//! against the images' object boxes (pointing game, energy, IoU). Every finished (model, source)
//! cell is cached on disk, so a table interrupted half-way resumes from the cells it completed.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use castream_cam::{explain, Method, PoolingKind, Subject};
use castream_data::cache::{CacheKind, Entry};
use castream_data::images::EvalImages;
use castream_data::progress;
use castream_metrics::metric::{Group, Metric, PerImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;
use crate::shard::Sharding;

/// Where a saliency map comes from: a CAM method (with the spec's options) or a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Source {
    Method(Method),
    /// The raw attention of one selection of the CA model's blocks (table 5).
    Attention(castream_stream::AttentionSelect),
    /// An isotropic Gaussian at the image centre, standard deviation a quarter of the side: what a
    /// map scores by knowing only that objects tend to sit near the middle.
    Centre,
    /// Uniform noise on the target layer's grid, bilinearly upsampled, seeded per image.
    Random,
    /// Fake-CAM (the Opti-CAM paper's control): 1 everywhere but the top-left pixel, 0. It keeps
    /// the whole image, so its AD is near 0 and its AI near a coin flip: what those metrics of the
    /// masked image reward without any explanation.
    FakeCam,
}

impl Source {
    /// Whether the source has a map for this pooling: each method says what it applies to, raw
    /// attention exists in the CA model only, baselines ignore the model.
    pub fn applies_to(&self, pooling: PoolingKind) -> bool {
        match self {
            Source::Method(m) => m.applies_to(pooling),
            Source::Attention(_) => pooling == PoolingKind::Ca,
            Source::Centre | Source::Random | Source::FakeCam => true,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Source::Method(m) => m.to_string(),
            Source::Attention(castream_stream::AttentionSelect::Block(t)) => format!("attention CA-{t}"),
            Source::Attention(castream_stream::AttentionSelect::Last) => "attention, last block".into(),
            Source::Attention(castream_stream::AttentionSelect::Product) => "attention product".into(),
            Source::Attention(castream_stream::AttentionSelect::Mean) => "attention mean".into(),
            Source::Centre => "centre prior".into(),
            Source::Random => "random map".into(),
            Source::FakeCam => "Fake-CAM".into(),
        }
    }
}

/// A model-free saliency map, scored like a method: what a map earns without the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    Centre,
    Random,
    FakeCam,
}

impl Baseline {
    pub fn source(self) -> Source {
        match self {
            Baseline::Centre => Source::Centre,
            Baseline::Random => Source::Random,
            Baseline::FakeCam => Source::FakeCam,
        }
    }
}

/// A cell's inputs, and the metric options its scores use if they use any.
#[derive(Serialize)]
#[serde(untagged)]
enum CellInputs<K> {
    Plain(K),
    Scored(K, castream_metrics::options::UsedOptions),
}

/// What a per-image seed draws: each kind its own stream.
#[derive(Clone, Copy)]
enum Salt {
    RandomMap = 0,
    Road = 0x524F_4144,
    Sensitivity = 0x4D53,
}

/// The cell caches: saliency maps of CAM methods, and metric scores. Raise `format` when the
/// computation of maps (methods, post-processing) or of scores (metrics) changes.
pub const MAPS: CacheKind = CacheKind { dir: "maps", format: 1 };
pub const SCORES: CacheKind = CacheKind { dir: "scores", format: 2 };

/// A model under evaluation: the subject explained, and what identifies its maps and scores in
/// the cell cache.
pub struct Explained<'a> {
    pub subject: Subject<'a>,
    pub key: ModelKey,
}

/// What a model's cells depend on besides the images and the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelKey {
    /// SHA-256 of every weight file (backbone, stream), joined.
    pub weights: String,
    pub pooling: PoolingKind,
    /// The target stage.
    pub layer: usize,
}

/// Test images and settings shared by every cell of a table.
pub struct Evaluation<'a> {
    pub set: &'a dyn EvalImages,
    pub ids: &'a [usize],
    pub batch_size: usize,
    pub protocol: Protocol,
    /// Seeds the random-map baseline.
    pub seed: u64,
    /// Directory of the cell cache (`target/castream/metrics`).
    pub cache: PathBuf,
    pub device: Device,
    /// Whether this run computes all images, one shard's part, or merges the shards' records.
    pub sharding: &'a Sharding,
}

impl Evaluation<'_> {
    /// The `metrics` of `source` on `model` (on a shard, for its part of the images).
    pub fn run(&self, model: &Explained, source: Source, metrics: &[Metric]) -> Result<PerImage> {
        self.run_shared(model, &[], source, metrics)
    }

    /// [`Self::run`] for one of several models sharing everything up to the target layer (a
    /// frozen backbone's GAP network and CA models): a CAM method's maps of every `sibling` not yet
    /// cached are computed in the same pass as `model`'s and cached, so Score-CAM's masked forwards
    /// run through the shared backbone once for all of them.
    pub fn run_shared(
        &self,
        model: &Explained,
        siblings: &[&Explained],
        source: Source,
        metrics: &[Metric],
    ) -> Result<PerImage> {
        let label =
            format!("{} {} at F_{} ({:.12})", source.label(), model.key.pooling, model.key.layer, model.key.weights);
        let inputs = self.inputs(SCORES, &model.key, source, Some(metrics), &[])?;
        self.sharding
            .cell(&label, &inputs, self.ids, self.batch_size, |ids| self.scores(model, siblings, source, metrics, ids))
    }

    /// The `metrics` of `source` on `model` for the images `ids`, cached.
    fn scores(
        &self,
        model: &Explained,
        siblings: &[&Explained],
        source: Source,
        metrics: &[Metric],
        ids: &[usize],
    ) -> Result<PerImage> {
        let entry = self.entry(SCORES, &model.key, source, Some(metrics), ids, "json")?;
        if let Some(hit) = entry.load() {
            match serde_json::from_slice::<PerImage>(&hit.bytes) {
                Ok(cached) if metrics.iter().all(|m| cached.get(m).is_some_and(|v| v.len() == ids.len())) => {
                    return Ok(cached)
                }
                _ => eprintln!("warning: cache entry {}: not this cell's scores; recomputing it", entry.path.display()),
            }
        }
        let maps = self.maps(model, siblings, source, ids)?;
        let bar = progress::bar(ids.len() as u64, format!("{} {}: scoring", source.label(), model.key.pooling));
        let mut out: PerImage = metrics.iter().map(|&m| (m, Vec::with_capacity(ids.len()))).collect();
        let mut first = 0;
        for chunk in ids.chunks(self.batch_size.max(1)) {
            self.score_batch(&model.subject, source, &maps.narrow(0, first, chunk.len())?, chunk, &mut out)?;
            first += chunk.len();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        entry.store(&serde_json::to_vec(&out)?, serde_json::Value::Null)?;
        Ok(out)
    }

    /// The cache entry of a cell's maps (`metrics` = `None`) or scores on the images `ids`.
    fn entry(
        &self,
        kind: CacheKind,
        model: &ModelKey,
        source: Source,
        metrics: Option<&[Metric]>,
        ids: &[usize],
        ext: &str,
    ) -> Result<Entry> {
        // Another device sums in another order: its cells are its own (the CPU's keep their names).
        let stem = format!("cell{}", castream_data::device::cache_tag(&self.device));
        Entry::new(&self.cache, kind, &stem, ext, &self.inputs(kind, model, source, metrics, ids)?)
    }

    /// Everything a cell's maps or scores on the images `ids` depend on: the model's weights,
    /// pooling and layer, the source, the protocol, the images' source data (SHA-256), settings and
    /// identifiers, the random map's seed and the batch size.
    #[allow(clippy::type_complexity)]
    fn inputs<'s>(
        &'s self,
        kind: CacheKind,
        model: &'s ModelKey,
        source: Source,
        metrics: Option<&'s [Metric]>,
        ids: &'s [usize],
    ) -> Result<impl Serialize + 's> {
        // The images' identity as the JSON text it is (re-parsing would re-format its floats);
        // object boxes only change scores, so maps are shared by tables with and without them.
        let mut images = self.set.identity();
        if let Some(boxes) = self.set.boxes_identity().filter(|_| kind.dir == SCORES.dir) {
            images = format!("[{images},{}]", serde_json::to_string(&boxes)?);
        }
        let images = serde_json::value::RawValue::from_string(images)?;
        let seeded = |g: Group| metrics.is_some_and(|m| m.iter().any(|m| m.group() == g));
        let seed = (source == Source::Random || seeded(Group::Road) || seeded(Group::Robustness)).then_some(self.seed);
        // Scores are computed from the maps: a change to how maps are made retires them too.
        let maps_format = MAPS.format;
        // Batches split differently round differently (~1e-7 in the maps, enough to swap tied
        // pixels in the insertion order): the batch size is an input too.
        let key = (model, source, metrics, &self.protocol, images, ids, seed, maps_format, self.batch_size);
        // Metrics without options keep the keys they had before metrics had options.
        Ok(match metrics.and_then(|m| self.protocol.scoring.used_by(m)) {
            None => CellInputs::Plain(key),
            Some(used) => CellInputs::Scored(key, used),
        })
    }

    /// The seed of image `i`'s random draws of one kind: independent of the batch it is in.
    fn image_seed(&self, i: usize, salt: Salt) -> u64 {
        self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt as u64
    }

    /// The post-processed maps `(N, h, w)` of every image, at the method's resolution. A CAM
    /// method's maps are cached (Score-CAM's cost `K` forwards per image, and tables 2, 5 and 6
    /// score the same maps), with those of the `siblings` computed alongside
    /// ([`Self::run_shared`]); attention and baselines are cheap to recompute.
    fn maps(&self, model: &Explained, siblings: &[&Explained], source: Source, ids: &[usize]) -> Result<Tensor> {
        let method = match source {
            Source::Method(m) => Some(m.build(&self.protocol.cam)),
            _ => None,
        };
        let mut group: Vec<&Explained> = vec![model];
        if method.is_some() {
            if let Some(maps) = self.cached_maps(model, source, ids)? {
                return Ok(maps);
            }
            // The models computed in this pass: CA models first, whose activations carry the
            // earlier stages every head reads (`CamMethod::saliency_shared`).
            for &sibling in siblings {
                if sibling.key != model.key && self.cached_maps(sibling, source, ids)?.is_none() {
                    group.push(sibling);
                }
            }
            group.sort_by_key(|e| e.key.pooling != PoolingKind::Ca);
        }
        let subjects: Vec<&Subject> = group.iter().map(|e| &e.subject).collect();
        let what = match group.len() {
            1 => format!("{} {}: maps", source.label(), model.key.pooling),
            n => format!("{}: maps of {n} models sharing a backbone", source.label()),
        };
        let bar = progress::bar(ids.len() as u64, what);
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); group.len()];
        for chunk in ids.chunks(self.batch_size.max(1)) {
            let (x, y) = self.set.batch(chunk, &model.subject.normalisation, &self.device)?;
            let labels = y.to_vec1()?;
            let classes: Vec<Vec<u32>> =
                subjects.iter().map(|s| self.protocol.class.resolve(s, &x, &labels)).collect::<Result<_, _>>()?;
            let maps = match &method {
                Some(m) => castream_cam::explain_shared(m.as_ref(), &subjects, &x, &classes)?
                    .into_iter()
                    .map(|e| e.maps)
                    .collect(),
                None => vec![self.batch_maps(&model.subject, source, &x, &classes[0], chunk)?],
            };
            for (part, m) in parts.iter_mut().zip(maps) {
                part.push(m);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let mut mine = None;
        for (e, part) in group.iter().zip(parts) {
            let maps = Tensor::cat(&part, 0)?;
            if method.is_some() {
                let entry = self.entry(MAPS, &e.key, source, None, ids, "safetensors")?;
                entry.store(&safetensors::serialize([("maps", &maps)], None)?, serde_json::Value::Null)?;
            }
            if std::ptr::eq(*e, model) {
                mine = Some(maps);
            }
        }
        Ok(mine.expect("the model is in its own group"))
    }

    /// A CAM method's cached maps of `model` on the images `ids`, if a valid entry exists.
    fn cached_maps(&self, model: &Explained, source: Source, ids: &[usize]) -> Result<Option<Tensor>> {
        let entry = self.entry(MAPS, &model.key, source, None, ids, "safetensors")?;
        let Some(hit) = entry.load() else { return Ok(None) };
        let maps = candle_core::safetensors::load_buffer(&hit.bytes, &self.device)
            .ok()
            .and_then(|mut t| t.remove("maps"))
            .filter(|m| m.dim(0).ok() == Some(ids.len()));
        if maps.is_none() {
            eprintln!("warning: cache entry {}: not this cell's maps; recomputing them", entry.path.display());
        }
        Ok(maps)
    }

    /// Maps `(B, h, w)` in [0, 1] for the images `ids` of the batch `x`.
    fn batch_maps(
        &self,
        subject: &Subject,
        source: Source,
        x: &Tensor,
        classes: &[u32],
        ids: &[usize],
    ) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let options = &self.protocol.cam;
        match source {
            Source::Method(m) => Ok(explain(m.build(options).as_ref(), subject, x, classes)?.maps),
            Source::Attention(attention) => {
                let method = Method::RawAttention.build(&castream_cam::MethodOptions { attention, ..*options });
                Ok(explain(method.as_ref(), subject, x, classes)?.maps)
            }
            Source::Centre => {
                let sigma = h.max(w) as f64 / 4.0;
                let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
                let map: Vec<f32> = (0..h * w)
                    .map(|p| {
                        let (dy, dx) = ((p / w) as f64 - cy, (p % w) as f64 - cx);
                        (-(dy * dy + dx * dx) / (2.0 * sigma * sigma)).exp() as f32
                    })
                    .collect();
                Ok(castream_stream::minmax_normalise(&Tensor::from_vec(map, (1, h, w), x.device())?)?
                    .repeat((b, 1, 1))?)
            }
            Source::FakeCam => {
                let mut map = vec![1f32; h * w];
                map[0] = 0.0;
                Tensor::from_vec(map, (1, h, w), x.device())?.repeat((b, 1, 1)).map_err(Into::into)
            }
            Source::Random => {
                let (_, _, gh, gw) = subject.activations(x)?.target.dims4()?;
                let noise: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| {
                        let mut rng = ChaCha8Rng::seed_from_u64(self.image_seed(i, Salt::RandomMap));
                        (0..gh * gw).map(move |_| rng.random::<f32>())
                    })
                    .collect();
                Ok(castream_stream::minmax_normalise(&Tensor::from_vec(noise, (b, gh, gw), x.device())?)?)
            }
        }
    }
}

mod scoring;
#[cfg(test)]
mod tests;
