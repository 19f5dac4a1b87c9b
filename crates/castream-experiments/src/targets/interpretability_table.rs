//! `table2` (ResNet backbone) and `table3` (ConvNeXt backbone): AD, AG, AI, insertion and
//! deletion of Grad-CAM, Grad-CAM++ and Score-CAM with GAP and with CA on the same test scenes,
//! the paper's ImageNet values beside ours, paired CA − GAP intervals, and the randomisation
//! sanity check of every map.

use anyhow::{bail, Result};
use castream_cam::{Method, Pooling, Subject};
use castream_data::scenes::SceneSet;

use super::{NotYetAvailable, RunContext};
use crate::ca::{quick_models, QuickData, QuickModels};
use crate::interpretability::{Evaluation, Metric, Source, PAPER_METRICS};
use crate::quick::is_shipped;
use crate::saliency::image_list_sha256;
use crate::sanity;
use crate::scorecard::{Row, Scorecard};
use crate::spec::Profile;

/// Scenes per cell unless the spec's `images` says otherwise (fits the 5-minute quick budget).
pub const DEFAULT_IMAGES: usize = 500;
pub const CAMS: [Method; 3] = [Method::GradCam, Method::GradCamPlusPlus, Method::ScoreCam];

/// The backbone family a table covers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Resnet,
    Convnext,
}

/// METHOD.md §6: (network, method, pooling) → AD, AG, AI, I, D on ImageNet.
const PAPER: [(&str, &str, &str, [f64; 5]); 12] = [
    ("ResNet-50", "Grad-CAM", "GAP", [13.04, 17.56, 44.47, 72.57, 13.24]),
    ("ResNet-50", "Grad-CAM", "CA", [12.54, 22.67, 48.56, 75.53, 13.50]),
    ("ResNet-50", "Grad-CAM++", "GAP", [13.79, 15.87, 42.08, 72.32, 13.33]),
    ("ResNet-50", "Grad-CAM++", "CA", [13.99, 19.29, 44.60, 75.21, 13.78]),
    ("ResNet-50", "Score-CAM", "GAP", [8.83, 17.97, 48.46, 71.99, 14.31]),
    ("ResNet-50", "Score-CAM", "CA", [7.09, 23.65, 54.20, 74.91, 14.68]),
    ("ConvNeXt-B", "Grad-CAM", "GAP", [33.72, 2.43, 15.25, 52.85, 29.57]),
    ("ConvNeXt-B", "Grad-CAM", "CA", [19.45, 13.96, 32.89, 86.38, 45.29]),
    ("ConvNeXt-B", "Grad-CAM++", "GAP", [34.01, 2.37, 15.60, 52.83, 29.17]),
    ("ConvNeXt-B", "Grad-CAM++", "CA", [36.69, 8.00, 21.95, 85.39, 53.42]),
    ("ConvNeXt-B", "Score-CAM", "GAP", [43.55, 2.23, 15.67, 50.96, 39.49]),
    ("ConvNeXt-B", "Score-CAM", "CA", [23.51, 11.04, 27.35, 83.41, 60.53]),
];

/// The published value for a quick backbone's row: ResNet-50 beside ResNet backbones, ConvNeXt-B
/// beside ConvNeXt ones.
pub fn paper_value(backbone: &str, method: &str, pooling: &str, metric: Metric) -> Option<f64> {
    let network = if backbone.starts_with("convnext") { "ConvNeXt-B" } else { "ResNet-50" };
    let column = PAPER_METRICS.iter().position(|&m| m == metric)?;
    PAPER.iter().find(|(n, m, p, _)| *n == network && *m == method && *p == pooling).map(|row| row.3[column])
}

/// The evaluation of the first `n` test scenes with the spec's metric options.
pub fn evaluation<'a>(ctx: &RunContext<'a>, set: &'a SceneSet, ids: &'a [usize]) -> Evaluation<'a> {
    let s = ctx.settings;
    Evaluation {
        set,
        ids,
        batch_size: s.batch_size,
        spec: &s.metrics,
        seed: s.seed,
        cache: ctx.root.join("target/castream/metrics"),
    }
}

/// Cache keys of a backbone's two poolings: the checkpoint's SHA-256, and the trained stream's file.
pub fn model_keys(m: &QuickModels) -> (String, String) {
    let stream = m.stream_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    (m.manifest.sha256.clone(), format!("{}+{stream}", m.manifest.sha256))
}

/// The GAP network and the CA model of `m`, each with its name in tables and its cache key.
pub fn poolings(m: &QuickModels) -> [(&'static str, Subject<'_>, String); 2] {
    let norm = m.meta.normalisation;
    let (gap_key, ca_key) = model_keys(m);
    [
        ("GAP", Subject::new(Pooling::Gap(&m.ca.backbone), norm), gap_key),
        ("CA", Subject::new(Pooling::Ca(&m.ca), norm), ca_key),
    ]
}

