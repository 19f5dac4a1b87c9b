//! Per-image interpretability scores of a saliency source on test scenes (METHOD.md §5): the
//! confidence metrics (AD, AG, AI), the causal metrics (insertion, deletion AUC) and localisation
//! against the scenes' exact boxes (pointing game, energy, IoU). Every finished (model, source)
//! cell is cached on disk, so a table interrupted half-way resumes from the cells it completed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use castream_cam::{explain, Method, Pooling, Subject};
use castream_data::labelled::hex;
use castream_data::scenes::SceneSet;
use castream_metrics::causal::{auc, causal_curves, CausalMode};
use castream_metrics::confidence::{class_probabilities, confidence, explanation_images};
use castream_metrics::localisation::{box_iou, energy_in_box, pointing_hit, pointing_tolerance, DEFAULT_IOU_THRESHOLD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress;
use crate::spec::MetricsSpec;

/// One per-image score; the table cell is its mean. All in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    AverageDrop,
    AverageGain,
    AverageIncrease,
    Insertion,
    Deletion,
    Pointing,
    Energy,
    Iou,
}

/// The paper's five metrics (tables 2–5).
pub const PAPER_METRICS: [Metric; 5] =
    [Metric::AverageDrop, Metric::AverageGain, Metric::AverageIncrease, Metric::Insertion, Metric::Deletion];
/// Localisation against the ground-truth box (table 6).
pub const LOCALISATION: [Metric; 3] = [Metric::Pointing, Metric::Energy, Metric::Iou];

impl Metric {
    /// The column name of tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::AverageDrop => "AD",
            Metric::AverageGain => "AG",
            Metric::AverageIncrease => "AI",
            Metric::Insertion => "I",
            Metric::Deletion => "D",
            Metric::Pointing => "PG",
            Metric::Energy => "EPG",
            Metric::Iou => "IoU",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::AverageDrop | Metric::Deletion)
    }

    /// `AD↓`, `AG↑`, … for chart titles.
    pub fn label(self) -> String {
        format!("{}{}", self.name(), if self.higher_is_better() { "↑" } else { "↓" })
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
}

impl Source {
    pub fn label(&self) -> String {
        match self {
            Source::Method(m) => m.to_string(),
            Source::Attention(castream_stream::AttentionSelect::Block(t)) => format!("raw attention CA-{t}"),
            Source::Attention(castream_stream::AttentionSelect::Last) => "raw attention (last block)".into(),
            Source::Attention(castream_stream::AttentionSelect::Product) => "raw attention, product of blocks".into(),
            Source::Attention(castream_stream::AttentionSelect::Mean) => "raw attention, mean of blocks".into(),
            Source::Centre => "centre prior".into(),
            Source::Random => "random map".into(),
        }
    }
}

/// Per-image values of each metric, in the order of the evaluated images.
pub type PerImage = BTreeMap<Metric, Vec<f64>>;

/// Test scenes and settings shared by every cell of a table.
pub struct Evaluation<'a> {
    pub set: &'a SceneSet,
    pub ids: &'a [usize],
    pub batch_size: usize,
    pub spec: &'a MetricsSpec,
    /// Seeds the random-map baseline.
    pub seed: u64,
    /// Directory of the cell cache (`target/castream/metrics`).
    pub cache: PathBuf,
}

