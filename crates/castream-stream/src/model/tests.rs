use super::*;
use castream_backbones::optim::OptimizerConfig;
use castream_backbones::schedule::Schedule;
use castream_backbones::train::{train, TensorSet, TrainConfig};
use castream_backbones::{Arch, BackboneConfig, Stem};
use castream_data::device::cpu;
use rand::{Rng, SeedableRng};

fn set(n: usize, seed: u64) -> TensorSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * 3 * 16 * 16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    TensorSet {
        images: Tensor::from_vec(v, (n, 3, 16, 16), &cpu()).unwrap(),
        labels: Tensor::from_vec(labels, n, &cpu()).unwrap(),
    }
}

fn ca_model() -> CaModel {
    let config = BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 3) };
    CaModel::new(Model::new(config, 1, &cpu()).unwrap(), &StreamConfig::default(), 2).unwrap()
}

fn snapshot(vars: Vec<(String, Var)>) -> Vec<(String, Vec<f32>)> {
    vars.into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect()
}

#[test]
fn stream_training_leaves_backbone_and_classifier_bit_identical() {
    let model = ca_model();
    let (train_set, val_set) = (set(9, 1), set(4, 2));
    let taps = &model.stream.config().taps;
    let train_cache = FeatureCache::build(&model.backbone, &train_set, taps, 4, |_| {}).unwrap();
    let val_cache = FeatureCache::build(&model.backbone, &val_set, taps, 4, |_| {}).unwrap();
    let (backbone_before, stream_before) = (snapshot(model.backbone.named_vars()), snapshot(model.stream.named_vars()));
    let task = StreamTask { model: &model, train: &train_cache, val: &val_cache, eval_batch_size: 4 };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        optimizer: OptimizerConfig::adamw(1e-2, 0.0),
        schedule: Schedule::Constant,
        seed: 0,
    };
    let dir = tempfile::tempdir().unwrap();
    train(&task, &config, dir.path(), false, &mut ()).unwrap();
    assert_eq!(snapshot(model.backbone.named_vars()), backbone_before, "a backbone or classifier weight moved");
    assert_ne!(snapshot(model.stream.named_vars()), stream_before, "the stream did not train");
}

#[test]
fn a_convnext_backbone_gets_a_stream_through_its_layernorm_head() {
    let config = BackboneConfig {
        stem: Stem::Small,
        base_width: Some(8),
        depths: Some([1, 1, 1, 1]),
        ..BackboneConfig::new(Arch::ConvnextTiny, 3)
    };
    let model = CaModel::new(Model::new(config, 1, &cpu()).unwrap(), &StreamConfig::default(), 2).unwrap();
    // ConvNeXt taps: stem 8, stages 8, 16, 32, 64; the last block maps to the head's 64 inputs.
    assert_eq!(model.backbone.net.stage_widths(), [8, 8, 16, 32, 64]);
    assert_eq!(model.stream.parameter_count(), 8 + (64 + 8) + (128 + 16) + (512 + 32) + (2048 + 64) + (4096 + 64));
    let data = set(2, 4);
    let (logits, out) = model.forward(&data.images).unwrap();
    assert_eq!(logits.dims(), &[2, 3]);
    assert_eq!(out.attention.len(), 5);
    // The classifier is the backbone's own head (LayerNorm + fc) applied to the token.
    let direct = model.backbone.net.classify(&out.token).unwrap();
    assert_eq!(
        snapshot(vec![("l".into(), Var::from_tensor(&logits).unwrap())]),
        snapshot(vec![("l".into(), Var::from_tensor(&direct).unwrap())])
    );
}

