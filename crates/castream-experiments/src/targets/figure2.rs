//! `figure2`: the saliency grid. One row per test scene; columns: the input, the CA model's raw
//! attention, then Grad-CAM, Grad-CAM++ and Score-CAM of the GAP network and of the CA model, each
//! a jet overlay explaining the ground-truth class, the object's box drawn thin on every tile.

use anyhow::Result;
use castream_cam::{Method, MethodOptions, Pooling, Subject};
use castream_report::columns;

use super::{first_backbone, RunContext};
use crate::spec::Profile;
use castream_eval::saliency::maps;
use castream_report::colourmap::ColourMap;
use castream_report::grid::{Grid, Tile};
use castream_report::tables::Table;

const DEFAULT_IMAGES: usize = 8;
const CAMS: [Method; 3] = [Method::GradCam, Method::GradCamPlusPlus, Method::ScoreCam];

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let (set, ids) = super::test_images(ctx, DEFAULT_IMAGES)?;
    let backbone = first_backbone(s)?;
    let m = ctx.models(backbone, &s.stream, &mut None)?;
    let name = &m.name;
    let norm = m.meta.normalisation;
    let (x, y) = set.batch(&ids, &norm, &ctx.device)?;
    let labels: Vec<u32> = y.to_vec1()?;
    let (gap, ca) = (Subject::of(Pooling::Gap(&m.ca.backbone), norm), Subject::of(Pooling::Ca(&m.ca), norm));
    let options = MethodOptions::default();
    let mut columns = vec![("raw attention".to_string(), maps(Method::RawAttention, &options, &ca, &x, &labels)?)];
    for method in CAMS {
        for (pooling, subject) in [("GAP", &gap), ("CA", &ca)] {
            columns.push((format!("{method} {pooling}"), maps(method, &options, subject, &x, &labels)?));
        }
    }
    let (gap_pred, ca_pred) = (gap.predict(&x)?, ca.predict(&x)?);
    let class = |c: u32| set.class_name(c as usize);
    let side = set.side();
    let what = if ctx.profile == Profile::Quick { "test scene" } else { "image" };
    let rows = ids
        .iter()
        .enumerate()
        .map(|(b, &i)| {
            let image = set.rgb(i)?;
            let boxes: Vec<_> = set.bbox(i).into_iter().collect();
            let mut tiles = vec![Tile::image(image.clone(), side, "input".into(), boxes.clone())];
            for (caption, maps) in &columns {
                tiles.push(Tile { boxes: boxes.clone(), ..Tile::overlay(&image, &maps[b], side, caption.clone()) });
            }
            let header = format!(
                "{what} #{i}: {} (GAP predicts {}, CA predicts {})",
                class(labels[b]),
                class(gap_pred[b]),
                class(ca_pred[b])
            );
            Ok((header, tiles))
        })
        .collect::<Result<_>>()?;
    let colour_map = ColourMap::default();
    Grid {
        title: format!(
            "{name}: saliency of the ground-truth class, GAP vs CA-Stream (F_4, {} overlays, boxes = ground truth)",
            colour_map.key
        ),
        columns: 2 + 2 * CAMS.len(),
        scale: 3,
        rows,
        colour_map,
    }
    .write_png(&ctx.out.join("figure2.png"))?;
    let name_of = |v: &[u32]| v.iter().map(|&c| class(c)).collect::<Vec<_>>();
    let frame = columns!(
        "image" => ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        "label" => name_of(&labels),
        "gap_prediction" => name_of(&gap_pred),
        "ca_prediction" => name_of(&ca_pred),
    )?;
    Table::new("figure2", if ctx.profile == Profile::Quick { "Scenes of the saliency grid" } else { "Images of the saliency grid" }, frame)
        .note(format!("{name} {} backbone and its trained stream; maps of the ground-truth class at F_4, ReLU, min-max, bilinear upsampling.", ctx.profile))
        .note("Raw attention: the last CA block's softmax attention (class-agnostic). Score-CAM scores every channel, 128 masked images per forward.")
        .write(ctx.out)?;
    Ok(())
}
