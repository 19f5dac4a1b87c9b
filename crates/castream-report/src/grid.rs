//! Picture grids: tiles of RGB images, each with a caption and optional boxes, drawn to PNG.
//! Used by the dataset card now and by the saliency figures later.

use std::path::Path;

use anyhow::{anyhow, Result};
use castream_cam::overlay;
use castream_data::scenes::BBox;
use plotters::prelude::*;

use crate::charts::{register_font, write_png, FONT};

pub struct Tile {
    /// CHW, values in [0, 1], `side x side`.
    pub rgb: Vec<f32>,
    pub side: usize,
    pub caption: String,
    pub boxes: Vec<BBox>,
}

impl Tile {
    /// A `side x side` map with values in [0, 1] drawn with the jet colour map.
    pub fn heatmap(map: &[f32], side: usize, caption: String) -> Tile {
        Tile { rgb: overlay::heatmap(map), side, caption, boxes: Vec::new() }
    }

    /// The jet map of `map` blended on the CHW image `rgb` (both `side x side`).
    pub fn overlay(rgb: &[f32], map: &[f32], side: usize, caption: String) -> Tile {
        Tile { rgb: overlay::blend(rgb, map, 0.5), side, caption, boxes: Vec::new() }
    }
}

pub struct Grid {
    pub title: String,
    pub columns: usize,
    /// Each image pixel becomes `scale x scale` screen pixels.
    pub scale: usize,
    pub rows: Vec<(String, Vec<Tile>)>,
}

const CAPTION: usize = 18;
const PAD: usize = 6;
const TITLE: usize = 34;
const ROW_HEADER: usize = 24;
const BOX_COLOUR: RGBColor = RGBColor(255, 32, 32);

impl Grid {
    pub fn write_png(&self, path: &Path) -> Result<()> {
        register_font();
        let side = self.rows.iter().flat_map(|(_, t)| t).map(|t| t.side).max().unwrap_or(1);
        let cell_w = side * self.scale + PAD;
        let cell_h = side * self.scale + CAPTION + PAD;
        let lines: Vec<usize> = self.rows.iter().map(|(_, t)| t.len().div_ceil(self.columns).max(1)).collect();
        let width = PAD + self.columns * cell_w;
        let height = TITLE + lines.iter().map(|l| ROW_HEADER + l * cell_h).sum::<usize>() + PAD;
        write_png(path, (width as u32, height as u32), |root| {
            let err = |e| anyhow!("drawing {}: {e:?}", path.display());
            root.fill(&WHITE).map_err(err)?;
            root.draw(&Text::new(self.title.clone(), (PAD as i32, 8), (FONT, 20).into_font())).map_err(err)?;
            let mut y = TITLE;
            for ((header, tiles), n_lines) in self.rows.iter().zip(&lines) {
                root.draw(&Text::new(header.clone(), (PAD as i32, y as i32 + 4), (FONT, 15).into_font()))
                    .map_err(err)?;
                y += ROW_HEADER;
                for (k, tile) in tiles.iter().enumerate() {
                    let (cx, cy) = (PAD + (k % self.columns) * cell_w, y + (k / self.columns) * cell_h);
                    self.draw_tile(&root, tile, cx, cy).map_err(err)?;
                }
                y += n_lines * cell_h;
            }
            Ok(())
        })
    }

    fn draw_tile<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        tile: &Tile,
        cx: usize,
        cy: usize,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (s, n) = (self.scale, tile.side);
        draw_pixels(root, &tile.rgb, n, s, cx, cy)?;
        for b in &tile.boxes {
            let (x0, y0) = ((cx + b.x0 * s) as i32, (cy + b.y0 * s) as i32);
            let (x1, y1) = ((cx + b.x1 * s) as i32 - 1, (cy + b.y1 * s) as i32 - 1);
            root.draw(&Rectangle::new([(x0, y0), (x1, y1)], BOX_COLOUR.stroke_width(1)))?;
        }
        let caption_y = (cy + n * s + 2) as i32;
        root.draw(&Text::new(tile.caption.clone(), (cx as i32, caption_y), (FONT, 12).into_font()))
    }
}

/// Draws the CHW image `rgb` (values in [0, 1], `side x side`) with its top-left corner at
/// `(cx, cy)`, each pixel a `scale x scale` square.
pub(crate) fn draw_pixels<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    rgb: &[f32],
    side: usize,
    scale: usize,
    cx: usize,
    cy: usize,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let plane = side * side;
    let s = scale as i32;
    for py in 0..side {
        for px in 0..side {
            let v = |c: usize| (rgb[c * plane + py * side + px].clamp(0.0, 1.0) * 255.0).round() as u8;
            let (x, y) = ((cx + px * scale) as i32, (cy + py * scale) as i32);
            root.draw(&Rectangle::new([(x, y), (x + s, y + s)], RGBColor(v(0), v(1), v(2)).filled()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_land_where_expected_with_their_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let side = 8;
        let mut rgb = vec![0.0; 3 * side * side];
        rgb[..side * side].iter_mut().for_each(|v| *v = 1.0); // pure red image
        let tile = Tile { rgb, side, caption: "x".into(), boxes: vec![BBox { x0: 2, y0: 2, x1: 6, y1: 6 }] };
        let grid = Grid { title: "t".into(), columns: 2, scale: 3, rows: vec![("row".into(), vec![tile])] };
        let path = dir.path().join("g.png");
        grid.write_png(&path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let (x0, y0) = (PAD as u32, (TITLE + ROW_HEADER) as u32);
        assert_eq!(img.get_pixel(x0 + 1, y0 + 1).0, [255, 0, 0], "image pixel");
        // The box outline starts at image pixel (2, 2), i.e. screen (x0 + 6, y0 + 6).
        assert_eq!(img.get_pixel(x0 + 6, y0 + 10).0, [255, 32, 32], "box edge");
        assert_eq!(img.get_pixel(x0 + 10, y0 + 10).0, [255, 0, 0], "inside the box");
    }
}
