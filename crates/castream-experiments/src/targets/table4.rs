//! `table4`: stream ablation. The same frozen backbone with streams that tap all five stages, the
//! last two, or only the last (a single attention pooling), with 1 or 4 heads: top-1 accuracy on
//! the same test images. The Grad-CAM interpretability columns wait for the metrics.

use anyhow::Result;
use castream_metrics::bootstrap::{crossed_interval, crossed_paired_interval};
use castream_report::columns;
use castream_stream::StreamConfig;

use castream_cam::{Method, PoolingKind};
use castream_stream::CaModel;

use super::interpretability::{backbone_weights, explained};
use super::RunContext;
use castream_eval::interpretability::Source;
use castream_metrics::metric::{PerImage, PAPER_METRICS};
use castream_report::charts::{Chart, GroupedBars};
use castream_report::scorecard::{Row, Scorecard};
use castream_report::tables::Table;
use castream_zoo::ca::StreamSpec;

const DEFAULT_IMAGES: usize = 5000;
/// Images of the Grad-CAM metric columns (at most `images`): ~20 forwards each per variant.
const METRIC_IMAGES: usize = 500;
const RESAMPLES: usize = 2000;

/// (label, taps, heads) of each variant.
const VARIANTS: [(&str, &[usize], usize); 4] = [
    ("all five, 1 head", &[0, 1, 2, 3, 4], 1),
    ("last two, 1 head", &[3, 4], 1),
    ("last only, 1 head", &[4], 1),
    ("all five, 4 heads", &[0, 1, 2, 3, 4], 4),
];

