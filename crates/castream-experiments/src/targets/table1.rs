//! `table1`: recognition. Top-1 accuracy of the GAP network and of the same frozen network with
//! CA-Stream pooling, on the same test images, with parameter counts and throughput.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use castream_metrics::bootstrap::{crossed_interval, crossed_paired_interval, mean_difference, Interval};
use castream_report::columns;

use super::interpretability::model_weights;
use super::RunContext;
use crate::spec::Profile;
use castream_cam::PoolingKind;

use crate::paper::PaperValues;
use castream_report::charts::{Chart, GroupedBars};
use castream_report::claims::{differences_table, Difference};
use castream_report::forest::Forest;
use castream_report::tables::Table;

/// Test scenes evaluated unless the spec's `images` says otherwise.
const DEFAULT_IMAGES: usize = 5000;
const RESAMPLES: usize = 2000;

/// Images per second of a forward pass over one batch (median of 3 after a warm-up).
fn throughput(batch: &Tensor, forward: impl Fn(&Tensor) -> Result<Tensor>) -> Result<f64> {
    forward(batch)?;
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            forward(batch).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(batch.dims()[0] as f64 / times[1])
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let (set, ids) = super::test_images(ctx, DEFAULT_IMAGES)?;
    let n = ids.len();
    let mut rows: (Vec<String>, Vec<String>, Vec<f64>, Vec<f64>, Vec<f64>) = Default::default();
    let (mut params_total, mut params_stream, mut speed, mut paper) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gflops = Vec::new();
    let mut notes = Vec::new();
    // CA − GAP per backbone, in points, with the paper's change: the claims table.
    let mut claims: Vec<Difference> = Vec::new();
    let published = PaperValues::load(ctx.experiments)?;
    for backbone in &s.backbones {
        let seeded = ctx.seeded_models(backbone, &s.stream, &mut None)?;
        let m = &seeded[0];
        let name = &m.name;
        // The backbone's weights, then every seed's stream: one cell, the backbone run once per batch.
        let mut weights = model_weights(m).to_vec();
        weights.extend(seeded[1..].iter().map(|m| m.stream_sha256.clone()));
        let cas: Vec<&castream_stream::CaModel> = seeded.iter().map(|m| &m.ca).collect();
        let (gap, ca) = ctx.evaluation(&*set, &ids).correctness(&cas, &m.meta.normalisation, &weights, name)?;
        if ctx.sharding.is_shard() {
            // A shard's cells are recorded by the runner; the table is the merge's.
            continue;
        }
        let ca: Vec<&[f64]> = ca.iter().map(Vec::as_slice).collect();
        let (x, _) = set.batch(&ids[..s.batch_size.min(n)], &m.meta.normalisation, &ctx.device)?;
        // Multiply-adds of one image: the GAP network (convolutions and classifier), plus the stream.
        let one = x.narrow(0, 0, 1)?;
        let (logits, gap_macs) = castream_kernels::count_macs(|| m.ca.backbone.net.forward(&one, false));
        logits?;
        let ca_macs = gap_macs as usize + m.ca.stream.multiply_adds(&m.ca.backbone.net.stages(&one, false)?)?;
        let gap_speed = throughput(&x, |x| Ok(m.ca.backbone.net.forward(x, false)?))?;
        let ca_speed = throughput(&x, |x| Ok(m.ca.forward(x)?.0))?;
        // ResNet-50 beside ResNet backbones, ConvNeXt-B beside ConvNeXt ones.
        let network = if backbone.is_convnext() { "ConvNeXt-B" } else { "ResNet-50" };
        let (p_gap, p_ca) = (published.top1(network, PoolingKind::Gap), published.top1(network, PoolingKind::Ca));
        let backbone_params = m.ca.backbone.parameter_count();
        for (pooling, hits, speed_v, p, extra, macs) in [
            ("GAP", vec![gap.as_slice()], gap_speed, p_gap, 0, gap_macs as usize),
            ("CA", ca.clone(), ca_speed, p_ca, m.ca.stream.parameter_count(), ca_macs),
        ] {
            let iv = crossed_interval(&hits, RESAMPLES, 0.95, s.seed);
            rows.0.push(name.clone());
            rows.1.push(pooling.into());
            rows.2.push(100.0 * iv.mean);
            rows.3.push(100.0 * iv.low);
            rows.4.push(100.0 * iv.high);
            params_total.push((backbone_params + extra) as u64);
            params_stream.push(extra as u64);
            speed.push(speed_v);
            gflops.push(2.0 * macs as f64 / 1e9);
            paper.push(p);
        }
        let diff = crossed_paired_interval(&ca, &gap, RESAMPLES, 0.95, s.seed);
        let per_seed: Vec<f64> = ca.iter().map(|c| 100.0 * mean_difference(c, &gap)).collect();
        claims.push(Difference {
            backbone: name.clone(),
            method: "recognition".into(),
            metric: "top-1↑".into(),
            higher_is_better: true,
            paper: p_ca.zip(p_gap).map(|(c, g)| c - g),
            interval: Interval { mean: 100.0 * diff.mean, low: 100.0 * diff.low, high: 100.0 * diff.high },
            per_seed,
        });
        let manifest = match &m.manifest {
            Some(e) => format!(
                "backbone test accuracy in the manifest {:.2}% ({} images)",
                100.0 * e.test_accuracy,
                e.test_images
            ),
            None => format!("backbone checkpoint SHA-256 {}", m.sha256),
        };
        notes.push(format!(
            "{name}: CA − GAP = {:+.2} points, 95% paired bootstrap interval [{:+.2}, {:+.2}]; {manifest}; {}; {}.",
            100.0 * diff.mean,
            100.0 * diff.low,
            100.0 * diff.high,
            super::streams_note(&seeded, s.stream.train.seed),
            if m.cache_bytes == 0 {
                format!("the stream loaded from {}", m.stream_file.display())
            } else {
                format!(
                    "the stream trained on cached stage features of {:.1} MiB (the largest stages on disk){}",
                    m.cache_bytes as f64 / (1 << 20) as f64,
                    if m.from_cache { format!(" (loaded from {})", m.stream_file.display()) } else { String::new() }
                )
            },
        ));
    }

    if ctx.sharding.is_shard() {
        return Ok(());
    }
    let frame = columns!(
        "backbone" => &rows.0, "pooling" => &rows.1, "top1" => &rows.2, "top1_low" => &rows.3, "top1_high" => &rows.4,
        "params" => params_total, "stream_params" => params_stream, "gflops" => &gflops, "images_per_s" => &speed,
    )?;
    let mut table = Table::new("table1", "Table 1: recognition, GAP vs CA-Stream (top-1 %)", frame)
        .with_paper("top1", &paper)?
        .note(format!(
            "{}; 95% bootstrap interval in top1_low/top1_high ({RESAMPLES} resamples; CA rows: the mean over {} stream seeds, \
             the interval of a two-way bootstrap over seeds and images, docs/results.md).",
            super::images_note(ctx, &*set, n),
            s.stream_seeds(ctx.profile)
        ))
        .note(match ctx.profile {
            Profile::Quick => "Paper values are the authors' ImageNet numbers (ResNet-50 rows beside resnet18, ConvNeXt-B beside convnext): compare the GAP→CA change, not the level.",
            Profile::Paper => "Paper values are the authors' ImageNet numbers (ResNet-50 beside ResNet rows, ConvNeXt-B beside ConvNeXt rows), measured with the same squash-to-224 evaluation: comparable where the backbone is the one they used.",
        })
        .note("gflops: 2 x multiply-adds per image (convolutions, linear layers, the stream's attention and maps), counted while running.")
        .note(format!("images_per_s: forward of a batch of {} on this machine's {} threads (median of 3).", s.batch_size, rayon::current_num_threads()));
    for n in notes {
        table = table.note(n);
    }
    table.decimals = 3;
    table.write(ctx.out)?;
    let title = "Table 1: top-1 CA − GAP, paired (points)";
    differences_table("table1_ca_vs_gap", title, &claims, true, RESAMPLES)?
        .note("The paper's change: ResNet-50's beside ResNet rows, ConvNeXt-B's beside ConvNeXt rows.")
        .write(ctx.out)?;
    Forest { title, rows: &claims }.write(&ctx.out.join("table1_forest"))?;
    let categories: Vec<String> = s.backbones.iter().map(|b| b.name()).collect();
    let pick = |k: usize, v: &[f64]| (0..s.backbones.len()).map(|b| v[2 * b + k]).collect::<Vec<_>>();
    let series: Vec<(String, Vec<f64>)> =
        ["GAP", "CA"].iter().enumerate().map(|(k, p)| (p.to_string(), pick(k, &rows.2))).collect();
    let intervals: Vec<Vec<(f64, f64)>> =
        (0..2).map(|k| pick(k, &rows.3).into_iter().zip(pick(k, &rows.4)).collect()).collect();
    GroupedBars {
        title: "Top-1 accuracy, GAP vs CA-Stream (95% intervals)",
        y_label: "top-1 %",
        categories: &categories,
        series: &series,
        intervals: Some(&intervals),
    }
    .write(&ctx.out.join("table1"))
}
