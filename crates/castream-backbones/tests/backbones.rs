//! Shapes, stage splitting, training-mode state and determinism of the backbones, on tiny inputs.

use candle_core::{DType, Device, Tensor};
use castream_backbones::config::{ConvNorm, WeightInit};
use castream_backbones::{Arch, BackboneConfig, Model, Stem};

const ALL: [Arch; 6] =
    [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50, Arch::ConvnextTiny, Arch::ConvnextSmall, Arch::ConvnextBase];

/// A narrow variant: base width 8, one block per ConvNeXt stage.
fn tiny(arch: Arch, stem: Stem) -> BackboneConfig {
    let mut c = BackboneConfig::new(arch, 5);
    c.stem = stem;
    c.base_width = Some(8);
    if !arch.is_resnet() {
        c.depths = Some([1, 1, 1, 1]);
    }
    c
}

/// The quick profile's ConvNeXt variant: BatchNorm, LeCun init, layer scale 1.
fn tiny_convnext_bn() -> BackboneConfig {
    BackboneConfig {
        norm: Some(ConvNorm::Batch),
        init: Some(WeightInit::FanIn),
        layer_scale: Some(1.0),
        ..tiny(Arch::ConvnextTiny, Stem::Small)
    }
}

/// Tiny ResNet-18, ResNet-50, ConvNeXt and BatchNorm ConvNeXt.
fn tiny_variants() -> [BackboneConfig; 4] {
    [
        tiny(Arch::Resnet18, Stem::Small),
        tiny(Arch::Resnet50, Stem::Small),
        tiny(Arch::ConvnextTiny, Stem::Small),
        tiny_convnext_bn(),
    ]
}

fn input(side: usize) -> Tensor {
    let n = 3 * side * side;
    Tensor::arange(0u32, n as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .affine(1.0 / n as f64, -0.5)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((1, 3, side, side))
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn expected_widths(arch: Arch) -> [usize; 5] {
    if arch == Arch::Resnet50 {
        [8, 32, 64, 128, 256]
    } else {
        [8, 8, 16, 32, 64]
    }
}

#[test]
fn small_stem_on_64px_gives_f0_32x32_and_f4_4x4_for_every_arch() {
    for arch in ALL {
        let model = Model::new(tiny(arch, Stem::Small), 0, &Device::Cpu).unwrap();
        let net = &model.net;
        assert_eq!(net.stage_widths(), expected_widths(arch), "{}", arch.name());
        let stages = net.stages(&input(64), false).unwrap();
        for (l, f) in stages.iter().enumerate() {
            let side = 32 >> l.saturating_sub(1);
            assert_eq!(f.dims(), [1, expected_widths(arch)[l], side, side], "{} F_{l}", arch.name());
        }
        assert_eq!(net.forward(&input(64), false).unwrap().dims(), [1, 5]);
    }
}

#[test]
fn imagenet_stem_downsamples_by_4_then_by_2_per_stage() {
    for arch in [Arch::Resnet18, Arch::Resnet50, Arch::ConvnextTiny] {
        let model = Model::new(tiny(arch, Stem::Imagenet), 0, &Device::Cpu).unwrap();
        let sides: Vec<usize> =
            model.net.stages(&input(32), false).unwrap().iter().map(|f| f.dim(3).unwrap()).collect();
        assert_eq!(sides, [8, 8, 4, 2, 1], "{}", arch.name());
    }
}

#[test]
fn published_configs_have_the_published_stage_widths() {
    let widths = |arch| Model::new(BackboneConfig::new(arch, 3), 0, &Device::Cpu).unwrap().net.stage_widths();
    assert_eq!(widths(Arch::Resnet18), [64, 64, 128, 256, 512]);
    assert_eq!(widths(Arch::Resnet50), [64, 256, 512, 1024, 2048]);
}

#[test]
fn forward_from_any_stage_equals_forward() {
    for arch in [Arch::Resnet18, Arch::Resnet50, Arch::ConvnextTiny] {
        let model = Model::new(tiny(arch, Stem::Small), 1, &Device::Cpu).unwrap();
        let x = input(64);
        let logits = values(&model.net.forward(&x, false).unwrap());
        for l in 0..=4 {
            let f = model.net.stages_to(l, &x, false).unwrap();
            let split = model.net.head(&model.net.forward_from(l, &f, false).unwrap()).unwrap();
            assert_eq!(values(&split), logits, "{} split at {l}", arch.name());
        }
    }
}

#[test]
fn training_mode_updates_batchnorm_statistics_and_evaluation_does_not() {
    for (config, stat) in [
        (tiny(Arch::Resnet18, Stem::Small), "bn1.running_mean"),
        (tiny_convnext_bn(), "stem.1.running_mean"),
        (tiny_convnext_bn(), "stages.3.blocks.0.norm.running_mean"),
    ] {
        let model = Model::new(config, 0, &Device::Cpu).unwrap();
        let running_mean = || {
            let vars = model.named_vars();
            values(vars.iter().find(|(n, _)| n == stat).unwrap().1.as_tensor())
        };
        let before = running_mean();
        model.net.forward(&input(64), false).unwrap();
        assert_eq!(running_mean(), before, "{stat}");
        let eval = values(&model.net.forward(&input(64), false).unwrap());
        model.net.forward(&input(64), true).unwrap();
        assert_ne!(running_mean(), before, "{stat}");
        assert_ne!(values(&model.net.forward(&input(64), false).unwrap()), eval, "eval must see the new statistics");
    }
}

#[test]
fn batchnorm_convnext_replaces_every_layernorm_but_the_head() {
    let model = Model::new(tiny_convnext_bn(), 0, &Device::Cpu).unwrap();
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    let stats: Vec<&str> = names.iter().filter_map(|n| n.strip_suffix(".running_var")).collect();
    let mut expected = vec!["stem.1".to_string()];
    for i in 0..4 {
        if i > 0 {
            expected.push(format!("stages.{i}.downsample.0"));
        }
        expected.push(format!("stages.{i}.blocks.0.norm"));
    }
    let mut stats: Vec<String> = stats.into_iter().map(String::from).collect();
    stats.sort();
    expected.sort();
    assert_eq!(stats, expected);
    assert!(names.contains(&"head.norm.weight".to_string()) && !names.contains(&"head.norm.running_var".to_string()));
}

#[test]
fn same_seed_gives_identical_weights_and_a_different_seed_different_ones() {
    let weights = |seed| -> Vec<Vec<f32>> {
        Model::new(tiny(Arch::ConvnextTiny, Stem::Small), seed, &Device::Cpu)
            .unwrap()
            .trainable_vars()
            .iter()
            .map(|(_, v)| values(v.as_tensor()))
            .collect()
    };
    assert_eq!(weights(7), weights(7));
    let (a, b) = (weights(7), weights(8));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(differing > 0);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x != y || x.iter().all(|&v| v == x[0])),
        "every random parameter changes with the seed"
    );
}

