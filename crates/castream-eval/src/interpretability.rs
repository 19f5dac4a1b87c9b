//! Per-image interpretability scores of a saliency source on test images (METHOD.md §5): the
//! confidence metrics (AD, AG, AI), the causal metrics (insertion, deletion AUC) and localisation
//! against the images' object boxes (pointing game, energy, IoU). Every finished (model, source)
//! cell is cached on disk, so a table interrupted half-way resumes from the cells it completed.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use castream_cam::{explain, Method, PoolingKind, Subject};
use castream_data::cache::{CacheKind, Entry};
use castream_data::images::EvalImages;
use castream_data::progress;
use castream_metrics::causal::{auc, causal_curves, CausalMode};
use castream_metrics::confidence::{class_probabilities, confidence, explanation_images};
use castream_metrics::localisation::{box_iou, energy_in_box, pointing_hit, pointing_tolerance, DEFAULT_IOU_THRESHOLD};
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

/// The cell caches: saliency maps of CAM methods, and metric scores. Raise `format` when the
/// computation of maps (methods, post-processing) or of scores (metrics) changes.
pub const MAPS: CacheKind = CacheKind { dir: "maps", format: 1 };
pub const SCORES: CacheKind = CacheKind { dir: "scores", format: 1 };

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
        let label =
            format!("{} {} at F_{} ({:.12})", source.label(), model.key.pooling, model.key.layer, model.key.weights);
        let inputs = self.inputs(SCORES, &model.key, source, Some(metrics), &[])?;
        self.sharding.cell(&label, &inputs, self.ids, self.batch_size, |ids| self.scores(model, source, metrics, ids))
    }

    /// The `metrics` of `source` on `model` for the images `ids`, cached.
    fn scores(&self, model: &Explained, source: Source, metrics: &[Metric], ids: &[usize]) -> Result<PerImage> {
        let entry = self.entry(SCORES, &model.key, source, Some(metrics), ids, "json")?;
        if let Some(hit) = entry.load() {
            match serde_json::from_slice::<PerImage>(&hit.bytes) {
                Ok(cached) if metrics.iter().all(|m| cached.get(m).is_some_and(|v| v.len() == ids.len())) => {
                    return Ok(cached)
                }
                _ => eprintln!("warning: cache entry {}: not this cell's scores; recomputing it", entry.path.display()),
            }
        }
        let maps = self.maps(model, source, ids)?;
        let bar = progress::bar(ids.len() as u64, format!("{} {}: scoring", source.label(), model.key.pooling));
        let mut out: PerImage = metrics.iter().map(|&m| (m, Vec::with_capacity(ids.len()))).collect();
        let mut first = 0;
        for chunk in ids.chunks(self.batch_size.max(1)) {
            self.score_batch(&model.subject, &maps.narrow(0, first, chunk.len())?, chunk, &mut out)?;
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
        let seed = (source == Source::Random).then_some(self.seed);
        // Scores are computed from the maps: a change to how maps are made retires them too.
        let maps_format = MAPS.format;
        // Batches split differently round differently (~1e-7 in the maps, enough to swap tied
        // pixels in the insertion order): the batch size is an input too.
        Ok((model, source, metrics, &self.protocol, images, ids, seed, maps_format, self.batch_size))
    }

    /// The post-processed maps `(N, h, w)` of every image, at the method's resolution. A CAM
    /// method's maps are cached (Score-CAM's cost `K` forwards per image, and tables 2, 5 and 6
    /// score the same maps); attention and baselines are cheap to recompute.
    fn maps(&self, model: &Explained, source: Source, ids: &[usize]) -> Result<Tensor> {
        let entry = self.entry(MAPS, &model.key, source, None, ids, "safetensors")?;
        if matches!(source, Source::Method(_)) {
            if let Some(hit) = entry.load() {
                let maps = candle_core::safetensors::load_buffer(&hit.bytes, &self.device)
                    .ok()
                    .and_then(|mut t| t.remove("maps"))
                    .filter(|m| m.dim(0).ok() == Some(ids.len()));
                match maps {
                    Some(maps) => return Ok(maps),
                    None => eprintln!(
                        "warning: cache entry {}: not this cell's maps; recomputing them",
                        entry.path.display()
                    ),
                }
            }
        }
        let bar = progress::bar(ids.len() as u64, format!("{} {}: maps", source.label(), model.key.pooling));
        let subject = &model.subject;
        let mut parts = Vec::new();
        for chunk in ids.chunks(self.batch_size.max(1)) {
            let (x, y) = self.set.batch(chunk, &subject.normalisation, &self.device)?;
            let classes = self.protocol.class.resolve(subject, &x, &y.to_vec1()?)?;
            parts.push(self.batch_maps(subject, source, &x, &classes, chunk)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let maps = Tensor::cat(&parts, 0)?;
        if matches!(source, Source::Method(_)) {
            entry.store(&safetensors::serialize([("maps", &maps)], None)?, serde_json::Value::Null)?;
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
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        (0..gh * gw).map(move |_| rng.random::<f32>())
                    })
                    .collect();
                Ok(castream_stream::minmax_normalise(&Tensor::from_vec(noise, (b, gh, gw), x.device())?)?)
            }
        }
    }

    /// Scores the images `ids` given their maps `(B, h, w)`, appending to `out`.
    fn score_batch(&self, subject: &Subject, maps: &Tensor, ids: &[usize], out: &mut PerImage) -> Result<()> {
        let norm = subject.normalisation;
        let (x, y) = self.set.batch(ids, &norm, &self.device)?;
        let classes = self.protocol.class.resolve(subject, &x, &y.to_vec1()?)?;
        let (_, _, h, w) = x.dims4()?;
        // Exactly the upsampling `explain` applies, so cached and fresh maps score the same.
        let maps = castream_cam::upsample(maps, h, w)?;
        let wants = |group: Group| out.keys().any(|m| m.group() == group);
        let (confidence_wanted, localisation_wanted) = (wants(Group::Confidence), wants(Group::Localisation));
        if confidence_wanted {
            let y = class_probabilities(&subject.logits(&x)?, &classes)?;
            let o = class_probabilities(&subject.logits(&explanation_images(&x, &maps, &norm)?)?, &classes)?;
            let c = confidence(&y, &o);
            for (m, v) in
                [(Metric::AverageDrop, c.drop), (Metric::AverageGain, c.gain), (Metric::AverageIncrease, c.increase)]
            {
                if let Some(dst) = out.get_mut(&m) {
                    dst.extend(v);
                }
            }
        }
        for (metric, mode) in [(Metric::Insertion, CausalMode::Insertion), (Metric::Deletion, CausalMode::Deletion)] {
            if let Some(dst) = out.get_mut(&metric) {
                let mut score = |b: &Tensor| subject.logits(b);
                let curves = causal_curves(
                    &mut score,
                    &x,
                    &maps,
                    &classes,
                    mode,
                    self.protocol.causal.variant(),
                    self.protocol.blur,
                    self.batch_size,
                )?;
                dst.extend(curves.iter().map(|c| 100.0 * auc(c)));
            }
        }
        if localisation_wanted {
            let maps: Vec<Vec<f32>> = maps.flatten_from(1)?.to_vec2()?;
            ensure!(h == w, "localisation needs square images, got {h}x{w}");
            for (map, &i) in maps.iter().zip(ids) {
                let bbox = self.set.bbox(i).with_context(|| {
                    format!(
                        "image #{i} of {} has no object box; localisation metrics need one per image",
                        self.set.describe()
                    )
                })?;
                let values = [
                    (Metric::Pointing, if pointing_hit(map, w, &bbox, pointing_tolerance(w)) { 100.0 } else { 0.0 }),
                    (Metric::Energy, 100.0 * energy_in_box(map, w, &bbox)),
                    (Metric::Iou, 100.0 * box_iou(map, w, &bbox, DEFAULT_IOU_THRESHOLD)),
                ];
                for (m, v) in values {
                    if let Some(dst) = out.get_mut(&m) {
                        dst.push(v);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
