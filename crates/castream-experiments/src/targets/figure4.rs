//! `figure4`: raw attention on classes the network never saw. The quick CA model, trained on
//! Fashion-MNIST scenes, looks at MNIST digit scenes built the same way; each block's attention
//! (CA-0 … CA-4) and their product are drawn over the image, the digit's box drawn thin.

use anyhow::Result;
use castream_cam::{Method, MethodOptions, Pooling, Subject};
use castream_metrics::localisation::energy_in_box;
use castream_report::columns;
use castream_stream::AttentionSelect;

use super::{first_backbone, RunContext};
use castream_eval::saliency::{image_list_sha256, maps};
use castream_zoo::train_stream::subset;

use crate::spec::Profile;
use castream_report::colourmap::ColourMap;
use castream_report::grid::{Grid, Tile};
use castream_report::tables::Table;

const DEFAULT_IMAGES: usize = 8;

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let unseen = ctx.unseen_images()?;
    let n = super::image_count(ctx, DEFAULT_IMAGES, unseen.len(), &unseen.describe())?;
    let backbone = first_backbone(s)?;
    let m = ctx.models(backbone, &s.stream, &mut None)?;
    let name = &m.name;
    let ids: Vec<usize> = match ctx.profile {
        Profile::Quick => (0..n).collect(),
        Profile::Paper => subset(unseen.len(), Some(n), s.seed)?,
    };
    ctx.record.image_list_sha256 = Some(image_list_sha256(&unseen.tag(), &ids));
    let norm = m.meta.normalisation;
    let (x, _) = unseen.batch(&ids, &norm, &ctx.device)?;
    let subject = Subject::of(Pooling::Ca(&m.ca), norm);
    let unused = vec![0; ids.len()];
    let mut columns = Vec::new();
    let selections = m.ca.stream.config().taps.iter().map(|&t| (format!("CA-{t}"), AttentionSelect::Block(t)));
    for (caption, attention) in selections.chain([("product".to_string(), AttentionSelect::Product)]) {
        let options = MethodOptions { attention, ..MethodOptions::default() };
        columns.push((caption, maps(Method::RawAttention, &options, &subject, &x, &unused)?));
    }
    let predicted = subject.predict(&x)?;
    // The model's own class names (its checkpoint's), numbers where it has none (hub models).
    let says = |p: u32| m.meta.classes.get(p as usize).cloned().unwrap_or_else(|| format!("class {p}"));
    let side = unseen.side();
    let quick = ctx.profile == Profile::Quick;
    let (mut image, mut digit, mut prediction, mut energy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for (b, &i) in ids.iter().enumerate() {
        let rgb = unseen.rgb(i)?;
        let (label, bbox) = (unseen.label(i), unseen.bbox(i));
        let boxes: Vec<_> = bbox.into_iter().collect();
        let mut tiles = vec![Tile::image(rgb.clone(), side, "input".into(), boxes.clone())];
        for (caption, maps) in &columns {
            tiles.push(Tile { boxes: boxes.clone(), ..Tile::overlay(&rgb, &maps[b], side, caption.clone()) });
        }
        rows.push((
            if quick {
                format!(
                    "MNIST scene #{i}: digit {label} (the model, knowing only clothes, says {})",
                    says(predicted[b])
                )
            } else {
                format!("image #{i}: {} (the model says {})", unseen.class_name(label), says(predicted[b]))
            },
            tiles,
        ));
        image.push(i as u32);
        digit.push(label as u32);
        prediction.push(says(predicted[b]));
        let last = &columns[columns.len() - 2].1[b];
        energy.push(bbox.map_or(f64::NAN, |bbox| 100.0 * energy_in_box(last, side, &bbox)));
    }
    Grid {
        title: if quick {
            format!("{name} CA model: raw attention on digit scenes (classes never seen in training)")
        } else {
            format!("{name} CA model: raw attention on {} (classes never seen in training)", unseen.describe())
        },
        columns: 1 + columns.len(),
        scale: 3,
        rows,
        colour_map: ColourMap::default(),
    }
    .write_png(&ctx.out.join("figure4.png"))?;
    let box_share = |bbox_area: f64| 100.0 * bbox_area / (side * side) as f64;
    let area: Vec<f64> =
        ids.iter().map(|&i| unseen.bbox(i).map_or(f64::NAN, |b| box_share((b.width() * b.height()) as f64))).collect();
    let frame = columns!(
        "image" => image, if quick { "digit" } else { "label" } => digit, "prediction" => prediction,
        "last_block_energy_in_box" => energy, "box_area" => area,
    )?;
    Table::new("figure4", "Raw attention on unseen classes", frame)
        .note(if quick {
            format!("{name} quick backbone and its stream, trained on Fashion-MNIST scenes only; MNIST test digits pasted into the same scene generator.")
        } else {
            format!("{name} and its stream, trained on ImageNet; {} images of classes it never saw (box columns empty without boxes).", unseen.describe())
        })
        .note("last_block_energy_in_box: % of the last block's upsampled attention mass inside the digit's box; box_area: % of the image the box covers (what a uniform map would score).")
        .write(ctx.out)?;
    Ok(())
}
