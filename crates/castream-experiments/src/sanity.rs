//! The model-randomisation sanity check (Adebayo et al. 2018, beyond the paper): re-initialise the
//! classifier and the last stage, explain the same images again, and measure how much each map
//! changed by Spearman's rank correlation with the trained model's map. A method whose maps barely
//! change (correlation near 1) shows the image, not what the network learned: it fails.

use anyhow::Result;
use candle_core::Device;
use castream_backbones::Model;
use castream_cam::{Method, Pooling, Subject};
use castream_data::scenes::SceneSet;
use castream_metrics::bootstrap::mean_interval;
use castream_metrics::sanity::spearman;
use castream_stream::CaModel;
use polars::prelude::*;
use std::path::Path;

use crate::ca::QuickModels;
use crate::saliency::maps;
use crate::spec::Settings;
use crate::tables::Table;

/// Images explained by both models (Score-CAM dominates the cost: 2 x K forwards per image).
pub const IMAGES: usize = 32;
/// A method passes when its mean rank correlation after randomisation is below this.
pub const PASS_BELOW: f64 = 0.5;

pub struct SanityRow {
    pub backbone: String,
    pub method: String,
    pub pooling: String,
    pub spearman: Vec<f64>,
}

/// Whether a backbone variable belongs to the last stage or the classifier (torchvision/timm names).
fn randomised(name: &str) -> bool {
    ["layer4.", "fc.", "stages.3.", "head."].iter().any(|p| name.starts_with(p))
}

/// The trained backbone with its last stage and classifier re-initialised (seeded), and the same
/// trained stream on top of it.
fn randomise(m: &QuickModels, seed: u64) -> Result<CaModel> {
    let fresh = Model::new(m.meta.config.clone(), seed, &Device::Cpu)?;
    for ((name, var), (_, trained)) in fresh.named_vars().iter().zip(m.ca.backbone.named_vars()) {
        if !randomised(name) {
            var.set(trained.as_tensor())?;
        }
    }
    let ca = CaModel::new(fresh, m.ca.stream.config(), seed)?;
    for ((_, var), (_, trained)) in ca.stream.named_vars().iter().zip(m.ca.stream.named_vars()) {
        var.set(trained.as_tensor())?;
    }
    Ok(ca)
}

/// Rank correlations of every method's maps, trained vs randomised, for GAP and CA.
pub fn check(m: &QuickModels, set: &SceneSet, methods: &[Method], s: &Settings) -> Result<Vec<SanityRow>> {
    let ids: Vec<usize> = (0..IMAGES.min(set.len())).collect();
    let norm = m.meta.normalisation;
    let (x, y) = set.batch(&ids, &norm, &Device::Cpu)?;
    let labels: Vec<u32> = y.to_vec1()?;
    let random = randomise(m, s.seed.wrapping_add(1))?;
    let mut rows = Vec::new();
    for (pooling, trained, shuffled) in [
        ("GAP", Pooling::Gap(&m.ca.backbone), Pooling::Gap(&random.backbone)),
        ("CA", Pooling::Ca(&m.ca), Pooling::Ca(&random)),
    ] {
        for &method in methods.iter().filter(|m| m.applies_to(pooling == "CA")) {
            let a = maps(method, &s.metrics.cam, &Subject::new(trained, norm), &x, &labels)?;
            let b = maps(method, &s.metrics.cam, &Subject::new(shuffled, norm), &x, &labels)?;
            rows.push(SanityRow {
                backbone: m.name.clone(),
                method: method.to_string(),
                pooling: pooling.into(),
                spearman: a.iter().zip(&b).map(|(a, b)| spearman(a, b)).collect(),
            });
        }
    }
    Ok(rows)
}

/// The sanity table `<name>.{csv,parquet,md}`.
pub fn write(rows: &[SanityRow], name: &str, dir: &Path) -> Result<()> {
    let iv: Vec<_> = rows.iter().map(|r| mean_interval(&r.spearman, 2000, 0.95, 0)).collect();
    let frame = df!(
        "backbone" => rows.iter().map(|r| r.backbone.clone()).collect::<Vec<_>>(),
        "method" => rows.iter().map(|r| r.method.clone()).collect::<Vec<_>>(),
        "pooling" => rows.iter().map(|r| r.pooling.clone()).collect::<Vec<_>>(),
        "spearman" => iv.iter().map(|i| i.mean).collect::<Vec<_>>(),
        "low" => iv.iter().map(|i| i.low).collect::<Vec<_>>(),
        "high" => iv.iter().map(|i| i.high).collect::<Vec<_>>(),
        "verdict" => iv.iter().map(|i| if i.mean < PASS_BELOW { "passes" } else { "FAILS: maps ignore the weights" }).collect::<Vec<_>>(),
    )?;
    let mut table = Table::new(name, "Sanity check: maps after randomising the last stage and the classifier", frame)
        .note(format!(
            "Spearman rank correlation between each image's upsampled map from the trained model and from the same model with \
             layer 4 and the classifier re-initialised (the stream kept); {IMAGES} test scenes; 95% bootstrap interval."
        ))
        .note(format!("A method passes when the mean correlation is below {PASS_BELOW}: its maps depend on what the network learned (Adebayo et al. 2018)."));
    table.decimals = 3;
    table.write(dir)?;
    Ok(())
}
