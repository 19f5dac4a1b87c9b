//! CPU and CUDA agree (`--features cuda`, run on a GPU machine by `scripts/gpu-check.sh`): on the
//! miniature ImageNet, the GAP and CA logits, Grad-CAM, Score-CAM and Opti-CAM maps, and table2's metrics
//! computed on both devices match within stated tolerances; then the GPU's images/s of a ResNet-50
//! forward, a stream training step and Score-CAM are printed.
//!
//! Tolerances: logits within 1e-3 of the largest CPU logit (cuBLAS/cuDNN sum in other orders);
//! maps (min-max normalised to [0, 1]) within 2e-2 (Opti-CAM's after 5 steps: 5e-2); table2's
//! per-method means within 0.5 points.
#![cfg(feature = "cuda")]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use castream_backbones::{Arch, BackboneConfig, Model};
use castream_cam::{explain, Method, MethodOptions, Pooling, Subject};
use castream_data::image_folder::EvalTransform;
use castream_data::image_set::ImageSetSpec;
use castream_data::images::EvalImages;
use castream_data::DeviceChoice;
use castream_stream::{CaModel, StreamConfig};
use castream_zoo::ca::trained_models;
use castream_zoo::stream_checkpoint::read_card;

use crate::common::{castream_offline, repository};

