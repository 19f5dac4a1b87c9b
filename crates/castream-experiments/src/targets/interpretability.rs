//! `target = "interpretability"`: every saliency source of the spec (raw attention, CAM methods,
//! baselines) on every listed backbone and pooling, scored by the listed metrics on the same test
//! scenes — with intervals, paired CA − GAP differences, the published values of `paper`, and the
//! randomisation sanity check with `sanity = true`. Tables 2, 3, 5 and 6 are instances.

use anyhow::Result;
use castream_cam::{Network, Pooling, PoolingKind, Subject};
use castream_eval::{Explained, ModelKey, Source};
use castream_metrics::Metric;
use castream_report::scorecard::{Row, Scorecard};
use castream_zoo::ca::QuickModels;

use super::{test_images, RunContext};
use crate::paper::PaperValues;
use crate::spec::Profile;

/// Scenes per cell unless the spec's `images` says otherwise (fits the 5-minute quick budget).
pub const DEFAULT_IMAGES: usize = 500;

/// The GAP network or the CA model of `m` at `layer`, with its cell-cache key.
pub fn explained(m: &QuickModels, pooling: PoolingKind, layer: usize) -> Explained<'_> {
    let (net, weights) = match pooling {
        PoolingKind::Gap => (Pooling::Gap(&m.ca.backbone), backbone_weights(m)),
        PoolingKind::Ca => (Pooling::Ca(&m.ca), format!("{}+{}", backbone_weights(m), m.stream_sha256)),
    };
    let key = ModelKey { weights, pooling, layer };
    Explained { subject: Subject::new(Network { pooling: net, layer }, m.meta.normalisation), key }
}

/// What identifies `m`'s backbone in a cell: its weights' and sidecar's SHA-256.
pub fn backbone_weights(m: &QuickModels) -> String {
    format!("{}+{}", m.sha256, m.sidecar_sha256)
}

