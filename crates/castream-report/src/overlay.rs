//! Saliency overlays as PNG files: an image drawn pixel by pixel at a scale, with an optional jet
//! colour bar labelled 0 and 1.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::charts::{register_font, write_png, FONT};
use crate::colourmap::ColourMap;
use crate::grid::draw_pixels;

/// Width of the colour bar strip (gap, bar and labels) added to the right of an overlay or grid.
pub const COLOUR_BAR_WIDTH: usize = 46;
const BAR_GAP: i32 = 6;
const BAR_W: i32 = 12;

/// Draws a vertical colour bar of `colour_map` in the strip whose top-left corner is `(x, y)`,
/// `h` pixels tall: 1 at the top, 0 at the bottom, labelled 1 and 0 (and 0.5 when tall enough).
pub(crate) fn draw_colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    colour_map: ColourMap,
    x: i32,
    y: i32,
    h: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let x0 = x + BAR_GAP;
    for r in 0..h {
        let [red, green, blue] = colour_map.rgb8(1.0 - r as f32 / (h - 1).max(1) as f32);
        root.draw(&Rectangle::new([(x0, y + r), (x0 + BAR_W, y + r + 1)], RGBColor(red, green, blue).filled()))?;
    }
    let label = |text: &str, y: i32, v: VPos| {
        Text::new(
            text.to_string(),
            (x0 + BAR_W + 4, y),
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, v)),
        )
    };
    root.draw(&label("1", y, VPos::Top))?;
    if h >= 60 {
        root.draw(&label("0.5", y + h / 2, VPos::Center))?;
    }
    root.draw(&label("0", y + h - 1, VPos::Bottom))
}

/// Draws the CHW image `rgb` (values in [0, 1], `side x side`) at `scale` screen pixels per pixel
/// to a PNG, with a vertical colour bar of `colour_bar`'s map labelled 0 (bottom) and 1 (top) on the
/// right when one is given: `side * scale (+ COLOUR_BAR_WIDTH) x side * scale` pixels.
pub fn write_overlay(path: &Path, rgb: &[f32], side: usize, scale: usize, colour_bar: Option<ColourMap>) -> Result<()> {
    register_font();
    let n = side * scale;
    let width = n + if colour_bar.is_some() { COLOUR_BAR_WIDTH } else { 0 };
    write_png(path, (width as u32, n as u32), |root| {
        let err = |e| anyhow!("drawing {}: {e:?}", path.display());
        root.fill(&WHITE).map_err(err)?;
        draw_pixels(root, rgb, side, scale, 0, 0).map_err(err)?;
        if let Some(colour_map) = colour_bar {
            draw_colour_bar(root, colour_map, n as i32, 0, n as i32).map_err(err)?;
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
        write_overlay(&path, &vec![1.0; 3 * side * side], side, 4, Some(ColourMap::JET)).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32 + COLOUR_BAR_WIDTH as u32, 32));
        assert_eq!(img.get_pixel(5, 5).0, [255, 255, 255], "image pixel");
        let bar_x = 32 + BAR_GAP as u32 + 2;
        assert_eq!(img.get_pixel(bar_x, 0).0, [128, 0, 0], "jet(1) at the top");
        assert_eq!(img.get_pixel(bar_x, 31).0, [0, 0, 128], "jet(0) at the bottom");
    }
}