/// Runs the binary offline in `dir` and fails the test with its output if it fails.
fn castream_ok(dir: &Path, args: &[&str]) {
    let (ok, text) = castream_offline(dir, args);
    assert!(ok, "castream {args:?}: {text}");
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let b = b.to_device(&Device::Cpu).unwrap();
    a.sub(&b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn csv_numbers(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| l.split(',').filter_map(|v| v.parse::<f64>().ok()).collect::<Vec<_>>())
        .collect()
}

/// Images per second of `run` on `n` images (median of 5 after a warm-up), synchronising the GPU.
fn rate(device: &Device, n: usize, mut run: impl FnMut() -> candle_core::Result<()>) -> f64 {
    run().unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            run().unwrap();
            device.synchronize().unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    n as f64 / times[2]
}

#[test]
fn cpu_and_cuda_agree_and_the_gpu_throughput_is_reported() {
    let gpu = DeviceChoice::Cuda(0).device().expect("this test needs a CUDA device");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_castream"))
        .args(["paper-fixture", root.to_str().unwrap()])
        .current_dir(repository())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    castream_ok(root, &["train-stream", "experiments/streams/resnet.toml"]);
    std::env::set_var("HF_HUB_CACHE", root.join("hf-cache"));
    std::env::set_var("HF_HUB_OFFLINE", "1");

    // Logits and maps, model by model.
    let stream = root.join("streams/resnet.safetensors");
    let card = read_card(&stream).unwrap();
    let on = |device: &Device| trained_models(root, &card.backbone, &stream, device).unwrap();
    let (cpu_m, gpu_m) = (on(&Device::Cpu), on(&gpu));
    let spec = ImageSetSpec {
        root: root.join("data/val"),
        list: Some(root.join("data/val.csv")),
        transform: EvalTransform::Squash { size: 96 },
        boxes: None,
    };
    let set = spec.open("imagenet", "val", 1000, "fixture").unwrap();
    let ids: Vec<usize> = (0..16).collect();
    let norm = cpu_m.meta.normalisation;
    let (x, y) = set.batch(&ids, &norm, &Device::Cpu).unwrap();
    let labels: Vec<u32> = y.to_vec1().unwrap();
    let xg = x.to_device(&gpu).unwrap();
    println!("| quantity | max |CPU − CUDA| | bound |\n|---|---|---|");
    for (name, a, b) in [
        (
            "GAP logits",
            cpu_m.ca.backbone.net.forward(&x, false).unwrap(),
            gpu_m.ca.backbone.net.forward(&xg, false).unwrap(),
        ),
        ("CA logits", cpu_m.ca.forward(&x).unwrap().0, gpu_m.ca.forward(&xg).unwrap().0),
    ] {
        let bound = 1e-3 * a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        let d = max_abs_diff(&a, &b);
        println!("| {name} | {d:.2e} | {bound:.2e} |");
        assert!(d <= bound, "{name}: {d} > {bound}");
    }
    // Opti-CAM: 5 of its Adam steps, enough to leave the uniform map.
    let options = MethodOptions { opti_cam_iterations: 5, ..MethodOptions::default() };
    for method in [Method::GradCam, Method::ScoreCam, Method::OptiCam] {
        // Adam's steps follow the gradient's sign, which rounding can flip where it is near 0.
        let bound = if method == Method::OptiCam { 5e-2 } else { 2e-2 };
        for (pooling, c, g) in [
            ("GAP", Pooling::Gap(&cpu_m.ca.backbone), Pooling::Gap(&gpu_m.ca.backbone)),
            ("CA", Pooling::Ca(&cpu_m.ca), Pooling::Ca(&gpu_m.ca)),
        ] {
            let m = method.build(&options);
            let a = explain(m.as_ref(), &Subject::of(c, norm), &x, &labels).unwrap().maps;
            let b = explain(m.as_ref(), &Subject::of(g, norm), &xg, &labels).unwrap().maps;
            let d = max_abs_diff(&a, &b);
            println!("| {method} {pooling} maps | {d:.2e} | {bound:.0e} |");
            assert!(d <= bound, "{method} {pooling}: {d}");
        }
    }

    // Metrics: table2 on both devices, through the CLI (each device's cells are cached apart).
    castream_ok(root, &["reproduce", "table2", "--profile", "paper"]);
    castream_ok(root, &["reproduce", "table2", "--profile", "paper", "--device", "cuda:0"]);
    let cpu_values = csv_numbers(&root.join("results/paper/table2/table2.csv"));
    let gpu_values = csv_numbers(&root.join("results/paper/table2@device=cuda:0/table2.csv"));
    assert_eq!(cpu_values.len(), gpu_values.len());
    let worst = cpu_values.iter().zip(&gpu_values).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("| table2 values (points) | {worst:.3} | 0.5 |");
    assert!(worst <= 0.5, "table2 differs by {worst} points");

    // Throughput on the GPU, full-size ResNet-50 at 224 px.
    let model = Model::new(BackboneConfig::new(Arch::Resnet50, 1000), 0, &gpu).unwrap();
    let batch = 64;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &gpu).unwrap();
    let forward = rate(&gpu, batch, || model.net.forward(&x, false).map(|_| ()));
    let ca = CaModel::new(model, &StreamConfig::default(), 0).unwrap();
    let labels = Tensor::zeros(batch, DType::U32, &gpu).unwrap();
    let step = rate(&gpu, batch, || {
        let features: Vec<Tensor> = ca.backbone.net.stages(&x, false)?.into_iter().map(|f| f.detach()).collect();
        let logits = ca.logits_from_features(&features)?.0;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        loss.backward().map(|_| ())
    });
    let few = x.narrow(0, 0, 2).unwrap();
    let score_cam = Method::ScoreCam.build(&options);
    let subject = Subject::of(Pooling::Gap(&ca.backbone), castream_data::Normalisation::IMAGENET);
    let maps = rate(&gpu, 2, || explain(score_cam.as_ref(), &subject, &few, &[0, 0]).map(|_| ()));
    let logits = ca.forward(&x).unwrap().0;
    assert_eq!(logits.argmax(D::Minus1).unwrap().dims(), &[batch]);
    println!(
        "\nGPU throughput (ResNet-50, 224 px, batch {batch}): forward {forward:.0} images/s; stream training step \
         {step:.0} images/s; Score-CAM (2,048 channels, chunk 128) {maps:.2} images/s"
    );
}