/// What identifies `m`'s GAP network and CA model in a cell: the backbone's, then the stream's.
pub fn model_weights(m: &QuickModels) -> [String; 2] {
    [backbone_weights(m), m.stream_sha256.clone()]
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let (set, ids) = test_images(ctx, DEFAULT_IMAGES)?;
    // Localisation needs a box per image: checked before any map is computed.
    if s.metrics.iter().any(|m| m.get_ref().group() == castream_metrics::metric::Group::Localisation) {
        if let Some(&i) = ids.iter().find(|&&i| set.bbox(i).is_none()) {
            anyhow::bail!(
                "image #{i} of {} has no object box, and the localisation metrics need one per image; Fix: give \
                 `boxes` in the spec's data table (docs/specs.md), or drop the localisation metrics",
                set.describe()
            );
        }
    }
    let eval = ctx.evaluation(&*set, &ids);
    let layer = *s.layer.get_ref();
    let metrics: Vec<Metric> = s.metrics.iter().map(|m| *m.get_ref()).collect();
    let methods: Vec<_> = s.methods.iter().map(|m| *m.get_ref()).collect();
    // Maps that ignore the model, scored by metrics that ignore it too, are one row, not one per pooling.
    let model_free = metrics.iter().all(|m| m.group() == castream_metrics::metric::Group::Localisation);
    let (mut rows, mut sanity_rows, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for backbone in &s.backbones {
        let seeded = ctx.seeded_models(backbone, &s.stream, &mut None)?;
        let m = &seeded[0];
        // The GAP network once (the streams share the frozen backbone), a CA model per seed.
        let models: Vec<(PoolingKind, Vec<Explained>)> = s
            .poolings
            .iter()
            .map(|&p| match p {
                PoolingKind::Gap => (p, vec![explained(m, p, layer)]),
                PoolingKind::Ca => (p, seeded.iter().map(|m| explained(m, p, layer)).collect()),
            })
            .collect();
        let attention = s.attention.iter().flat_map(|a| a.expand(&m.ca.stream.config().taps)).map(Source::Attention);
        let sources: Vec<Source> = attention
            .chain(methods.iter().map(|&m| Source::Method(m)))
            .chain(s.baselines.iter().map(|b| b.source()))
            .collect();
        for source in sources {
            let one_row = model_free && matches!(source, Source::Centre | Source::Random | Source::FakeCam);
            let applicable: Vec<&(PoolingKind, Vec<Explained>)> =
                models.iter().filter(|(p, _)| source.applies_to(*p)).collect();
            // Every model of the backbone, so Score-CAM's masked forwards are shared by all.
            let siblings: Vec<&Explained> = applicable.iter().flat_map(|(_, e)| e).collect();
            for (pooling, seeds) in applicable.iter().take(if one_row { 1 } else { usize::MAX }) {
                let seeds = if one_row { &seeds[..1] } else { &seeds[..] };
                let values =
                    seeds.iter().map(|e| eval.run_shared(e, &siblings, source, &metrics)).collect::<Result<_>>()?;
                rows.push(Row {
                    backbone: m.name.clone(),
                    method: source.label(),
                    pooling: if one_row { "baseline".into() } else { pooling.label().into() },
                    values,
                });
            }
        }
        if s.sanity {
            let weights = model_weights(m);
            sanity_rows.extend(eval.sanity(&m.name, &m.ca, m.meta.normalisation, &methods, &s.poolings, &weights)?);
        }
        let streams = || super::streams_note(&seeded, s.stream.train.seed);
        notes.push(match &m.manifest {
            Some(e) => {
                format!("{}: test accuracy {:.2}% (GAP, manifest); {}.", m.name, 100.0 * e.test_accuracy, streams())
            }
            None if m.stream_val_accuracy.is_nan() => format!("{}: GAP network only, no stream.", m.name),
            None => format!("{}: {}.", m.name, streams()),
        });
    }
    if ctx.sharding.is_shard() {
        // A shard's cells are recorded by the runner; the tables are the merge's.
        return Ok(());
    }
    let side = set.side();
    let images = match ctx.profile {
        Profile::Quick => format!("Quick profile: the first {} Fashion-MNIST test scenes ({side}x{side})", ids.len()),
        Profile::Paper => super::images_note(ctx, &*set, ids.len()),
    };
    notes.push(format!("{images}; maps of F_{layer}; {}.", eval.protocol.describe()));
    notes.extend(method_notes(s, ids.len(), side));
    notes.extend(s.notes.iter().cloned());
    let paper = match &s.paper {
        Some(network) => Some(PaperValues::load(ctx.experiments)?.interpretability(network)?.clone()),
        None => None,
    };
    let lookup = |_: &str, method: &str, pooling: &str, metric: Metric| -> Option<f64> {
        let by_method = paper.as_ref()?;
        let (_, by_pooling) = by_method.iter().find(|(m, _)| m.name() == method)?;
        let (_, values) = by_pooling.iter().find(|(p, _)| p.label() == pooling)?;
        values.get(&metric).copied()
    };
    Scorecard {
        name: &ctx.spec.name,
        title: &ctx.spec.title,
        rows: &rows,
        metrics: &metrics,
        resamples: s.protocol.resamples,
        seed: s.seed,
        paper: paper.is_some().then_some(&lookup as _),
    }
    .write(&ids, &notes, ctx.out)?;
    if s.sanity {
        castream_report::sanity::write(&sanity_rows, &format!("{}_sanity", ctx.spec.name), ctx.out)?;
    }
    Ok(())
}

/// What the footer says of how the maps were made and scored.
fn method_notes(s: &crate::spec::Settings, n: usize, side: usize) -> Vec<String> {
    let mut notes =
        vec!["Maps: ReLU, per-image min-max, bilinear upsampling; explanation image normalise(denormalise(x)·S)."
            .to_string()];
    let cam = &s.protocol.cam;
    if s.methods.iter().any(|m| *m.get_ref() == castream_cam::Method::ScoreCam) {
        let upsampling = match cam.score_cam_upsampling {
            castream_cam::Upsampling::AlignCorners => "align_corners = true, the authors'",
            castream_cam::Upsampling::HalfPixel => "align_corners = false",
        };
        notes.push(match cam.channels {
            None => format!("Score-CAM scores every channel, each upsampled with {upsampling}."),
            Some(c) => format!(
                "Score-CAM scores only the {c} most active channels per image, each upsampled with {upsampling}."
            ),
        });
    }
    if s.methods.iter().any(|m| *m.get_ref() == castream_cam::Method::GradCamPlusPlus) {
        notes.push(format!("Grad-CAM++: eps = {:e} in alpha's denominator.", cam.grad_cam_pp_eps));
    }
    if s.methods.iter().any(|m| *m.get_ref() == castream_cam::Method::OptiCam) {
        notes.push(format!(
            "Opti-CAM: {} Adam steps at learning rate {} from uniform weights, no early stop.",
            cam.opti_cam_iterations, cam.opti_cam_learning_rate
        ));
    }
    let wants = |m: Metric| s.metrics.iter().any(|k| *k.get_ref() == m);
    if wants(Metric::Insertion) || wants(Metric::Deletion) {
        notes.push(format!(
            "Insertion starts from {}; deletion sets pixels to 0 in normalised space; pixels are taken in decreasing \
             saliency, ties in increasing index order; AUC by the trapezoid rule, x100.",
            s.protocol.insertion_blur.describe()
        ));
    }
    if s.metrics.iter().any(|m| m.get_ref().group() == castream_metrics::metric::Group::Localisation) {
        notes.push(format!(
            "PG: % of images whose map peak lies within {:.1} px (15 px at 224, scaled) of the object box. EPG: % of the map's mass \
             inside the box. IoU: % overlap of the map thresholded at {} x its maximum with the box.",
            castream_metrics::localisation::pointing_tolerance(side),
            castream_metrics::localisation::DEFAULT_IOU_THRESHOLD
        ));
    }
    if wants(Metric::Aopc) {
        notes.push(
            "AOPC: the mean drop of the class probability along the deletion curve (deletion sets pixels to 0 in \
             normalised space, in decreasing saliency, ties in increasing index order), x100."
                .into(),
        );
    }
    let scoring = &s.protocol.scoring;
    if s.metrics.iter().any(|m| m.get_ref().group() == castream_metrics::metric::Group::Road) {
        let percents = castream_metrics::road::fractions(scoring.road_step);
        notes.push(format!(
            "ROAD: {}% of the pixels removed (most / least relevant first), filled by linear imputation from the 8 \
             neighbours plus N(0, {}²) noise in normalised units; ties in saliency in a seeded random order; mean class probability over the fractions, x100; \
             ROAD = (LeRF − MoRF) / 2.",
            percents.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            scoring.road_noise
        ));
    }
    if wants(Metric::MaxSensitivity) {
        notes.push(format!(
            "MS: the largest relative change ||S(x+δ) − S(x)|| / ||S(x)|| over {} perturbations uniform in ±{} (pixels \
             in [0, 1]), in %.",
            scoring.sensitivity_samples, scoring.sensitivity_radius
        ));
    }
    if s.metrics.iter().any(|m| m.get_ref().group() == castream_metrics::metric::Group::Adcc) {
        notes.push(
            "Coh: (1 + Pearson's ρ of the map and the map of the explanation image) / 2; Cx: the map's mean; ADCC: the \
             harmonic mean of Coh, 1 − Cx and 1 − AD; all x100."
                .into(),
        );
    }
    let confidence = s.metrics.iter().any(|m| m.get_ref().group() == castream_metrics::metric::Group::Confidence);
    if s.baselines.contains(&castream_eval::Baseline::FakeCam) && confidence {
        notes.push(
            "Fake-CAM is 1 everywhere but one pixel: it explains nothing, yet its explanation image is the image, so \
             its AD is near 0 and its AI near a coin flip — read AD and AI against it."
                .into(),
        );
    }
    notes.push(format!(
        "A larger run (`--images 10000`) narrows every interval by about √(10000/{n}) ≈ {:.1}x.",
        (10000.0 / n.max(1) as f64).sqrt()
    ));
    notes
}
