//! The sanity table: rank correlations of maps before and after randomising the last stage and
//! the classifier, with intervals and a verdict per method.

use std::path::Path;

use anyhow::Result;
use castream_eval::sanity::{SanityRow, IMAGES, PASS_BELOW};
use castream_metrics::bootstrap::mean_interval;
use polars::prelude::*;

use crate::tables::Table;

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
