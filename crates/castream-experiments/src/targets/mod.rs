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

/// A catalogue entry whose building blocks are not implemented yet. Reported, never faked.
#[derive(Debug, thiserror::Error)]
#[error("{target}: not yet available: needs {needs}")]
pub struct NotYetAvailable {
    pub target: String,
    pub needs: &'static str,
}

/// What a target still lacks, or `None` when it can run.
pub fn missing_parts(target: Target) -> Option<&'static str> {
    use Target::*;
    match target {
        DataCard | Table1 | Table2 | Table3 | Table4 | Figure1 | Figure2 | Figure3 | Figure4 => None,
        Table5 | Table6 => Some("the interpretability metrics"),
    }
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    match ctx.spec.target {
        Target::DataCard => data_card::run(ctx),
        Target::Table1 => table1::run(ctx),
        Target::Table2 => interpretability_table::run(ctx, interpretability_table::Family::Resnet),
        Target::Table3 => interpretability_table::run(ctx, interpretability_table::Family::Convnext),
        Target::Table4 => table4::run(ctx),
        Target::Figure1 => figure1::run(ctx),
        Target::Figure2 => figure2::run(ctx),
        Target::Figure3 => figure3::run(ctx),
        Target::Figure4 => figure4::run(ctx),
        target => Err(NotYetAvailable {
            target: ctx.spec.name.clone(),
            needs: missing_parts(target).expect("every target without a module has missing parts"),
        }
        .into()),
    }
}
