//! `table5`: raw attention as a class-agnostic saliency map. The five metrics for each CA block's
//! attention (CA-0 … CA-4) and their product and mean, beside the CAM methods of the same CA
//! model and two baselines: a centre prior and a random map.

use anyhow::Result;
use castream_cam::Method;
use castream_stream::AttentionSelect;

use super::interpretability_table::{evaluation, poolings, test_scenes, CAMS, DEFAULT_IMAGES};
use super::RunContext;
use crate::ca::quick_models;
use crate::interpretability::{Source, PAPER_METRICS};
use crate::scorecard::{Row, Scorecard};

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let (data, ids) = test_scenes(ctx, DEFAULT_IMAGES)?;
    let n = ids.len();
    ctx.record.seeds.insert("random map".into(), s.seed);
    let eval = evaluation(ctx, &data.test, &ids);
    let mut rows = Vec::new();
    for name in &s.backbones {
        let m = quick_models(ctx.root, name, &s.stream, &data, &mut None)?;
        let [_, (_, subject, key)] = poolings(&m);
        let blocks = m.ca.stream.config().taps.iter().map(|&t| Source::Attention(AttentionSelect::Block(t)));
        let combined = [Source::Attention(AttentionSelect::Product), Source::Attention(AttentionSelect::Mean)];
        let cams = CAMS.map(Source::Method);
        let sources: Vec<Source> = blocks.chain(combined).chain(cams).chain([Source::Centre, Source::Random]).collect();
        for source in sources {
            let values = eval.run(&subject, &key, source, &PAPER_METRICS)?;
            rows.push(Row { backbone: name.clone(), method: source.label(), pooling: "CA".into(), values });
        }
    }
    let notes = [
        format!("Quick profile: the first {n} Fashion-MNIST test scenes (64x64); {}.", s.metrics.causal.describe()),
        "Raw attention: each block's softmax attention over its stage, head-averaged, bilinearly upsampled and min-max normalised; \
         product/mean combine the five upsampled maps. It ignores the class; the metrics still score the explained class."
            .to_string(),
        format!("CAM rows: {} of the same CA model at F_4.", CAMS.map(|m: Method| m.to_string()).join(", ")),
        "Centre prior: an isotropic Gaussian at the image centre, σ = side/4. Random map: uniform noise on F_4's grid, bilinearly \
         upsampled, seeded per image."
            .to_string(),
        "Reconstructed experiment (EXPERIMENTS.md): the paper's table 5 numbers are not readable, so no paper column.".to_string(),
    ];
    Scorecard {
        name: "table5",
        title: "Table 5: raw attention as class-agnostic saliency (CA model)",
        rows: &rows,
        metrics: &PAPER_METRICS,
        resamples: s.metrics.resamples,
        seed: s.seed,
        paper: None,
    }
    .write(&ids, &notes, ctx.out)
}
