use super::*;
use crate::shard::Sharding;
use castream_backbones::{Arch, BackboneConfig, Model, Stem};
use castream_cam::Pooling;
use castream_data::device::cpu;
use castream_data::discovery::DatasetName;
use castream_data::labelled::{LabelledImages, Split, SplitFiles};
use castream_data::scenes::{SceneConfig, SceneSet};
use castream_data::Normalisation;
use castream_metrics::adcc::{adcc, coherency, complexity};
use castream_metrics::blur::InsertionBlur;
use castream_metrics::causal::{aopc, auc, causal_curves, CausalMode, CausalVariant};
use castream_metrics::confidence::{class_probabilities, confidence, explanation_images};
use castream_metrics::localisation::energy_in_box;
use castream_metrics::road::{fractions, road_probabilities, RoadOrder};
use castream_metrics::sensitivity::max_sensitivity;

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
    let config = BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 3) };
    Model::new(config, 3, &cpu()).unwrap()
}

const NORM: Normalisation = Normalisation { mean: [0.4, 0.4, 0.4], std: [0.25, 0.25, 0.25] };
const ALL: [Metric; 16] = Metric::ALL;

fn explained(net: &Model) -> Explained<'_> {
    let key = ModelKey { weights: "m".into(), pooling: PoolingKind::Gap, layer: 4 };
    Explained { subject: Subject::of(Pooling::Gap(net), NORM), key }
}

#[test]
fn a_tampered_cell_cache_is_recomputed_and_other_weights_miss_it() {
    let (set, net, protocol) = (scenes(3), model(), Protocol::default());
    let ids = [0, 1, 2];
    let dir = tempfile::tempdir().unwrap();
    let eval = Evaluation {
        set: &set,
        ids: &ids,
        batch_size: 3,
        protocol,
        seed: 1,
        cache: dir.path().into(),
        device: cpu(),
        sharding: &Sharding::Whole,
    };
    let metrics = [Metric::AverageDrop, Metric::Insertion];
    let source = Source::Method(Method::GradCam);
    let fresh = eval.run(&explained(&net), source, &metrics).unwrap();
    let files = |sub: &str| -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = std::fs::read_dir(dir.path().join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        f.sort();
        f
    };
    let payload = |sub: &str| files(sub).into_iter().find(|p| !p.to_string_lossy().ends_with(".card.json")).unwrap();
    // A score edited in the cached JSON (still valid JSON of the right shape) is not served.
    let scores = payload("scores");
    let text = std::fs::read_to_string(&scores).unwrap();
    let first = serde_json::to_string(&fresh[&Metric::AverageDrop][0]).unwrap();
    let tampered = text.replacen(&first, "12.5", 1);
    assert_ne!(tampered, text, "the edit must change the cached scores");
    std::fs::write(&scores, tampered).unwrap();
    // Truncated maps.
    let maps = payload("maps");
    let bytes = std::fs::read(&maps).unwrap();
    std::fs::write(&maps, &bytes[..bytes.len() - 7]).unwrap();
    let again = eval.run(&explained(&net), source, &metrics).unwrap();
    assert_eq!(again, fresh);
    assert_eq!(std::fs::read(&maps).unwrap(), bytes, "the maps were recomputed and stored again");
    // Another model's weights (e.g. a retrained stream) are other cells.
    let other = Explained {
        subject: Subject::of(Pooling::Gap(&net), NORM),
        key: ModelKey { weights: "another stream".into(), pooling: PoolingKind::Gap, layer: 4 },
    };
    eval.run(&other, source, &metrics).unwrap();
    assert_eq!(files("scores").len(), 4, "two cells, each a payload and a card");
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
        sharding: &Sharding::Whole,
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
        sharding: &Sharding::Whole,
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
    let deletion = causal_curves(
        &mut score,
        &x,
        &maps,
        &classes,
        CausalMode::Deletion,
        CausalVariant::Authors,
        InsertionBlur::Gkern,
        7,
    )
    .unwrap();
    let flat: Vec<Vec<f32>> = maps.flatten_from(1).unwrap().to_vec2().unwrap();
    let mut grad_cam = |input: &Tensor| -> anyhow::Result<Tensor> {
        Ok(explain(Method::GradCam.build(&protocol.cam).as_ref(), subject, input, &classes)?.upsampled)
    };
    let again: Vec<Vec<f32>> =
        grad_cam(&explanation_images(&x, &maps, &NORM).unwrap()).unwrap().flatten_from(1).unwrap().to_vec2().unwrap();
    let seeds = |salt: Salt| -> Vec<u64> { ids.iter().map(|&i| eval.image_seed(i, salt)).collect() };
    let scoring = protocol.scoring;
    let sensitivity = (scoring.sensitivity_radius, scoring.sensitivity_samples);
    let ms = max_sensitivity(&mut grad_cam, &x, &maps, &NORM, sensitivity, &seeds(Salt::Sensitivity)).unwrap();
    let mut road = |order| {
        let percents = fractions(scoring.road_step);
        let (noise, seeds) = (scoring.road_noise, seeds(Salt::Road));
        road_probabilities(&mut score, &x, &maps, &classes, &percents, order, noise, &seeds, 5).unwrap()
    };
    let (morf, lerf) = (road(RoadOrder::MostRelevantFirst), road(RoadOrder::LeastRelevantFirst));
    let mean = |v: &[f64]| 100.0 * v.iter().sum::<f64>() / v.len() as f64;
    for i in 0..3 {
        let within = |m: Metric, expected: f64, tolerance: f64| {
            let v = got[&m][i];
            assert!((v - expected).abs() < tolerance, "{m} of image {i}: {v} vs {expected}")
        };
        // The same batches as the engine: exact up to summation order.
        let exact = |m, expected| within(m, expected, 1e-9);
        exact(Metric::AverageDrop, expected_drop[i]);
        exact(Metric::Deletion, 100.0 * auc(&deletion[i]));
        exact(Metric::Aopc, 100.0 * aopc(&deletion[i]));
        let bbox = set.scene(ids[i]).bbox.unwrap();
        exact(Metric::Energy, 100.0 * energy_in_box(&flat[i], 32, &bbox));
        // Images batched differently from the engine's (ROAD 5 at a time): float rounding of the
        // forward passes.
        let close = |m, expected| within(m, expected, 1e-6);
        close(Metric::RoadMorf, mean(&morf[i]));
        close(Metric::RoadLerf, mean(&lerf[i]));
        close(Metric::Road, (mean(&lerf[i]) - mean(&morf[i])) / 2.0);
        close(Metric::MaxSensitivity, ms[i]);
        let (coh, cx) = (coherency(&flat[i], &again[i]), complexity(&flat[i]));
        close(Metric::Coherency, 100.0 * coh);
        close(Metric::Complexity, 100.0 * cx);
        close(Metric::Adcc, 100.0 * adcc(coh, cx, expected_drop[i] / 100.0));
    }
}