fn values(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_memory_bounded_cache_gives_the_same_features_as_memory_and_the_live_backbone() {
    let taps = [0, 1, 3, 4];
    let stream = StreamConfig { taps: taps.to_vec(), ..StreamConfig::default() };
    let model = CaModel::new(ca_model().backbone, &stream, 2).unwrap();
    let data = set(7, 5);
    let memory = FeatureCache::build(&model.backbone, &data, &taps, 3, |_| {}).unwrap();
    assert_eq!((memory.disk_bytes(), memory.spilled_stages()), (0, vec![]));
    let dir = tempfile::tempdir().unwrap();
    let per_image: Vec<usize> = memory.stages.iter().map(|s| s.bytes(7) / 7).collect();
    // Budgets: nothing in memory; the two smallest tapped stages; everything.
    for (budget, spilled) in
        [(0, vec![0, 1, 3, 4]), (7 * (per_image[3] + per_image[4]), vec![0, 1]), (usize::MAX, vec![])]
    {
        let bounded =
            FeatureCache::build_bounded(&model.backbone, &data, &taps, 3, budget, dir.path(), |_| {}).unwrap();
        assert_eq!(bounded.spilled_stages(), spilled, "budget {budget}");
        assert!(bounded.memory_bytes() <= budget);
        assert_eq!(bounded.bytes(), memory.bytes());
        assert_eq!(bounded.memory_bytes() + bounded.disk_bytes(), memory.bytes());
        // Shuffled, with a run of consecutive indices and a repeat.
        let ids = [4, 5, 6, 0, 2, 2, 1];
        let ((a, la), (b, lb)) = (memory.batch(&ids).unwrap(), bounded.batch(&ids).unwrap());
        assert_eq!(la.to_vec1::<u32>().unwrap(), lb.to_vec1::<u32>().unwrap());
        for (l, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(a.dims(), b.dims(), "stage {l}");
            assert_eq!(values(a), values(b), "stage {l}, budget {budget}");
        }
        // Independently of the cache: the live backbone on those images.
        let (x, _) = data.batch(&ids, &cpu()).unwrap();
        let live = model.backbone.net.stages(&x, false).unwrap();
        for &l in &taps {
            let (got, want) = (
                b[l].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                live[l].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "stage {l}: {g} vs {w}");
            }
        }
        let cached = model.logits_from_features(&b).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let live = model.forward(&x).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(cached.len(), 7 * 3);
        for (c, l) in cached.iter().zip(&live) {
            assert!((c - l).abs() < 1e-5, "logit {c} vs {l}");
        }
    }
    assert!(FeatureCache::build_bounded(&model.backbone, &data, &taps, 3, 0, dir.path(), |_| {})
        .unwrap()
        .batch(&[7])
        .is_err());
}

#[test]
fn a_stream_trained_on_spilled_features_is_bit_identical() {
    let (train_set, val_set) = (set(9, 1), set(4, 2));
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        optimizer: OptimizerConfig::adamw(1e-2, 0.0),
        schedule: Schedule::Constant,
        seed: 0,
    };
    let mut trained = Vec::new();
    for budget in [None, Some(0)] {
        // The same seeded backbone and stream each time.
        let model = ca_model();
        let taps = model.stream.config().taps.clone();
        let build = |s: &TensorSet| match budget {
            None => FeatureCache::build(&model.backbone, s, &taps, 4, |_| {}).unwrap(),
            Some(b) => FeatureCache::build_bounded(&model.backbone, s, &taps, 4, b, dir.path(), |_| {}).unwrap(),
        };
        let (train_cache, val_cache) = (build(&train_set), build(&val_set));
        assert_eq!(train_cache.disk_bytes() > 0, budget.is_some());
        let task = StreamTask { model: &model, train: &train_cache, val: &val_cache, eval_batch_size: 3 };
        let run = tempfile::tempdir().unwrap();
        let history = train(&task, &config, run.path(), false, &mut ()).unwrap();
        trained.push((snapshot(model.stream.named_vars()), history.last().unwrap().val_accuracy.to_bits()));
    }
    assert_eq!(trained[0], trained[1], "spilling the features changed the trained stream");
}

#[test]
fn cached_features_give_the_same_logits_as_the_live_model() {
    let model = ca_model();
    let data = set(5, 3);
    let cache = FeatureCache::build(&model.backbone, &data, &model.stream.config().taps, 2, |_| {}).unwrap();
    assert_eq!(cache.len(), 5);
    let (features, _) = cache.batch(&[0, 1, 2, 3, 4]).unwrap();
    let cached: Vec<f32> = model.logits_from_features(&features).unwrap().0.flatten_all().unwrap().to_vec1().unwrap();
    let live: Vec<f32> = model.forward(&data.images).unwrap().0.flatten_all().unwrap().to_vec1().unwrap();
    for (a, b) in cached.iter().zip(&live) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}
