//! Saliency overlays as PNG files: an image drawn pixel by pixel at a scale, with an optional jet
//! colour bar labelled 0 and 1.

use std::path::Path;

use anyhow::{anyhow, Result};
use castream_cam::overlay;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::charts::{register_font, write_png, FONT};
use crate::grid::draw_pixels;

/// Width of the colour bar strip (gap, bar and labels) added to the right of an overlay.
pub const COLOUR_BAR_WIDTH: usize = 40;
const BAR_GAP: i32 = 6;
const BAR_W: i32 = 12;

/// Draws the CHW image `rgb` (values in [0, 1], `side x side`) at `scale` screen pixels per pixel
/// to a PNG, with a vertical jet colour bar labelled 0 (bottom) and 1 (top) on the right when
/// `colour_bar` is set: `side * scale (+ COLOUR_BAR_WIDTH) x side * scale` pixels.
pub fn write_overlay(path: &Path, rgb: &[f32], side: usize, scale: usize, colour_bar: bool) -> Result<()> {
    register_font();
    let n = side * scale;
    let width = n + if colour_bar { COLOUR_BAR_WIDTH } else { 0 };
    write_png(path, (width as u32, n as u32), |root| {
        let err = |e| anyhow!("drawing {}: {e:?}", path.display());
        root.fill(&WHITE).map_err(err)?;
        let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        draw_pixels(&root, rgb, side, scale, 0, 0).map_err(err)?;
        if colour_bar {
            let (x0, h) = (n as i32 + BAR_GAP, n as i32);
            for y in 0..h {
                let [r, g, b] = overlay::jet(1.0 - y as f32 / (h - 1).max(1) as f32);
                root.draw(&Rectangle::new(
                    [(x0, y), (x0 + BAR_W, y + 1)],
                    RGBColor(byte(r), byte(g), byte(b)).filled(),
                ))
                .map_err(err)?;
            }
            let label = |text: &str, y: i32, v: VPos| {
                Text::new(
                    text.to_string(),
                    (x0 + BAR_W + 4, y),
                    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, v)),
                )
            };
            root.draw(&label("1", 0, VPos::Top)).map_err(err)?;
            root.draw(&label("0", h - 1, VPos::Bottom)).map_err(err)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_bar_runs_from_dark_red_at_the_top_to_dark_blue_at_the_bottom() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.png");
        let side = 8;
        write_overlay(&path, &vec![1.0; 3 * side * side], side, 4, true).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32 + COLOUR_BAR_WIDTH as u32, 32));
        assert_eq!(img.get_pixel(5, 5).0, [255, 255, 255], "image pixel");
        let bar_x = 32 + BAR_GAP as u32 + 2;
        assert_eq!(img.get_pixel(bar_x, 0).0, [128, 0, 0], "jet(1) at the top");
        assert_eq!(img.get_pixel(bar_x, 31).0, [0, 0, 128], "jet(0) at the bottom");
    }
}
