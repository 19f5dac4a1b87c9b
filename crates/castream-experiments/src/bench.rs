//! `castream bench`: forward and train-step throughput of each backbone at the quick and paper
//! input sizes, per-stage forward times, our kernels against candle's own ops, and ONNX Runtime
//! on the same architecture, weights and input (`scripts/onnx_bench.py`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, Model};
use castream_data::Normalisation;
use castream_kernels::Kernels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::quick::load_recipe;

/// One benchmarked configuration.
pub struct Case {
    pub label: String,
    pub config: BackboneConfig,
    pub batch: usize,
    pub size: usize,
}

/// The cases: the quick backbones at 64 px (batch 64) and the paper's ResNet-50 and ConvNeXt-T at
/// 224 px (batch 8).
pub fn cases(root: &Path) -> Result<Vec<Case>> {
    let mut out: Vec<Case> = load_recipe(root)?
        .backbone
        .into_iter()
        .map(|b| Case { label: format!("{} (quick)", b.name), config: b.model, batch: 64, size: 64 })
        .collect();
    for arch in [Arch::Resnet50, Arch::ConvnextTiny] {
        out.push(Case {
            label: format!("{} (paper)", arch.name()),
            config: BackboneConfig::new(arch, 1000),
            batch: 8,
            size: 224,
        });
    }
    Ok(out)
}

fn input(case: &Case) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = case.batch * 3 * case.size * case.size;
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Ok(Tensor::from_vec(v, (case.batch, 3, case.size, case.size), &Device::Cpu)?)
}

/// Median seconds of `runs` calls after one warm-up.
fn median_seconds(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    timed_median(runs, &mut f)
}

/// Median seconds of `runs` (at least one) timed calls.
fn timed_median(runs: usize, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f().map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

pub struct Figures {
    pub forward_s: f64,
    /// `None` when the kernels cannot train this network (candle: no 3x3/2 max-pool backward).
    pub train_s: Option<f64>,
    pub gflop_forward: f64,
    pub stages_s: [f64; 6],
}

fn measure(case: &Case, kernels: Kernels, runs: usize) -> Result<Figures> {
    let config = BackboneConfig { kernels, ..case.config.clone() };
    let model = Model::new(config, 0, &Device::Cpu)?;
    let x = input(case)?;
    let (logits, macs) = castream_kernels::count_macs(|| model.net.forward(&x, false));
    logits?;
    let forward_s = median_seconds(runs, || Ok(model.net.forward(&x, false).map(|_| ())?))?;
    let labels = Tensor::zeros(case.batch, candle_core::DType::U32, &Device::Cpu)?;
    let train_s = median_seconds(runs, || {
        let loss = candle_nn::loss::cross_entropy(&model.net.forward(&x, true)?, &labels)?;
        loss.backward()?;
        Ok(())
    })
    .ok();
    // Per-stage forward times: the stem, each stage, and the head, each on its real input.
    let features = model.net.stages(&x, false)?;
    let mut stages_s = [0.0; 6];
    stages_s[0] = median_seconds(runs, || Ok(model.net.stem(&x, false).map(|_| ())?))?;
    for l in 1..=4 {
        stages_s[l] = median_seconds(runs, || Ok(model.net.stage(l, &features[l - 1], false).map(|_| ())?))?;
    }
    stages_s[5] = median_seconds(runs, || Ok(model.net.head(&features[4]).map(|_| ())?))?;
    Ok(Figures { forward_s, train_s, gflop_forward: 2.0 * macs as f64 / 1e9, stages_s })
}

/// ONNX Runtime's images/s on the same weights and input, or why it could not run.
fn onnx(case: &Case, dir: &Path, runs: usize) -> Result<f64> {
    let model = Model::new(case.config.clone(), 0, &Device::Cpu)?;
    let ckpt = dir.join(format!("{}.safetensors", case.config.arch.name()));
    let meta = CheckpointMeta {
        config: case.config.clone(),
        classes: Vec::new(),
        normalisation: Normalisation::IMAGENET,
        extra: serde_json::Value::Null,
    };
    model.save(&ckpt, &meta)?;
    let x = input(case)?;
    let logits = model.net.forward(&x, false)?;
    let raw = |t: &Tensor| -> Result<Vec<u8>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect())
    };
    std::fs::write(dir.join("input.bin"), raw(&x)?)?;
    std::fs::write(dir.join("logits.bin"), raw(&logits)?)?;
    let out = Command::new("python3")
        .arg("scripts/onnx_bench.py")
        .arg(&ckpt)
        .args(["--batch", &case.batch.to_string(), "--size", &case.size.to_string(), "--runs", &runs.to_string()])
        .args(["--threads", &rayon::current_num_threads().to_string(), "--json", "--check"])
        .arg(dir.join("input.bin"))
        .arg(dir.join("logits.bin"))
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        anyhow::bail!(
            "onnx_bench.py failed ({}); install its requirements with `python3 -m pip install -r scripts/requirements-bench.txt`",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no output")
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json["images_per_s"].as_f64().context("onnx_bench.py printed no images_per_s")
}

