//! `castream bench --cam`: saliency throughput. Maps/s of every CAM method for GAP and CA, and
//! insertion/deletion curves/s; for the work that is forward passes of (masked) images — Score-CAM,
//! the curves — also the forward passes per second it reaches as a share of the plain forward's
//! images/s at the same batch size, timed just before and just after it (this host's speed drifts),
//! so the cost of masking, upsampling, blurring and softmax is visible; and, for the GAP network,
//! ONNX Runtime's bound on the same work: its forward's images/s at the batch of those passes over
//! the forwards one result costs, as if its forwards were the whole cost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use castream_backbones::{Arch, BackboneConfig, Model};
use castream_cam::{explain, Method, MethodOptions, Pooling, PoolingKind, Subject};
use castream_data::Normalisation;
use castream_metrics::blur::InsertionBlur;
use castream_metrics::causal::{causal_curves, steps, CausalMode, CausalVariant};
use castream_stream::{CaModel, StreamConfig};
use castream_zoo::quick::load_recipe;

use super::{input, significant, timed_median, Case, Ort, Subject as Networks, DEVICE};
use castream_kernels::Kernels;

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
    /// Step images per forward pass of the insertion/deletion curves (the specs' batch size).
    curve_batch: usize,
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
            curve_batch: 64,
        },
        CamCase {
            label: "resnet50 (paper)".into(),
            config: BackboneConfig::new(Arch::Resnet50, 1000),
            size: 224,
            batch: 4,
            perturbation_batch: 1,
            score_channels: Some(256),
            curve_batch: 16,
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

/// What a row of the table times.
#[derive(Clone, Copy)]
enum Work {
    /// The plain forward pass: the reference.
    Forward,
    Method(Method),
    Curves(CausalMode),
}

/// A timed row: its label, images per call, and, where forward passes of whole images are the
/// whole of the work, how many one result (map or curve) costs and how many images each pass holds.
struct Row {
    label: String,
    work: Work,
    batch: usize,
    options: MethodOptions,
    forwards: Option<Forwards>,
}

#[derive(Clone, Copy)]
struct Forwards {
    per_result: usize,
    batch: usize,
}

fn rows(case: &CamCase, k: usize) -> Vec<Row> {
    let mut rows = vec![Row {
        label: "forward only (reference, img/s)".into(),
        work: Work::Forward,
        batch: case.batch,
        options: MethodOptions::default(),
        forwards: None,
    }];
    for m in Method::ALL {
        let mut options = MethodOptions::default();
        let perturbation = matches!(m, Method::ScoreCam | Method::AblationCam);
        let (mut label, mut forwards) = (m.to_string(), None);
        if m == Method::ScoreCam {
            options.channels = case.score_channels;
            let scored = case.score_channels.unwrap_or(k);
            // One forward for the activations, one per scored channel's masked image, `chunk` a pass.
            forwards = Some(Forwards { per_result: scored + 1, batch: options.chunk.min(scored) });
            label = match case.score_channels {
                Some(n) => format!("{label} ({n} of {k} channels scored: {n} masked images per map)"),
                None => format!("{label} (all {k} channels: {k} masked images per map)"),
            };
        }
        let batch = if perturbation { case.perturbation_batch } else { case.batch };
        rows.push(Row { label, work: Work::Method(m), batch, options, forwards });
    }
    // The authors' variant: 8 rows of pixels per step, a curve of steps + 1 points.
    let points = steps(CausalVariant::Authors, case.size, case.size) + 1;
    for (mode, name) in [(CausalMode::Insertion, "insertion"), (CausalMode::Deletion, "deletion")] {
        rows.push(Row {
            label: format!("{name} curve ({points} step images, curves/s)"),
            work: Work::Curves(mode),
            batch: case.batch,
            options: MethodOptions::default(),
            forwards: Some(Forwards { per_result: points, batch: case.curve_batch }),
        });
    }
    rows
}

/// `castream bench --cam`: on the quick ResNet-18 at 64 px (batch 32) and a paper-size ResNet-50 at
/// 224 px (batch 4; Score-CAM and Ablation-CAM on one image, Score-CAM scoring 256 of the 2048
/// channels), maps/s of every CAM method applicable to GAP and to CA and insertion/deletion
/// curves/s (authors' variant, `gkern` blur), printed as Markdown. `% of forward`: the whole-image
/// forward passes per second a row reaches (results/s × forwards per result) over the plain
/// forward's images/s at the batch size of those passes, the mean of its rate just before and just
/// after the row.
pub fn run_cam(root: &Path, runs: usize, with_onnx: bool, only: Option<&str>) -> Result<()> {
    println!(
        "threads: {} (RAYON_NUM_THREADS); random weights; maps post-processed (ReLU, min-max, upsampling)\n",
        rayon::current_num_threads()
    );
    let tmp = tempfile::tempdir()?;
    for case in cam_cases(root)?.into_iter().filter(|c| only.is_none_or(|o| c.label.contains(o))) {
        // Frozen, as evaluation runs them; the same seed-0 weights as ONNX Runtime's copies below.
        let frozen = Model::new(case.config.clone(), 0, &DEVICE.device()?)?.frozen()?;
        let ca = CaModel::new(frozen, &StreamConfig::default(), 0)?;
        // ONNX Runtime's GAP network at each batch size the forward-only rows pass, started once.
        let mut orts: BTreeMap<usize, std::result::Result<Ort, String>> = BTreeMap::new();
        let norm = Normalisation::IMAGENET;
        let subjects = [Pooling::Gap(&ca.backbone), Pooling::Ca(&ca)].map(|p| (p.kind(), Subject::of(p, norm)));
        let x = input(&Case { label: String::new(), config: case.config.clone(), batch: case.batch, size: case.size })?;
        let k = ca.backbone.net.stage_widths()[4];
        for (_, subject) in &subjects {
            for _ in 0..3 {
                subject.logits(&x)?; // warm the allocator before the first timed row
            }
        }
        println!(
            "{}: {} px, batch {}, F_4 has K = {k} channels; curves score {} step images per forward pass\n",
            case.label, case.size, case.batch, case.curve_batch
        );
        println!(
            "| work | images per call | GAP results/s | CA results/s | GAP ms/result | CA ms/result | GAP % of forward \
             | CA % of forward | ONNX Runtime GAP results/s (forwards only) | GAP / ONNX Runtime | calls timed (after a warm-up) |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for row in rows(&case, k) {
            let xb = x.narrow(0, 0, row.batch)?;
            let classes: Vec<u32> = (0..row.batch as u32).map(|i| i % case.config.num_classes as u32).collect();
            let (mut rates, mut shares, mut timed) = (Vec::new(), Vec::new(), Vec::new());
            for (pooling, subject) in &subjects {
                // The reference: the plain forward at the batch of the row's passes, around the row.
                let reference = |f: &Forwards| -> Result<f64> {
                    let images = x.repeat((f.batch.div_ceil(case.batch), 1, 1, 1))?.narrow(0, 0, f.batch)?;
                    let (s, _) = adaptive_seconds(runs, || Ok(subject.logits(&images).map(|_| ())?))?;
                    Ok(f.batch as f64 / s)
                };
                let before = row.forwards.map(|f| reference(&f)).transpose()?;
                let figure = time_row(&row, *pooling, subject, &xb, &classes, case.curve_batch, runs)?;
                let after = row.forwards.map(|f| reference(&f)).transpose()?;
                let rate = figure.map(|(s, _)| row.batch as f64 / s);
                rates.push(rate);
                shares.push(match (rate, row.forwards, before, after) {
                    (Some(r), Some(f), Some(b), Some(a)) => {
                        format!("{:.0}%", 100.0 * r * f.per_result as f64 / ((b + a) / 2.0))
                    }
                    _ => "–".to_string(),
                });
                timed.push(figure.map_or("–".to_string(), |(_, n)| n.to_string()));
            }
            let ort_rate = match (with_onnx, row.forwards) {
                (true, Some(f)) => {
                    let ort = orts.entry(f.batch).or_insert_with(|| start_ort(&case, f.batch, tmp.path()));
                    match ort {
                        Ok(o) => Some(f.batch as f64 / o.seconds(runs)? / f.per_result as f64),
                        Err(e) => {
                            eprintln!("ONNX Runtime at batch {}: {e}", f.batch);
                            None
                        }
                    }
                }
                _ => None,
            };
            let rate = |r: &Option<f64>| r.map_or("–".to_string(), significant);
            let ms = |r: &Option<f64>| r.map_or("–".to_string(), |r| format!("{:.1}", 1e3 / r));
            let ours_per_ort = match (rates[0], ort_rate) {
                (Some(a), Some(b)) => format!("{:.2}", a / b),
                _ => "–".to_string(),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.label,
                row.batch,
                rate(&rates[0]),
                rate(&rates[1]),
                ms(&rates[0]),
                ms(&rates[1]),
                shares[0],
                shares[1],
                rate(&ort_rate),
                ours_per_ort,
                timed.join(" / ")
            );
        }
        println!();
    }
    Ok(())
}

/// ONNX Runtime serving `case`'s GAP network (seed-0 weights, checked against ours) at `batch`.
fn start_ort(case: &CamCase, batch: usize, dir: &Path) -> std::result::Result<Ort, String> {
    let case = Case { label: case.label.clone(), config: case.config.clone(), batch, size: case.size };
    let networks = Networks::new(&case, Kernels::Fast).map_err(|e| e.to_string())?;
    Ort::start(&case, &networks, dir).map_err(|e| format!("{e:#}"))
}

/// Seconds per call of `row` for one pooling and the calls timed; `None` where the method does not
/// apply to it.
fn time_row(
    row: &Row,
    pooling: PoolingKind,
    subject: &Subject,
    x: &Tensor,
    classes: &[u32],
    curve_batch: usize,
    runs: usize,
) -> Result<Option<(f64, usize)>> {
    Ok(match row.work {
        Work::Forward => Some(adaptive_seconds(runs, || Ok(subject.logits(x).map(|_| ())?))?),
        Work::Method(m) if m.applies_to(pooling) => {
            let built = m.build(&row.options);
            Some(adaptive_seconds(runs, || Ok(explain(built.as_ref(), subject, x, classes).map(|_| ())?))?)
        }
        Work::Method(_) => None,
        Work::Curves(mode) => {
            // Grad-CAM's maps: the order of the pixels, not the map, sets the work.
            let maps = explain(Method::GradCam.build(&row.options).as_ref(), subject, x, classes)?.upsampled;
            let mut score = |b: &Tensor| subject.logits(b);
            Some(adaptive_seconds(runs, || {
                let variant = CausalVariant::Authors;
                causal_curves(&mut score, x, &maps, classes, mode, variant, InsertionBlur::Gkern, curve_batch)?;
                Ok(())
            })?)
        }
    })
}
