//! The runnable targets. A spec names one: the `interpretability` kind, declared entirely by the
//! spec's keys, or one of the catalogue's fixed targets. A target reads its settings from the
//! [`RunContext`] and writes its tables and figures into the run's staging directory.

mod data_card;
mod figure1;
mod figure2;
mod figure3;
mod figure4;
mod interpretability;
mod table1;
mod table4;

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;
use castream_data::scenes::SceneSet;
use castream_eval::saliency::image_list_sha256;
use castream_eval::Evaluation;
use castream_report::record::RunRecord;
use castream_zoo::ca::QuickData;
use castream_zoo::quick::is_shipped;
use castream_zoo::BackboneSpec;

use crate::spec::{Profile, Settings, Spec, Target};

pub struct RunContext<'a> {
    pub spec: &'a Spec,
    pub profile: Profile,
    pub settings: &'a Settings,
    /// The staging directory of this run's outputs.
    pub out: &'a Path,
    /// The repository root: shipped checkpoints under `checkpoints/`, caches under `target/`.
    pub root: &'a Path,
    /// The specs' folder (`paper-values.toml` lives there).
    pub experiments: &'a Path,
    pub device: Device,
    pub record: &'a mut RunRecord,
}

/// A target that cannot run yet because something it needs does not exist (e.g. a checkpoint
/// that is not shipped). Reported as pending by `reproduce all`, never faked.
#[derive(Debug, thiserror::Error)]
#[error("{target}: not yet available: needs {needs}")]
pub struct NotYetAvailable {
    pub target: String,
    pub needs: String,
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    match ctx.spec.target {
        Target::Interpretability => interpretability::run(ctx),
        Target::DataCard => data_card::run(ctx),
        Target::Table1 => table1::run(ctx),
        Target::Table4 => table4::run(ctx),
        Target::Figure1 => figure1::run(ctx),
        Target::Figure2 => figure2::run(ctx),
        Target::Figure3 => figure3::run(ctx),
        Target::Figure4 => figure4::run(ctx),
    }
}

impl RunContext<'_> {
    /// The cell evaluation of the scenes `ids` of `set` with the spec's batch size, seed and protocol.
    pub fn evaluation<'s>(&self, set: &'s SceneSet, ids: &'s [usize]) -> Evaluation<'s> {
        let s = self.settings;
        Evaluation {
            set,
            ids,
            batch_size: s.batch_size,
            protocol: s.protocol.protocol(),
            seed: s.seed,
            cache: self.root.join("target/castream/metrics"),
            device: self.device.clone(),
        }
    }

    /// The quick profile's scene sets from the spec's data location and scene settings.
    pub fn quick_data(&self) -> Result<QuickData> {
        QuickData::load(&self.settings.data.fashion_mnist, &self.settings.scenes)
    }
}

/// The spec's first backbone: the one the figures draw.
pub fn first_backbone(s: &Settings) -> Result<&BackboneSpec> {
    s.backbones
        .first()
        .ok_or_else(|| anyhow::anyhow!("backbones is empty; Fix: name one, e.g. backbones = [\"resnet18\"]"))
}

/// A shipped backbone the spec names that is not trained yet makes the target pending.
pub fn shipped_or_pending(ctx: &RunContext) -> Result<()> {
    for b in &ctx.settings.backbones {
        if let BackboneSpec::Shipped(name) = b {
            if !is_shipped(ctx.root, name)? {
                return Err(NotYetAvailable {
                    target: ctx.spec.name.clone(),
                    needs: format!(
                        "the quick `{name}` backbone, which is not shipped (docs/backbones.md); train it with `cargo xtask train-backbones`"
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
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
    let data = ctx.quick_data()?;
    let n = ctx.settings.images.unwrap_or(default).min(data.test.len());
    let ids: Vec<usize> = (0..n).collect();
    ctx.record.image_list_sha256 = Some(image_list_sha256("fashion-mnist/test", &ids));
    ctx.record.seeds.insert("bootstrap".into(), ctx.settings.seed);
    Ok((data, ids))
}