impl Evaluation<'_> {
    /// The `metrics` of `source` on `subject`, whose weights `model_key` identifies (the cache key).
    pub fn run(&self, subject: &Subject, model_key: &str, source: Source, metrics: &[Metric]) -> Result<PerImage> {
        let file = self.cache.join(format!("{}.json", self.cell_key(subject, model_key, source, metrics)?));
        if let Ok(bytes) = std::fs::read(&file) {
            if let Ok(cached) = serde_json::from_slice::<PerImage>(&bytes) {
                if metrics.iter().all(|m| cached.get(m).is_some_and(|v| v.len() == self.ids.len())) {
                    return Ok(cached);
                }
            }
        }
        let pooling = if subject.is_ca() { "CA" } else { "GAP" };
        let bar = progress::bar(self.ids.len() as u64, format!("{} {pooling}", source.label()));
        let mut out: PerImage = metrics.iter().map(|&m| (m, Vec::with_capacity(self.ids.len()))).collect();
        for chunk in self.ids.chunks(self.batch_size.max(1)) {
            self.score_batch(subject, source, chunk, &mut out)?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        castream_data::atomic::write(&file, &serde_json::to_vec(&out)?)?;
        Ok(out)
    }

    fn cell_key(&self, subject: &Subject, model_key: &str, source: Source, metrics: &[Metric]) -> Result<String> {
        let mut h = Sha256::new();
        h.update(model_key);
        h.update(serde_json::to_vec(&(source, metrics, self.spec, subject.layer, subject.is_ca()))?);
        h.update(serde_json::to_vec(&(self.set.dataset.display_name(), self.set.split.name(), &self.set.config))?);
        h.update(serde_json::to_vec(self.ids)?);
        if source == Source::Random {
            h.update(self.seed.to_le_bytes());
        }
        Ok(hex(&h.finalize())[..20].to_string())
    }

    /// Maps `(B, H, W)` in [0, 1] at the input size for the images `ids` of the batch `x`.
    fn maps(&self, subject: &Subject, source: Source, x: &Tensor, classes: &[u32], ids: &[usize]) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let options = &self.spec.cam;
        match source {
            Source::Method(m) => Ok(explain(m.build(options).as_ref(), subject, x, classes)?.upsampled),
            Source::Attention(attention) => {
                let method = Method::RawAttention.build(&castream_cam::MethodOptions { attention, ..*options });
                Ok(explain(method.as_ref(), subject, x, classes)?.upsampled)
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
                Ok(Tensor::from_vec(map, (1, h, w), x.device())?.repeat((b, 1, 1))?)
            }
            Source::Random => {
                let (_, _, gh, gw) = subject.activations(x)?.target.dims4()?;
                let noise: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| {
                        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        (0..gh * gw).map(move |_| rng.random::<f32>())
                    })
                    .collect();
                let grid = Tensor::from_vec(noise, (b, gh, gw), x.device())?;
                Ok(castream_stream::minmax_normalise(&castream_cam::upsample(&grid, h, w)?)?)
            }
        }
    }

    fn score_batch(&self, subject: &Subject, source: Source, ids: &[usize], out: &mut PerImage) -> Result<()> {
        let norm = subject.normalisation;
        let (x, y) = self.set.batch(ids, &norm, &Device::Cpu)?;
        let labels: Vec<u32> = y.to_vec1()?;
        let classes = self.spec.causal.target_class().resolve(subject, &x, &labels)?;
        let maps = self.maps(subject, source, &x, &classes, ids)?;
        let (_, _, h, w) = x.dims4()?;
        let wants = |group: &[Metric]| group.iter().any(|m| out.contains_key(m));
        let (confidence_wanted, localisation_wanted) = (wants(&PAPER_METRICS[..3]), wants(&LOCALISATION));
        if confidence_wanted {
            let y = class_probabilities(&subject.logits(&x)?, &classes)?;
            let o = class_probabilities(&subject.logits(&explanation_images(&x, &maps, &norm)?)?, &classes)?;
            let c = confidence(&y, &o);
            for (m, v) in [(Metric::AverageDrop, c.drop), (Metric::AverageGain, c.gain), (Metric::AverageIncrease, c.increase)] {
                if let Some(dst) = out.get_mut(&m) {
                    dst.extend(v);
                }
            }
        }
        for (metric, mode) in [(Metric::Insertion, CausalMode::Insertion), (Metric::Deletion, CausalMode::Deletion)] {
            if let Some(dst) = out.get_mut(&metric) {
                let mut score = |b: &Tensor| subject.logits(b);
                let curves = causal_curves(&mut score, &x, &maps, &classes, mode, self.spec.causal.variant(), self.batch_size)?;
                dst.extend(curves.iter().map(|c| 100.0 * auc(c)));
            }
        }
        if localisation_wanted {
            let maps: Vec<Vec<f32>> = maps.flatten_from(1)?.to_vec2()?;
            ensure!(h == w, "localisation needs square scenes, got {h}x{w}");
            for (map, &i) in maps.iter().zip(ids) {
                let bbox = self.set.scene(i).bbox.with_context(|| format!("scene #{i} has no object box"))?;
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

/// The pooling's name in tables.
pub fn pooling_name(pooling: &Pooling) -> &'static str {
    match pooling {
        Pooling::Gap(_) => "GAP",
        Pooling::Ca(_) => "CA",
    }
}
