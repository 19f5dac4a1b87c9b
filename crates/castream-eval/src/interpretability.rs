//! Per-image interpretability scores of a saliency source on test scenes (METHOD.md §5): the
//! confidence metrics (AD, AG, AI), the causal metrics (insertion, deletion AUC) and localisation
//! against the scenes' exact boxes (pointing game, energy, IoU). Every finished (model, source)
//! cell is cached on disk, so a table interrupted half-way resumes from the cells it completed.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use castream_cam::{explain, Method, PoolingKind, Subject};
use castream_data::labelled::hex;
use castream_data::progress;
use castream_data::scenes::SceneSet;
use castream_metrics::causal::{auc, causal_curves, CausalMode};
use castream_metrics::confidence::{class_probabilities, confidence, explanation_images};
use castream_metrics::localisation::{box_iou, energy_in_box, pointing_hit, pointing_tolerance, DEFAULT_IOU_THRESHOLD};
use castream_metrics::metric::{Group, Metric, PerImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::Protocol;

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
    /// Whether the source has a map for this pooling: each method says what it applies to, raw
    /// attention exists in the CA model only, baselines ignore the model.
    pub fn applies_to(&self, pooling: PoolingKind) -> bool {
        match self {
            Source::Method(m) => m.applies_to(pooling),
            Source::Attention(_) => pooling == PoolingKind::Ca,
            Source::Centre | Source::Random => true,
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
        }
    }
}

/// A model-free saliency map, scored like a method: what a map earns without the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    Centre,
    Random,
}

impl Baseline {
    pub fn source(self) -> Source {
        match self {
            Baseline::Centre => Source::Centre,
            Baseline::Random => Source::Random,
        }
    }
}

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

/// Test scenes and settings shared by every cell of a table.
pub struct Evaluation<'a> {
    pub set: &'a SceneSet,
    pub ids: &'a [usize],
    pub batch_size: usize,
    pub protocol: Protocol,
    /// Seeds the random-map baseline.
    pub seed: u64,
    /// Directory of the cell cache (`target/castream/metrics`).
    pub cache: PathBuf,
    pub device: Device,
}