/// The quick profile's test scenes and the first `images` (spec or `--images`, else `default`)
/// of them, recorded in `run.json`; the paper profile is refused until a stream is trained on ImageNet.
pub fn test_scenes(ctx: &mut RunContext, default: usize) -> Result<(QuickData, Vec<usize>)> {
    if ctx.profile == Profile::Paper {
        bail!(
            "{} --profile paper: not yet available: needs an ImageNet-trained stream (train it on a GPU machine)",
            ctx.spec.name
        );
    }
    let data = QuickData::load(ctx.settings)?;
    let n = ctx.settings.images.unwrap_or(default).min(data.test.len());
    let ids: Vec<usize> = (0..n).collect();
    ctx.record.image_list_sha256 = Some(image_list_sha256("fashion-mnist/test", &ids));
    ctx.record.seeds.insert("bootstrap".into(), ctx.settings.seed);
    Ok((data, ids))
}

pub fn run(ctx: &mut RunContext, family: Family) -> Result<()> {
    let table = ctx.spec.name.clone();
    if ctx.profile == Profile::Paper {
        bail!(
            "{table} --profile paper: not yet available: needs an ImageNet-trained stream (train it on a GPU machine)"
        );
    }
    let s = ctx.settings;
    let names: Vec<&String> =
        s.backbones.iter().filter(|b| (family == Family::Convnext) == b.starts_with("convnext")).collect();
    if names.is_empty() {
        let want = if family == Family::Convnext {
            "a ConvNeXt backbone (e.g. \"convnext\")"
        } else {
            "a ResNet backbone (e.g. \"resnet18\")"
        };
        bail!("{}: [quick] backbones lists none of this table's family; Fix: list {want}", ctx.spec.path.display());
    }
    for name in &names {
        if !is_shipped(ctx.root, name)? {
            return Err(NotYetAvailable {
                target: table,
                needs: format!("the quick `{name}` backbone, which is not shipped (docs/backbones.md); train it with `cargo xtask train-backbones`"),
            }
            .into());
        }
    }
    let (data, ids) = test_scenes(ctx, DEFAULT_IMAGES)?;
    let n = ids.len();
    let eval = evaluation(ctx, &data.test, &ids);
    let (mut rows, mut sanity_rows, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let m = quick_models(ctx.root, name, &s.stream, &data, &mut None)?;
        ctx.record.seeds.insert(format!("stream.{name}"), s.stream.train.seed);
        let norm = m.meta.normalisation;
        let (gap_key, ca_key) = model_keys(&m);
        let poolings = [
            ("GAP", Subject::new(Pooling::Gap(&m.ca.backbone), norm), &gap_key),
            ("CA", Subject::new(Pooling::Ca(&m.ca), norm), &ca_key),
        ];
        for method in CAMS {
            for (pooling, subject, key) in &poolings {
                let values = eval.run(subject, key, Source::Method(method), &PAPER_METRICS)?;
                rows.push(Row {
                    backbone: name.clone(),
                    method: method.to_string(),
                    pooling: pooling.to_string(),
                    values,
                });
            }
        }
        sanity_rows.extend(sanity::check(&m, &data.test, &CAMS, s)?);
        notes.push(format!(
            "{name}: test accuracy {:.2}% (GAP, manifest); stream validation accuracy {:.2}%.",
            100.0 * m.manifest.test_accuracy,
            100.0 * m.stream_val_accuracy
        ));
    }
    let paper_network = if family == Family::Convnext { "ConvNeXt-B" } else { "ResNet-50" };
    notes.extend([
        format!("Quick profile: the first {n} Fashion-MNIST test scenes (64x64); {}.", s.metrics.causal.describe()),
        format!(
            "Paper values: the authors' {paper_network} on ImageNet (METHOD.md §6); levels are not comparable across data and networks, \
             the direction of the GAP→CA change is."
        ),
        format!(
            "Maps of F_4 (ReLU, per-image min-max, bilinear upsampling); Score-CAM {}; explanation image normalise(denormalise(x)·S).",
            match s.metrics.cam.channels {
                None => "scores every channel".to_string(),
                Some(c) => format!("scores only the {c} most active channels per image"),
            }
        ),
        "Insertion starts from a 5x5 σ=5 Gaussian blur; deletion sets pixels to 0 in normalised space; AUC by the trapezoid rule, x100.".into(),
        format!("A larger run (`--images 10000`) narrows every interval by about √(10000/{n}) ≈ {:.1}x.", (10000.0 / n as f64).sqrt()),
    ]);
    Scorecard {
        name: &table,
        title: &format!(
            "{}: interpretability, GAP vs CA-Stream",
            if family == Family::Convnext { "Table 3" } else { "Table 2" }
        ),
        rows: &rows,
        metrics: &PAPER_METRICS,
        resamples: s.metrics.resamples,
        seed: s.seed,
        paper: Some(&paper_value),
    }
    .write(&ids, &notes, ctx.out)?;
    sanity::write(&sanity_rows, &format!("{table}_sanity"), ctx.out)
}