/// Runs every case whose label contains `only` (all when `None`) and prints the figures as
/// Markdown tables.
pub fn run(root: &Path, runs: usize, with_onnx: bool, only: Option<&str>) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    println!("threads: {} (RAYON_NUM_THREADS)\n", rayon::current_num_threads());
    println!("| backbone | batch x size | GFLOP/img | fwd img/s | fwd GFLOP/s | train img/s | train/fwd | candle fwd img/s | candle train img/s | speed-up fwd / train | ONNX Runtime img/s | ours / ORT |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut stage_rows = Vec::new();
    for case in cases(root)?.into_iter().filter(|c| only.is_none_or(|o| c.label.contains(o))) {
        let fast = measure(&case, Kernels::Fast, runs)?;
        let stock = measure(&case, Kernels::Candle, 1)?;
        let b = case.batch as f64;
        let ort = if with_onnx { onnx(&case, tmp.path(), runs) } else { Err(anyhow::anyhow!("skipped (--no-onnx)")) };
        let (ort_cell, ratio_cell) = match &ort {
            Ok(v) => (format!("{v:.1}"), format!("{:.2}", (b / fast.forward_s) / v)),
            Err(e) => (format!("n/a: {e}"), "–".into()),
        };
        let train_s = fast.train_s.context("our kernels failed to train the network")?;
        let (stock_train, train_speedup) = match stock.train_s {
            Some(t) => (format!("{:.1}", b / t), format!("{:.1}", t / train_s)),
            None => ("n/a (no max-pool 3x3/2 backward)".to_string(), "–".to_string()),
        };
        println!(
            "| {} | {} x {} | {:.3} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {} | {:.1} / {} | {} | {} |",
            case.label,
            case.batch,
            case.size,
            fast.gflop_forward / b,
            b / fast.forward_s,
            fast.gflop_forward / fast.forward_s,
            b / train_s,
            train_s / fast.forward_s,
            b / stock.forward_s,
            stock_train,
            stock.forward_s / fast.forward_s,
            train_speedup,
            ort_cell,
            ratio_cell
        );
        stage_rows.push((case.label.clone(), fast.stages_s, stock.stages_s));
    }
    println!("\nPer-stage forward time, ms (ours / candle's ops):\n");
    println!("| backbone | stem | stage 1 | stage 2 | stage 3 | stage 4 | head |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, ours, stock) in stage_rows {
        let cells: Vec<String> =
            ours.iter().zip(stock).map(|(a, b)| format!("{:.1} / {:.1}", a * 1e3, b * 1e3)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// One configuration of the CAM benchmark: a backbone with random weights (speed does not depend
/// on them) and a random CA-Stream on it.
struct CamCase {
    label: String,
    config: BackboneConfig,
    size: usize,
    batch: usize,
    /// Images per call of the perturbation methods (Score-CAM, Ablation-CAM).
    perturbation_batch: usize,
    /// Score-CAM's channel subsampling (`MethodOptions::channels`).
    score_channels: Option<usize>,
}

fn cam_cases(root: &Path) -> Result<Vec<CamCase>> {
    let quick = load_recipe(root)?
        .backbone
        .into_iter()
        .find(|b| b.name == "resnet18")
        .context("no resnet18 in the quick recipe")?;
    Ok(vec![
        CamCase {
            label: "resnet18 (quick)".into(),
            config: quick.model,
            size: 64,
            batch: 32,
            perturbation_batch: 32,
            score_channels: None,
        },
        CamCase {
            label: "resnet50 (paper)".into(),
            config: BackboneConfig::new(Arch::Resnet50, 1000),
            size: 224,
            batch: 4,
            perturbation_batch: 1,
            score_channels: Some(256),
        },
    ])
}

/// Seconds per call: the median of `runs` calls after a warm-up call, or of one call when the
/// warm-up takes 2 s or more (the perturbation methods). Returns the seconds and the calls timed.
fn adaptive_seconds(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, usize)> {
    let start = Instant::now();
    f()?;
    let runs = if start.elapsed().as_secs_f64() >= 2.0 { 1 } else { runs.max(1) };
    Ok((timed_median(runs, &mut f)?, runs))
}

/// `castream bench --cam`: maps/s of every CAM method applicable to GAP and to CA, on the quick
/// ResNet-18 at 64 px (batch 32) and a paper-size ResNet-50 at 224 px (batch 4; Score-CAM and
/// Ablation-CAM on one image, Score-CAM scoring 256 of the 2048 channels), printed as Markdown.
pub fn run_cam(root: &Path, runs: usize, only: Option<&str>) -> Result<()> {
    use castream_cam::{explain, Method, MethodOptions, Pooling, Subject};
    use castream_stream::{CaModel, StreamConfig};

    println!(
        "threads: {} (RAYON_NUM_THREADS); random weights; maps post-processed (ReLU, min-max, upsampling)\n",
        rayon::current_num_threads()
    );
    for case in cam_cases(root)?.into_iter().filter(|c| only.is_none_or(|o| c.label.contains(o))) {
        let ca = CaModel::new(Model::new(case.config.clone(), 0, &Device::Cpu)?, &StreamConfig::default(), 0)?;
        let norm = Normalisation::IMAGENET;
        let subjects = [Subject::new(Pooling::Gap(&ca.backbone), norm), Subject::new(Pooling::Ca(&ca), norm)];
        let x = input(&Case { label: String::new(), config: case.config.clone(), batch: case.batch, size: case.size })?;
        let k = ca.backbone.net.stage_widths()[4];
        for subject in &subjects {
            for _ in 0..3 {
                subject.logits(&x)?; // warm the allocator before the first timed row
            }
        }
        println!("{}: {} px, batch {}, F_4 has K = {k} channels\n", case.label, case.size, case.batch);
        println!("| method | images per call | GAP maps/s | CA maps/s | GAP ms/map | CA ms/map | calls timed (after a warm-up) |");
        println!("|---|---|---:|---:|---:|---:|---|");
        let mut rows: Vec<(String, Option<Method>, usize, MethodOptions)> =
            vec![("forward only (reference, img/s)".into(), None, case.batch, MethodOptions::default())];
        for m in Method::ALL {
            let mut options = MethodOptions::default();
            let perturbation = matches!(m, Method::ScoreCam | Method::AblationCam);
            let mut label = m.to_string();
            if m == Method::ScoreCam {
                options.channels = case.score_channels;
                label = match case.score_channels {
                    Some(n) => format!("{label} ({n} of {k} channels scored: {n} masked images per map)"),
                    None => format!("{label} (all {k} channels: {k} masked images per map)"),
                };
            }
            rows.push((label, Some(m), if perturbation { case.perturbation_batch } else { case.batch }, options));
        }
        for (label, method, batch, options) in rows {
            let xb = x.narrow(0, 0, batch)?;
            let classes: Vec<u32> = (0..batch as u32).map(|i| i % case.config.num_classes as u32).collect();
            let mut cells = Vec::new();
            let mut timed = Vec::new();
            for subject in &subjects {
                let figure = match method {
                    None => Some(adaptive_seconds(runs, || subject.logits(&xb).map(|_| ()))?),
                    Some(m) if m.applies_to(subject.is_ca()) => {
                        let built = m.build(&options);
                        Some(adaptive_seconds(runs, || explain(built.as_ref(), subject, &xb, &classes).map(|_| ()))?)
                    }
                    Some(_) => None,
                };
                cells.push(figure.map(|(s, _)| s));
                timed.push(figure.map_or("–".to_string(), |(_, n)| n.to_string()));
            }
            let rate = |s: &Option<f64>| s.map_or("–".to_string(), |s| significant(batch as f64 / s));
            let ms = |s: &Option<f64>| s.map_or("–".to_string(), |s| format!("{:.1}", 1e3 * s / batch as f64));
            println!(
                "| {label} | {batch} | {} | {} | {} | {} | {} |",
                rate(&cells[0]),
                rate(&cells[1]),
                ms(&cells[0]),
                ms(&cells[1]),
                timed.join(" / ")
            );
        }
        println!();
    }
    Ok(())
}

/// `v` with three significant digits (at least one decimal), so that 0.0171 maps/s stays readable.
fn significant(v: f64) -> String {
    let decimals = if v > 0.0 { (2 - v.log10().floor() as i32).max(1) } else { 1 };
    format!("{v:.*}", decimals as usize)
}