#[test]
fn model_free_maps_are_insensitive_coherent_and_fake_cam_has_no_adcc() {
    let (set, net, protocol) = (scenes(2), model(), Protocol::default());
    let ids = [0, 1];
    let eval = Evaluation {
        set: &set,
        ids: &ids,
        batch_size: 2,
        protocol,
        seed: 0,
        cache: tempfile::tempdir().unwrap().path().into(),
        device: cpu(),
        sharding: &Sharding::Whole,
    };
    let metrics = [Metric::MaxSensitivity, Metric::Coherency, Metric::Complexity, Metric::Adcc];
    let centre = eval.run(&explained(&net), Source::Centre, &metrics).unwrap();
    assert_eq!(centre[&Metric::MaxSensitivity], [0.0, 0.0]);
    assert_eq!(centre[&Metric::Coherency], [100.0, 100.0]);
    let fake = eval.run(&explained(&net), Source::FakeCam, &metrics).unwrap();
    // 1023 ones in 1024 pixels: 1 - Complexity = 1/1024 caps the harmonic mean at 3/1024.
    assert!(fake[&Metric::Complexity].iter().all(|&c| (c - 100.0 * 1023.0 / 1024.0).abs() < 1e-9));
    assert!(fake[&Metric::Adcc].iter().all(|&a| a > 0.0 && a < 100.0 * 3.0 / 1024.0));
}

#[test]
fn cells_of_metrics_without_options_keep_their_keys() {
    let key = ("a", 1, [2.5]);
    let plain = serde_json::to_string(&CellInputs::<_>::Plain(key)).unwrap();
    assert_eq!(plain, serde_json::to_string(&key).unwrap());
    let used = castream_metrics::options::MetricOptions::default().used_by(&[Metric::Road]).unwrap();
    assert_ne!(serde_json::to_string(&CellInputs::Scored(key, used)).unwrap(), plain);
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
        sharding: &Sharding::Whole,
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
    // Fake-CAM: 1 everywhere but the first pixel of each image.
    let fake: Vec<Vec<f32>> = eval
        .batch_maps(&subject, Source::FakeCam, &x, &[0, 0], &[0, 1])
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2()
        .unwrap();
    for map in &fake {
        assert_eq!((map[0], map.len()), (0.0, 32 * 32));
        assert!(map[1..].iter().all(|&v| v == 1.0));
    }
}

#[test]
fn shared_score_cam_cells_score_as_alone_and_cache_every_siblings_maps() {
    let set = scenes(3);
    let ca = castream_stream::CaModel::new(model(), &castream_stream::StreamConfig::default(), 4).unwrap();
    let gap = Explained {
        subject: Subject::of(Pooling::Gap(&ca.backbone), NORM),
        key: ModelKey { weights: "b".into(), pooling: PoolingKind::Gap, layer: 4 },
    };
    let ca = Explained {
        subject: Subject::of(Pooling::Ca(&ca), NORM),
        key: ModelKey { weights: "b+s".into(), pooling: PoolingKind::Ca, layer: 4 },
    };
    let ids = [0, 1, 2];
    let (shared_dir, alone_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let eval = |dir: &std::path::Path| Evaluation {
        set: &set,
        ids: &ids,
        batch_size: 2,
        protocol: Protocol::default(),
        seed: 1,
        cache: dir.into(),
        device: cpu(),
        sharding: &Sharding::Whole,
    };
    let (shared, alone) = (eval(shared_dir.path()), eval(alone_dir.path()));
    let (metrics, source) = ([Metric::AverageDrop, Metric::Insertion], Source::Method(Method::ScoreCam));
    // The GAP cell first: its pass computes the CA model's maps too.
    let gap_shared = shared.run_shared(&gap, &[&gap, &ca], source, &metrics).unwrap();
    let maps = |dir: &std::path::Path| std::fs::read_dir(dir.join("maps")).map_or(0, |d| d.count());
    assert_eq!(maps(shared_dir.path()), maps(alone_dir.path()) + 4, "two maps entries (file and card) per model");
    let ca_shared = shared.run_shared(&ca, &[&gap, &ca], source, &metrics).unwrap();
    assert_eq!(gap_shared, alone.run(&gap, source, &metrics).unwrap());
    assert_eq!(ca_shared, alone.run(&ca, source, &metrics).unwrap());
    assert_eq!(maps(shared_dir.path()), maps(alone_dir.path()));
}