#[test]
fn adding_a_layer_leaves_the_other_initial_values_unchanged() {
    let mut deeper = tiny(Arch::ConvnextTiny, Stem::Small);
    deeper.depths = Some([2, 1, 1, 1]);
    let a = Model::new(tiny(Arch::ConvnextTiny, Stem::Small), 3, &Device::Cpu).unwrap();
    let b = Model::new(deeper, 3, &Device::Cpu).unwrap();
    let b_vars = b.named_vars();
    for (name, var) in a.named_vars() {
        let other = &b_vars.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(values(var.as_tensor()), values(other.as_tensor()), "{name}");
    }
}

#[test]
fn initialisation_follows_torchvision_and_timm() {
    let resnet = Model::new(BackboneConfig::new(Arch::Resnet18, 10), 0, &Device::Cpu).unwrap();
    let convnext = Model::new(tiny(Arch::ConvnextTiny, Stem::Small), 0, &Device::Cpu).unwrap();
    let get =
        |m: &Model, name: &str| values(m.named_vars().into_iter().find(|(n, _)| n == name).unwrap().1.as_tensor());
    let std = |v: &[f32]| (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
    let conv = get(&resnet, "layer1.0.conv1.weight");
    assert!((std(&conv) - (2.0f64 / (64.0 * 9.0)).sqrt()).abs() < 0.005, "kaiming fan_out: {}", std(&conv));
    assert!(
        get(&resnet, "bn1.weight").iter().all(|&v| v == 1.0)
            && get(&resnet, "bn1.running_var").iter().all(|&v| v == 1.0)
    );
    assert!(get(&resnet, "fc.bias").iter().all(|v| v.abs() <= 1.0 / 512f32.sqrt()));
    assert!(get(&convnext, "stages.0.blocks.0.gamma").iter().all(|&v| v == 1e-6));
    assert!(get(&convnext, "stages.1.downsample.1.bias").iter().all(|&v| v == 0.0));
    assert!((std(&get(&convnext, "stages.3.blocks.0.mlp.fc1.weight")) - 0.02).abs() < 0.002);
    // LeCun: std 1/sqrt(fan_in) — 64 inputs for stage 4's fc1, 49 for a depthwise 7x7 kernel.
    let lecun = Model::new(tiny_convnext_bn(), 0, &Device::Cpu).unwrap();
    assert!((std(&get(&lecun, "stages.3.blocks.0.mlp.fc1.weight")) - 0.125).abs() < 0.005);
    assert!((std(&get(&lecun, "stages.3.blocks.0.conv_dw.weight")) - 1.0 / 7.0).abs() < 0.01);
    assert!(get(&lecun, "stages.0.blocks.0.gamma").iter().all(|&v| v == 1.0));
}

#[test]
fn gradients_reach_every_trainable_parameter() {
    for config in tiny_variants() {
        let arch = config.arch;
        let model = Model::new(config, 0, &Device::Cpu).unwrap();
        let x = Tensor::cat(&[input(64), input(64).affine(-1.0, 0.2).unwrap()], 0).unwrap();
        for train in [true, false] {
            let grads = model.net.forward(&x, train).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in model.trainable_vars() {
                assert!(
                    grads.get(var.as_tensor()).is_some(),
                    "{} (train {train}): no gradient for {name}",
                    arch.name()
                );
            }
        }
    }
}

/// Our kernels and candle's give the same network: logits in both modes, and the BatchNorm
/// running statistics a training-mode forward updates (ResNets train their stages as one op, whose
/// statistics must reach the right layers).
#[test]
fn fast_and_candle_kernels_compute_the_same_network() {
    let x = Tensor::cat(&[input(64), input(64).affine(-1.0, 0.2).unwrap()], 0).unwrap();
    for config in tiny_variants() {
        let fast = Model::new(config.clone(), 4, &Device::Cpu).unwrap();
        let candle = Model::new(
            BackboneConfig { kernels: castream_kernels::Kernels::Candle, ..config.clone() },
            4,
            &Device::Cpu,
        )
        .unwrap();
        let what = config.describe();
        for train in [false, true] {
            let (a, b) =
                (values(&fast.net.forward(&x, train).unwrap()), values(&candle.net.forward(&x, train).unwrap()));
            // Training mode divides by batch standard deviations, amplifying rounding differences
            // (our BatchNorm accumulates its statistics in f64, candle's in f32).
            assert_near(&a, &b, if train { 1e-3 } else { 1e-4 }, &format!("{what}: logits (train {train})"));
        }
        for ((name, a), (_, b)) in fast.named_vars().iter().zip(candle.named_vars()) {
            assert_near(&values(a.as_tensor()), &values(b.as_tensor()), 1e-4, &format!("{what}: {name}"));
        }
    }
}

/// A training step through the whole network (ResNets: all stages' blocks as one op) and stage
/// by stage (one op per stage) give the same gradients. (candle's own max-pool has no backward
/// for the ResNet stem's 3x3/2 window, so the fast kernels are their own reference here; each
/// op's gradients are checked against candle in the kernels' tests.)
#[test]
fn whole_network_and_stage_by_stage_training_agree() {
    let x = Tensor::cat(&[input(64), input(64).affine(-1.0, 0.2).unwrap()], 0).unwrap();
    for config in tiny_variants() {
        let model = Model::new(config.clone(), 4, &Device::Cpu).unwrap();
        let net = &model.net;
        let whole = net.forward(&x, true).unwrap();
        let staged = (1..=4).try_fold(net.stem(&x, true).unwrap(), |f, l| net.stage(l, &f, true)).unwrap();
        let staged = net.head(&staged).unwrap();
        let what = config.describe();
        assert_near(&values(&whole), &values(&staged), 1e-5, &format!("{what}: logits"));
        let grads = |logits: &Tensor| logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (grads(&whole), grads(&staged));
        for (name, var) in model.trainable_vars() {
            let (a, b) = (ga.get(var.as_tensor()).unwrap(), gb.get(var.as_tensor()).unwrap());
            assert_near(&values(a), &values(b), 1e-5, &format!("{what}: gradient of {name}"));
        }
    }
}

/// `a` within `tol` of `b`, relative to `b`'s largest magnitude (at least 1).
fn assert_near(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(a.len() == b.len() && err <= tol * scale, "{what}: error {err} (scale {scale})");
}

/// Multiply-accumulates of the published networks at 224 px, as fvcore and the papers count them
/// (convolutions and linear layers): ResNet-18 1.814 G, ResNet-50 4.09 G, ConvNeXt-T 4.47 G.
#[test]
fn counted_multiply_adds_match_the_published_figures() {
    use castream_backbones::{Arch, BackboneConfig, Model};
    let x = candle_core::Tensor::zeros((1, 3, 224, 224), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    for (arch, published) in [(Arch::Resnet18, 1.814e9), (Arch::Resnet50, 4.09e9), (Arch::ConvnextTiny, 4.47e9)] {
        let model = Model::new(BackboneConfig::new(arch, 1000), 0, &candle_core::Device::Cpu).unwrap();
        let (_, macs) = castream_kernels::count_macs(|| model.net.forward(&x, false).unwrap());
        let rel = (macs as f64 - published).abs() / published;
        assert!(rel < 0.01, "{}: counted {macs} vs published {published}", arch.name());
    }
}

/// A whole ConvNeXt's gradients against central finite differences, for one entry of every
/// parameter (stem, norms, depthwise and downsampling convolutions, MLP, layer scales, head); the
/// BatchNorm variant in training mode, so that the gradients flow through the batch statistics
/// (and the biases just before its BatchNorms must have none).
/// ConvNeXt is smooth (GELU, LayerNorm); ResNet's ReLU kinks make finite differences unreliable at
/// network scale, and its layers are checked one by one in the kernels' tests.
#[test]
fn network_gradients_agree_with_finite_differences() {
    use candle_core::{DType, Device, Tensor};
    use castream_backbones::{Arch, BackboneConfig, Model, Stem};
    for norm in [ConvNorm::Layer, ConvNorm::Batch] {
        let (arch, depths) = (Arch::ConvnextTiny, Some([1, 1, 1, 1]));
        let config = BackboneConfig {
            stem: Stem::Small,
            base_width: Some(8),
            depths,
            norm: Some(norm),
            ..BackboneConfig::new(arch, 3)
        };
        let model = Model::new(config, 3, &Device::Cpu).unwrap();
        // Make layer scales large enough that the residual branches matter.
        for (name, var) in model.named_vars() {
            if name.ends_with("gamma") {
                var.set(&(var.as_tensor().ones_like().unwrap() * 0.5).unwrap()).unwrap();
            }
        }
        // Four fixed pseudo-random images of 32 px (F_4 is 2x2, so a training-mode BatchNorm sees
        // 16 values per channel even there) and a fixed projection of the logits.
        let noise = |n: usize, salt: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as f32 + salt) * 12.9898).sin() * 43758.547)
                .map(|v| 2.0 * (v - v.floor()) - 1.0)
                .collect()
        };
        let x = Tensor::from_vec(noise(4 * 3 * 32 * 32, 0.5), (4, 3, 32, 32), &Device::Cpu).unwrap();
        let r = Tensor::from_vec(noise(4 * 3, 7.25), (4, 3), &Device::Cpu).unwrap();
        let loss = |m: &Model| {
            m.net
                .forward(&x, norm == ConvNorm::Batch)
                .unwrap()
                .mul(&r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let grads = loss(&model).backward().unwrap();
        let grad_of = |var: &candle_core::Var| -> Vec<f32> {
            grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let vars = model.trainable_vars();
        let gmax = vars.iter().flat_map(|(_, v)| grad_of(v)).fold(0f32, |m, g| m.max(g.abs()));
        let mut checked = 0;
        for (name, var) in vars {
            let g = grad_of(&var);
            // A bias right before a training-mode BatchNorm is cancelled by the batch mean: its
            // gradient is exactly zero (up to rounding), an identity rather than a difference.
            if norm == ConvNorm::Batch && (name == "stem.0.bias" || name.ends_with("conv_dw.bias")) {
                assert!(g.iter().all(|v| v.abs() <= 1e-4 * gmax), "{name}: gradient {g:?} should vanish");
                continue;
            }
            let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let k = base.len() / 2;
            let probe = |delta: f32| {
                let mut v = base.clone();
                v[k] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let l = loss(&model).to_scalar::<f64>().unwrap();
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
                l
            };
            let eps = 2.5e-3f32;
            let fd = (probe(eps) - probe(-eps)) / (2.0 * eps as f64);
            let scale = fd.abs().max(g[k].abs() as f64).max(1e-2);
            assert!(
                (fd - g[k] as f64).abs() / scale < 0.05,
                "{name}[{k}]: finite difference {fd} vs autograd {}",
                g[k]
            );
            checked += 1;
        }
        assert!(checked > 10);
    }
}