/// The stream configuration of every variant, from the spec's (scale and the rest kept).
pub fn stream_configs(base: &StreamConfig) -> Vec<StreamConfig> {
    VARIANTS
        .iter()
        .map(|(_, taps, heads)| StreamConfig { taps: taps.to_vec(), heads: *heads, ..base.clone() })
        .collect()
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let (set, all_ids) = super::test_images(ctx, DEFAULT_IMAGES)?;
    let n = all_ids.len();
    let (mut backbone, mut variant, mut top1, mut low, mut high, mut vs_gap, mut params) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut chart_series, mut chart_intervals): (Vec<(String, Vec<f64>)>, Vec<Vec<(f64, f64)>>) =
        (Vec::new(), Vec::new());
    let metric_ids: Vec<usize> = all_ids[..n.min(METRIC_IMAGES)].to_vec();
    let eval = ctx.evaluation(&*set, &metric_ids);
    let mut metric_rows = Vec::new();
    for spec in &s.backbones {
        let mut features = None;
        // Per variant, its streams of every seed.
        let models = stream_configs(&s.stream.config)
            .into_iter()
            .map(|config| ctx.seeded_models(spec, &StreamSpec { config, ..s.stream.clone() }, &mut features))
            .collect::<Result<Vec<_>>>()?;
        drop(features);
        let first = &models[0][0];
        let name = &first.name;
        let grad_cam = Source::Method(Method::GradCam);
        let gap_scores = eval.run(&explained(first, PoolingKind::Gap, 4), grad_cam, &PAPER_METRICS)?;
        for ((label, _, _), seeds) in VARIANTS.iter().zip(&models) {
            let values = seeds
                .iter()
                .map(|m| eval.run(&explained(m, PoolingKind::Ca, 4), grad_cam, &PAPER_METRICS))
                .collect::<Result<Vec<PerImage>>>()?;
            let row = |pooling: &str, values: Vec<PerImage>| Row {
                backbone: name.clone(),
                method: label.to_string(),
                pooling: pooling.into(),
                values,
            };
            metric_rows.push(row("GAP", vec![gap_scores.clone()]));
            metric_rows.push(row("CA", values));
        }
        let cas: Vec<&CaModel> = models.iter().flatten().map(|m| &m.ca).collect();
        let norm = &first.meta.normalisation;
        let weights: Vec<String> = std::iter::once(backbone_weights(first))
            .chain(models.iter().flatten().map(|m| m.stream_sha256.clone()))
            .collect();
        let (gap, ca) = ctx.evaluation(&*set, &all_ids).correctness(&cas, norm, &weights, name)?;
        let ca: Vec<Vec<&[f64]>> = ca.chunks(models[0].len()).map(|c| c.iter().map(Vec::as_slice).collect()).collect();
        if ctx.sharding.is_shard() {
            // A shard's cells are recorded by the runner; the tables are the merge's.
            continue;
        }
        let (mut per_variant, mut per_interval) = (Vec::new(), Vec::new());
        let rows = VARIANTS.iter().zip(&models).zip(ca).map(|((v, m), hits)| (v.0, Some(&m[0]), hits));
        for (label, model, hits) in rows.chain([("GAP (no stream)", None, vec![gap.as_slice()])]) {
            let iv = crossed_interval(&hits, RESAMPLES, 0.95, s.seed);
            backbone.push(name.clone());
            variant.push(label.to_string());
            top1.push(100.0 * iv.mean);
            low.push(100.0 * iv.low);
            high.push(100.0 * iv.high);
            vs_gap.push(match model {
                Some(_) => {
                    let d = crossed_paired_interval(&hits, &gap, RESAMPLES, 0.95, s.seed);
                    format!("{:+.2} [{:+.2}, {:+.2}]", 100.0 * d.mean, 100.0 * d.low, 100.0 * d.high)
                }
                None => "–".into(),
            });
            params.push(model.map_or(0, |m| m.ca.stream.parameter_count() as u64));
            per_variant.push(100.0 * iv.mean);
            per_interval.push((100.0 * iv.low, 100.0 * iv.high));
        }
        chart_series.push((name.clone(), per_variant));
        chart_intervals.push(per_interval);
    }
    if ctx.sharding.is_shard() {
        return Ok(());
    }
    ctx.record.seeds.insert("stream".into(), s.stream.train.seed);
    ctx.record.seeds.insert("bootstrap".into(), s.seed);
    let frame = columns!(
        "backbone" => &backbone, "stream" => &variant, "top1" => &top1, "top1_low" => &low, "top1_high" => &high,
        "ca_minus_gap" => &vs_gap, "stream_params" => &params,
    )?;
    Table::new("table4", "Table 4: stream ablation (top-1 %)", frame)
        .note(format!("{}; 95% bootstrap intervals ({RESAMPLES} resamples; stream rows: the mean over {} stream seeds, the interval of a two-way bootstrap over seeds and images); ca_minus_gap is a paired interval in points.", super::images_note(ctx, &*set, n), s.stream_seeds(ctx.profile)))
        .note(format!("Every stream is trained on the same frozen backbone, features and schedule ([{}.stream] of the spec); only taps and heads change.", ctx.profile))
        .note("Grad-CAM's AD/AG/AI/insertion/deletion of every variant: table4_gradcam.md.")
        .note("The paper's ablation numbers are not readable; no paper column.")
        .write(ctx.out)?;
    let categories: Vec<String> = VARIANTS.iter().map(|v| v.0.to_string()).chain(["GAP".to_string()]).collect();
    GroupedBars {
        title: "Stream ablation: top-1 accuracy (95% intervals)",
        y_label: "top-1 %",
        categories: &categories,
        series: &chart_series,
        intervals: Some(&chart_intervals),
    }
    .write(&ctx.out.join("table4"))?;
    let notes = [
        format!(
            "Grad-CAM at F_4 of every stream variant on the first {} {}; each variant's GAP row is the same backbone without \
             a stream, repeated so that CA − GAP is paired per variant; {}.",
            metric_ids.len(),
            if ctx.profile == crate::spec::Profile::Quick { "test scenes" } else { "evaluated images" },
            s.protocol.protocol().describe()
        ),
        "The paper's ablation numbers are not readable; no paper column.".to_string(),
    ];
    Scorecard {
        name: "table4_gradcam",
        title: "Table 4: stream ablation, Grad-CAM interpretability",
        rows: &metric_rows,
        metrics: &PAPER_METRICS,
        resamples: s.protocol.resamples,
        seed: s.seed,
        paper: None,
    }
    .write(&metric_ids, &notes, ctx.out)
}
