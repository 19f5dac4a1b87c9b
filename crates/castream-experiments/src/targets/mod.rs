//! The reproducible targets. Each spec names one; a target reads its settings from the
//! [`RunContext`] and writes its tables and figures into the run's staging directory.

mod data_card;
mod figure1;
mod figure2;
mod figure3;
mod figure4;
mod interpretability_table;
mod table1;
mod table4;
mod table5;
mod table6;

use std::path::Path;

use anyhow::Result;

use crate::record::RunRecord;
use crate::spec::{Profile, Settings, Spec, Target};

pub struct RunContext<'a> {
    pub spec: &'a Spec,
    pub profile: Profile,
    pub settings: &'a Settings,
    /// The staging directory of this run's outputs.
    pub out: &'a Path,
    /// The repository root: shipped checkpoints under `checkpoints/`, caches under `target/`.
    pub root: &'a Path,
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
        Target::DataCard => data_card::run(ctx),
        Target::Table1 => table1::run(ctx),
        Target::Table2 => interpretability_table::run(ctx, interpretability_table::Family::Resnet),
        Target::Table3 => interpretability_table::run(ctx, interpretability_table::Family::Convnext),
        Target::Table4 => table4::run(ctx),
        Target::Table5 => table5::run(ctx),
        Target::Table6 => table6::run(ctx),
        Target::Figure1 => figure1::run(ctx),
        Target::Figure2 => figure2::run(ctx),
        Target::Figure3 => figure3::run(ctx),
        Target::Figure4 => figure4::run(ctx),
    }
}
