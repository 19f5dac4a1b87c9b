//! `figure3`: the identity of METHOD.md §1 on real features. The attention of a CA block,
//! `softmax(F q / sqrt(d))`, computed twice: by the stream's cross attention, and as a CAM, the
//! channel maps `A^k` of `F` weighted by the query's entries `q_k` and summed, then a softmax over
//! positions. The two must agree to float rounding; the figure prints the largest difference.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use castream_report::columns;
use castream_stream::minmax_normalise;

use super::{first_backbone, RunContext};
use castream_report::colourmap::ColourMap;
use castream_report::grid::{Grid, Tile};
use castream_report::tables::Table;

const DEFAULT_IMAGES: usize = 6;

/// The class-agnostic CAM of `f` `(d, h, w)` with channel weights `q` `(d,)`, turned into a
/// distribution over positions: an explicit loop over channels, independent of the stream's
/// matrix products.
fn cam_softmax(f: &[f32], q: &[f32], positions: usize) -> Vec<f32> {
    let d = q.len();
    let mut s = vec![0f64; positions];
    for (k, &qk) in q.iter().enumerate() {
        for (p, acc) in s.iter_mut().enumerate() {
            *acc += qk as f64 * f[k * positions + p] as f64;
        }
    }
    let scale = 1.0 / (d as f64).sqrt();
    let max = s.iter().map(|v| v * scale).fold(f64::MIN, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v * scale - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| (v / total) as f32).collect()
}

/// An `h x w` map bilinearly upsampled to `side x side` and min-max normalised, as drawn.
fn upsampled(map: &[f32], h: usize, w: usize, side: usize, device: &Device) -> Result<Vec<f32>> {
    let t = Tensor::from_slice(map, (1, 1, h, w), device)?;
    let up = castream_kernels::upsample_bilinear2d(&t, side, side, Default::default())?.squeeze(1)?;
    Ok(minmax_normalise(&up)?.flatten_all()?.to_vec1()?)
}

/// Nearest-neighbour enlargement of an `h x w` map to `side x side`, so single positions stay visible.
fn nearest(map: &[f32], h: usize, w: usize, side: usize) -> Vec<f32> {
    (0..side * side).map(|i| map[(i / side) * h / side * w + (i % side) * w / side]).collect()
}

pub fn run(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let (set, ids) = super::test_images(ctx, DEFAULT_IMAGES)?;
    let backbone = first_backbone(s)?;
    let m = ctx.models(backbone, &s.stream, &mut None)?;
    let name = &m.name;
    let (x, _) = set.batch(&ids, &m.meta.normalisation, &ctx.device)?;
    let features = m.ca.backbone.net.stages(&x, false)?;
    let out = m.ca.stream.forward(&features)?;
    let last = out.attention.len() - 1;
    let (tap, attention, query) = (out.attention[last].tap, &out.attention[last].weights, &out.queries[last]);
    if m.ca.stream.config().heads != 1 {
        bail!("figure3 draws the single-head identity; set [{}.stream.config] heads = 1", ctx.profile);
    }
    let (_, d, h, w) = features[tap].dims4()?;
    let side = set.side();
    let what = if ctx.profile == crate::spec::Profile::Quick { "test scene" } else { "image" };
    let mut rows = Vec::new();
    let (mut max_diff, mut diffs) = (0f32, Vec::new());
    for (b, &i) in ids.iter().enumerate() {
        let f: Vec<f32> = features[tap].get(b)?.flatten_all()?.to_vec1()?;
        let q: Vec<f32> = if query.rank() == 1 { query.to_vec1()? } else { query.get(b)?.to_vec1()? };
        let via_attention: Vec<f32> = attention.get(b)?.flatten_all()?.to_vec1()?;
        let via_cam = cam_softmax(&f, &q, h * w);
        let diff = via_attention.iter().zip(&via_cam).map(|(a, c)| (a - c).abs()).fold(0f32, f32::max);
        max_diff = max_diff.max(diff);
        let abs_diff: Vec<f32> =
            via_attention.iter().zip(&via_cam).map(|(a, c)| (a - c).abs() / diff.max(1e-30)).collect();
        diffs.push(diff as f64);
        rows.push((
            format!("{what} #{i} ({})", set.class_name(set.label(i))),
            vec![
                Tile::image(set.rgb(i)?, side, "input".into(), Vec::new()),
                Tile::heatmap(&upsampled(&via_attention, h, w, side, &ctx.device)?, side, "cross attention".into()),
                Tile::heatmap(&upsampled(&via_cam, h, w, side, &ctx.device)?, side, "CAM, weights q".into()),
                Tile::heatmap(&nearest(&abs_diff, h, w, side), side, format!("|difference|, max {diff:.1e}")),
            ],
        ));
    }
    Grid {
        title: format!("{name} CA-{tap} ({d}x{h}x{w}): softmax(F q/√d) two ways, max |diff| {max_diff:.1e}"),
        columns: 4,
        scale: 3,
        rows,
        colour_map: ColourMap::default(),
    }
    .write_png(&ctx.out.join("figure3.png"))?;
    let frame = columns!("image" => ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), "max_abs_difference" => diffs)?;
    let mut table = Table::new("figure3", "Cross attention vs CAM with class-agnostic weights", frame).note(format!(
        "{name} {} backbone with its trained stream; block CA-{tap}; float32 attention vs float64 CAM loop.",
        ctx.profile
    ));
    table.decimals = 10;
    table.write(ctx.out)?;
    Ok(())
}