impl Evaluation<'_> {
    /// The `metrics` of `source` on `model`.
    pub fn run(&self, model: &Explained, source: Source, metrics: &[Metric]) -> Result<PerImage> {
        let file = self.cache.join("scores").join(format!("{}.json", self.key(&model.key, source, Some(metrics))?));
        if let Ok(bytes) = std::fs::read(&file) {
            if let Ok(cached) = serde_json::from_slice::<PerImage>(&bytes) {
                if metrics.iter().all(|m| cached.get(m).is_some_and(|v| v.len() == self.ids.len())) {
                    return Ok(cached);
                }
            }
        }
        let maps = self.maps(model, source)?;
        let bar = progress::bar(self.ids.len() as u64, format!("{} {}: scoring", source.label(), model.key.pooling));
        let mut out: PerImage = metrics.iter().map(|&m| (m, Vec::with_capacity(self.ids.len()))).collect();
        let mut first = 0;
        for chunk in self.ids.chunks(self.batch_size.max(1)) {
            self.score_batch(&model.subject, &maps.narrow(0, first, chunk.len())?, chunk, &mut out)?;
            first += chunk.len();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        castream_data::atomic::write(&file, &serde_json::to_vec(&out)?)?;
        Ok(out)
    }

    /// A cache key over everything a cell's maps (and, with `metrics`, its scores) depend on.
    fn key(&self, model: &ModelKey, source: Source, metrics: Option<&[Metric]>) -> Result<String> {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&(model, source, metrics, &self.protocol))?);
        h.update(serde_json::to_vec(&(self.set.dataset.display_name(), self.set.split.name(), &self.set.config))?);
        h.update(serde_json::to_vec(self.ids)?);
        if source == Source::Random {
            h.update(self.seed.to_le_bytes());
        }
        Ok(hex(&h.finalize())[..20].to_string())
    }

    /// The post-processed maps `(N, h, w)` of every image, at the method's resolution. A CAM
    /// method's maps are cached (Score-CAM's cost `K` forwards per image, and tables 2, 5 and 6
    /// score the same maps); attention and baselines are cheap to recompute.
    fn maps(&self, model: &Explained, source: Source) -> Result<Tensor> {
        let file = self.cache.join("maps").join(format!("{}.safetensors", self.key(&model.key, source, None)?));
        if matches!(source, Source::Method(_)) {
            if let Ok(mut cached) = candle_core::safetensors::load(&file, &self.device) {
                if let Some(maps) = cached.remove("maps").filter(|m| m.dim(0).ok() == Some(self.ids.len())) {
                    return Ok(maps);
                }
            }
        }
        let bar = progress::bar(self.ids.len() as u64, format!("{} {}: maps", source.label(), model.key.pooling));
        let subject = &model.subject;
        let mut parts = Vec::new();
        for chunk in self.ids.chunks(self.batch_size.max(1)) {
            let (x, y) = self.set.batch(chunk, &subject.normalisation, &self.device)?;
            let classes = self.protocol.class.resolve(subject, &x, &y.to_vec1()?)?;
            parts.push(self.batch_maps(subject, source, &x, &classes, chunk)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let maps = Tensor::cat(&parts, 0)?;
        if matches!(source, Source::Method(_)) {
            let bytes = safetensors::serialize([("maps", &maps)], None)?;
            castream_data::atomic::write(&file, &bytes)?;
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
                    self.batch_size,
                )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use castream_backbones::{Arch, BackboneConfig, Model, Stem};
    use castream_cam::Pooling;
    use castream_data::device::cpu;
    use castream_data::discovery::DatasetName;
    use castream_data::labelled::{LabelledImages, Split, SplitFiles};
    use castream_data::scenes::SceneConfig;
    use castream_data::Normalisation;
    use castream_metrics::causal::CausalVariant;

    /// Scenes of 28x28 blobs on a 32 px canvas.
    fn scenes(n: usize) -> SceneSet {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let images: Vec<u8> = (0..n * 784)
            .map(|p| {
                let (y, x) = ((p % 784) / 28, p % 28);
                if (6..22).contains(&y) && (8..20).contains(&x) {
                    rng.random_range(80..=255)
                } else {
                    0
                }
            })
            .collect();
        let source = LabelledImages {
            images,
            labels: (0..n).map(|i| (i % 3) as u8).collect(),
            rows: 28,
            cols: 28,
            classes: 3,
            sha256: String::new(),
            files: SplitFiles { images: "i".into(), labels: "l".into() },
        };
        let config = SceneConfig { canvas: 32, item_size: [12, 20], ..SceneConfig::default() };
        SceneSet::new(source, DatasetName::FashionMnist, Split::Test, config).unwrap()
    }

    fn model() -> Model {
        let config =
            BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 3) };
        Model::new(config, 3, &cpu()).unwrap()
    }

    const NORM: Normalisation = Normalisation { mean: [0.4, 0.4, 0.4], std: [0.25, 0.25, 0.25] };
    const ALL: [Metric; 8] = Metric::ALL;

    fn explained(net: &Model) -> Explained<'_> {
        let key = ModelKey { weights: "m".into(), pooling: PoolingKind::Gap, layer: 4 };
        Explained { subject: Subject::of(Pooling::Gap(net), NORM), key }
    }

    #[test]
    fn scores_do_not_depend_on_batching_or_the_cache() {
        let (set, net, protocol) = (scenes(5), model(), Protocol::default());
        let model = explained(&net);
        let ids = [0, 1, 2, 3, 4];
        let dir = tempfile::tempdir().unwrap();
        let eval = |batch_size, cache: PathBuf| Evaluation {
            set: &set,
            ids: &ids,
            batch_size,
            protocol,
            seed: 1,
            cache,
            device: cpu(),
        };
        for source in [Source::Method(Method::ScoreCam), Source::Random, Source::Centre] {
            let whole = eval(5, dir.path().join("a")).run(&model, source, &ALL).unwrap();
            let pieces = eval(2, dir.path().join("b")).run(&model, source, &ALL).unwrap();
            let cached = eval(2, dir.path().join("a")).run(&model, source, &ALL).unwrap();
            for m in ALL {
                assert_eq!(whole[&m].len(), 5);
                // Batches split differently across threads round differently (~1e-7 in the maps),
                // which can swap near-tied pixels in the insertion/deletion order.
                for (a, b) in whole[&m].iter().zip(&pieces[&m]) {
                    assert!((a - b).abs() < 0.05, "{source:?} {m}: {a} vs {b}");
                }
                assert_eq!(whole[&m], cached[&m], "{m}: the cache must return what was computed");
            }
        }
    }

    #[test]
    fn scores_equal_the_metric_functions_applied_to_explain() {
        let (set, net, protocol) = (scenes(3), model(), Protocol::default());
        let model = explained(&net);
        let subject = &model.subject;
        let ids = [0, 1, 2];
        let dir = tempfile::tempdir().unwrap();
        let eval = Evaluation {
            set: &set,
            ids: &ids,
            batch_size: 3,
            protocol,
            seed: 0,
            cache: dir.path().into(),
            device: cpu(),
        };
        let got = eval.run(&model, Source::Method(Method::GradCam), &ALL).unwrap();
        let (x, y) = set.batch(&ids, &NORM, &cpu()).unwrap();
        let classes: Vec<u32> = y.to_vec1().unwrap();
        let maps = explain(Method::GradCam.build(&protocol.cam).as_ref(), subject, &x, &classes).unwrap().upsampled;
        let p = class_probabilities(&subject.logits(&x).unwrap(), &classes).unwrap();
        let o = class_probabilities(&subject.logits(&explanation_images(&x, &maps, &NORM).unwrap()).unwrap(), &classes)
            .unwrap();
        let expected_drop = confidence(&p, &o).drop;
        let mut score = |b: &Tensor| subject.logits(b);
        let deletion =
            causal_curves(&mut score, &x, &maps, &classes, CausalMode::Deletion, CausalVariant::Authors, 7).unwrap();
        let flat: Vec<Vec<f32>> = maps.flatten_from(1).unwrap().to_vec2().unwrap();
        for i in 0..3 {
            assert!((got[&Metric::AverageDrop][i] - expected_drop[i]).abs() < 1e-9);
            assert!((got[&Metric::Deletion][i] - 100.0 * auc(&deletion[i])).abs() < 1e-9);
            let bbox = set.scene(ids[i]).bbox.unwrap();
            assert!((got[&Metric::Energy][i] - 100.0 * energy_in_box(&flat[i], 32, &bbox)).abs() < 1e-9);
        }
    }

    #[test]
    fn baselines_are_maps_in_the_unit_interval_and_the_centre_peaks_in_the_middle() {
        let (set, net, protocol) = (scenes(2), model(), Protocol::default());
        let subject = Subject::of(Pooling::Gap(&net), NORM);
        let eval = Evaluation {
            set: &set,
            ids: &[0, 1],
            batch_size: 2,
            protocol,
            seed: 0,
            cache: PathBuf::new(),
            device: cpu(),
        };
        let (x, _) = set.batch(&[0, 1], &NORM, &cpu()).unwrap();
        let centre: Vec<Vec<f32>> = eval
            .batch_maps(&subject, Source::Centre, &x, &[0, 0], &[0, 1])
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2()
            .unwrap();
        let peak = (0..centre[0].len()).max_by(|&a, &b| centre[0][a].total_cmp(&centre[0][b])).unwrap();
        assert!([15, 16].contains(&(peak / 32)) && [15, 16].contains(&(peak % 32)), "peak at {peak}");
        let random = eval.batch_maps(&subject, Source::Random, &x, &[0, 0], &[0, 1]).unwrap();
        let v: Vec<f32> = random.flatten_all().unwrap().to_vec1().unwrap();
        let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(lo == 0.0 && hi > 0.999 && hi <= 1.0, "range [{lo}, {hi}]");
        // Seeded per image: the same image gets the same noise in another batch.
        let alone = eval.batch_maps(&subject, Source::Random, &x.narrow(0, 1, 1).unwrap(), &[0], &[1]).unwrap();
        assert_eq!(
            alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            random.get(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
