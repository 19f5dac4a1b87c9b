//! The shipped quick backbones' learning curves (part of `data-card`): one row per backbone and
//! epoch from `checkpoints/quick/manifest.json`, and a chart of validation accuracy and training
//! loss per epoch, so that a reader sees whether the networks the quick tables explain had
//! plateaued.

use anyhow::{bail, Result};
use castream_report::charts::Chart;
use castream_report::columns;
use castream_report::curves::{Curves, Panel};
use castream_report::tables::Table;
use castream_zoo::quick::{load_manifest, Manifest};

use super::RunContext;

pub fn write(ctx: &mut RunContext) -> Result<()> {
    let manifest = load_manifest(ctx.root)?;
    if manifest.values().all(|e| e.history.is_empty()) {
        bail!(
            "{}: no trained backbone with a learning curve; Fix: run `cargo xtask train-backbones`",
            ctx.root.join("checkpoints/quick/manifest.json").display()
        );
    }
    for (name, entry) in &manifest {
        ctx.record.seeds.insert(format!("backbone.{name}.init_seed"), entry.recipe.init_seed);
    }
    let mut table = table(&manifest)?;
    table.decimals = 4;
    for (name, e) in &manifest {
        table = table.note(format!(
            "{name}: {} epochs, test accuracy {:.2}% on {} scenes, weights SHA-256 {}, trained at commit {} (`{}`).",
            e.history.len(),
            100.0 * e.test_accuracy,
            e.test_images,
            &e.sha256[..12],
            &e.commit[..e.commit.len().min(7)],
            e.command
        ));
    }
    table.write(ctx.out)?;
    let curve = |f: fn(&castream_backbones::train::EpochReport) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        manifest
            .iter()
            .map(|(name, e)| (name.clone(), e.history.iter().map(|h| ((h.epoch + 1) as f64, f(h))).collect()))
            .collect()
    };
    let panels = [
        Panel {
            title: "validation accuracy".into(),
            y_label: "%".into(),
            series: curve(|h| 100.0 * h.val_accuracy),
            legend_top: false,
        },
        Panel {
            title: "training loss".into(),
            y_label: "cross-entropy".into(),
            series: curve(|h| h.train_loss),
            legend_top: true,
        },
    ];
    Curves { title: "Quick backbones: learning curves", x_label: "epoch", panels: &panels }
        .write(&ctx.out.join("backbone_curves"))
}

/// One row per backbone and epoch.
fn table(manifest: &Manifest) -> Result<Table> {
    let rows = || manifest.iter().flat_map(|(name, e)| e.history.iter().map(move |h| (name, h)));
    let frame = columns!(
        "backbone" => rows().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "epoch" => rows().map(|(_, h)| (h.epoch + 1) as u32).collect::<Vec<_>>(),
        "train_loss" => rows().map(|(_, h)| h.train_loss).collect::<Vec<_>>(),
        "train_accuracy" => rows().map(|(_, h)| h.train_accuracy).collect::<Vec<_>>(),
        "val_accuracy" => rows().map(|(_, h)| h.val_accuracy).collect::<Vec<_>>(),
        "lr" => rows().map(|(_, h)| h.lr).collect::<Vec<_>>(),
        "seconds" => rows().map(|(_, h)| h.seconds).collect::<Vec<_>>(),
    )?;
    Ok(Table::new("backbone_curves", "Quick backbones: learning curves (checkpoints/quick/manifest.json)", frame))
}
