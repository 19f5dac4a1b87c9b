//! The model-randomisation sanity check (Adebayo et al. 2018, beyond the paper): re-initialise the
//! classifier and the last stage, explain the same images again, and measure how much each map
//! changed by Spearman's rank correlation with the trained model's map. A method whose maps barely
//! change (correlation near 1) shows the image, not what the network learned: it fails.

use anyhow::Result;
use candle_core::Device;
use castream_backbones::Model;
use castream_cam::{Method, Pooling, PoolingKind, Subject};
use castream_data::Normalisation;
use castream_metrics::sanity::spearman;
use castream_stream::CaModel;

use crate::saliency::maps;
use crate::shard::PerImageValues;
use crate::Evaluation;
use serde::{Deserialize, Serialize};

/// Images explained by both models (Score-CAM dominates the cost: 2 x K forwards per image).
pub const IMAGES: usize = 32;
/// A method passes when its mean rank correlation after randomisation is below this.
pub const PASS_BELOW: f64 = 0.5;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
fn randomise(m: &CaModel, seed: u64, device: &Device) -> Result<CaModel> {
    let fresh = Model::new(m.backbone.config.clone(), seed, device)?;
    for ((name, var), (_, trained)) in fresh.named_vars().iter().zip(m.backbone.named_vars()) {
        if !randomised(name) {
            var.set(trained.as_tensor())?;
        }
    }
    let ca = CaModel::new(fresh, m.stream.config(), seed)?;
    for ((_, var), (_, trained)) in ca.stream.named_vars().iter().zip(m.stream.named_vars()) {
        var.set(trained.as_tensor())?;
    }
    Ok(ca)
}

impl Evaluation<'_> {
    /// Rank correlations of every method's maps, trained vs randomised (seeded by the
    /// evaluation's seed), for the GAP network and the CA model `m` of backbone `name` (those of
    /// them in `poolings`), on the first [`IMAGES`] images of the set, with the protocol's method
    /// options. `weights` identifies the models in the cell's identity.
    pub fn sanity(
        &self,
        name: &str,
        m: &CaModel,
        norm: Normalisation,
        methods: &[Method],
        poolings: &[PoolingKind],
        weights: &[String],
    ) -> Result<Vec<SanityRow>> {
        let ids: Vec<usize> = (0..IMAGES.min(self.set.len())).collect();
        let images = serde_json::value::RawValue::from_string(self.set.identity())?;
        let options = &self.protocol.cam;
        let inputs = ("sanity", weights, methods, poolings, options, self.seed, images);
        // One batch: the whole check is one shard's part.
        let compute = |ids: &[usize]| -> Result<Rows> {
            let (x, y) = self.set.batch(ids, &norm, &self.device)?;
            let labels: Vec<u32> = y.to_vec1()?;
            let random = randomise(m, self.seed.wrapping_add(1), &self.device)?;
            let mut rows = Vec::new();
            let pairs =
                [(Pooling::Gap(&m.backbone), Pooling::Gap(&random.backbone)), (Pooling::Ca(m), Pooling::Ca(&random))];
            for (trained, shuffled) in pairs.into_iter().filter(|(p, _)| poolings.contains(&p.kind())) {
                for &method in methods.iter().filter(|m| m.applies_to(trained.kind())) {
                    let a = maps(method, options, &Subject::of(trained, norm), &x, &labels)?;
                    let b = maps(method, options, &Subject::of(shuffled, norm), &x, &labels)?;
                    rows.push(SanityRow {
                        backbone: name.to_string(),
                        method: method.to_string(),
                        pooling: trained.kind().label().into(),
                        spearman: a.iter().zip(&b).map(|(a, b)| spearman(a, b)).collect(),
                    });
                }
            }
            Ok(Rows(rows))
        };
        Ok(self.sharding.cell(&format!("{name}: sanity check"), &inputs, &ids, ids.len(), compute)?.0)
    }
}

/// The rows of one sanity check, as a shard's part.
#[derive(Default, Serialize, Deserialize)]
struct Rows(Vec<SanityRow>);

impl PerImageValues for Rows {
    fn columns(&mut self) -> Vec<(String, &mut Vec<f64>)> {
        self.0.iter_mut().map(|r| (format!("{} {} {}", r.backbone, r.method, r.pooling), &mut r.spearman)).collect()
    }
}
