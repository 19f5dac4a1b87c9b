//! `figure4`: raw attention on classes the network never saw. The quick CA model, trained on
//! Fashion-MNIST scenes, looks at MNIST digit scenes built the same way; each block's attention
//! (CA-0 … CA-4) and their product are drawn over the image, the digit's box drawn thin.

use anyhow::Result;
use castream_cam::{Method, MethodOptions, Pooling, Subject};
use castream_data::discovery::{DatasetName, Locator};
use castream_data::labelled::Split;
use castream_data::scenes::SceneSet;
use castream_metrics::localisation::energy_in_box;
use castream_report::columns;
use castream_stream::AttentionSelect;

use super::{first_backbone, RunContext};
use castream_eval::saliency::{image_list_sha256, maps};
use castream_report::grid::{Grid, Tile};
use castream_report::tables::Table;

const DEFAULT_IMAGES: usize = 8;

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let data = ctx.quick_data()?;
    let located = Locator::from_environment(DatasetName::Mnist).locate(DatasetName::Mnist, &s.data.mnist)?;
    let digits = SceneSet::new(located.load(Split::Test)?, DatasetName::Mnist, Split::Test, s.scenes.clone())?;
    let n = super::image_count(ctx, DEFAULT_IMAGES, digits.len(), "MNIST test")?;
    let backbone = first_backbone(s)?;
    let m = ctx.models(backbone, &s.stream, &data, &mut None)?;
    let name = &m.name;
    let ids: Vec<usize> = (0..n).collect();
    ctx.record.image_list_sha256 = Some(image_list_sha256("mnist/test", &ids));
    let norm = m.meta.normalisation;
    let (x, _) = digits.batch(&ids, &norm, &ctx.device)?;
    let subject = Subject::of(Pooling::Ca(&m.ca), norm);
    let unused = vec![0; ids.len()];
    let mut columns = Vec::new();
    let selections = m.ca.stream.config().taps.iter().map(|&t| (format!("CA-{t}"), AttentionSelect::Block(t)));
    for (caption, attention) in selections.chain([("product".to_string(), AttentionSelect::Product)]) {
        let options = MethodOptions { attention, ..MethodOptions::default() };
        columns.push((caption, maps(Method::RawAttention, &options, &subject, &x, &unused)?));
    }
    let predicted = subject.predict(&x)?;
    let fashion = data.test.dataset.class_names();
    let side = digits.config.canvas;
    let (mut image, mut digit, mut prediction, mut energy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for (b, &i) in ids.iter().enumerate() {
        let scene = digits.scene(i);
        let boxes: Vec<_> = scene.bbox.into_iter().collect();
        let mut tiles = vec![Tile { rgb: scene.image.clone(), side, caption: "input".into(), boxes: boxes.clone() }];
        for (caption, maps) in &columns {
            tiles.push(Tile { boxes: boxes.clone(), ..Tile::overlay(&scene.image, &maps[b], side, caption.clone()) });
        }
        rows.push((
            format!(
                "MNIST scene #{i}: digit {} (the model, knowing only clothes, says {})",
                scene.label, fashion[predicted[b] as usize]
            ),
            tiles,
        ));
        image.push(i as u32);
        digit.push(scene.label as u32);
        prediction.push(fashion[predicted[b] as usize].to_string());
        let last = &columns[columns.len() - 2].1[b];
        energy.push(scene.bbox.map_or(f64::NAN, |bbox| 100.0 * energy_in_box(last, side, &bbox)));
    }
    Grid {
        title: format!("{name} CA model: raw attention on digit scenes (classes never seen in training)"),
        columns: 1 + columns.len(),
        scale: 3,
        rows,
    }
    .write_png(&ctx.out.join("figure4.png"))?;
    let box_share = |bbox_area: f64| 100.0 * bbox_area / (side * side) as f64;
    let area: Vec<f64> = ids
        .iter()
        .map(|&i| digits.scene(i).bbox.map_or(f64::NAN, |b| box_share((b.width() * b.height()) as f64)))
        .collect();
    let frame = columns!(
        "image" => image, "digit" => digit, "prediction" => prediction,
        "last_block_energy_in_box" => energy, "box_area" => area,
    )?;
    Table::new("figure4", "Raw attention on unseen classes", frame)
        .note(format!("{name} quick backbone and its stream, trained on Fashion-MNIST scenes only; MNIST test digits pasted into the same scene generator."))
        .note("last_block_energy_in_box: % of the last block's upsampled attention mass inside the digit's box; box_area: % of the image the box covers (what a uniform map would score).")
        .write(ctx.out)?;
    Ok(())
}
