//! Picture grids: tiles of RGB images and saliency maps, each with a caption and optional boxes,
//! drawn to PNG; the saliency in the grid's colour map, explained by a colour bar.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{anyhow, Result};
use castream_data::scenes::BBox;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::charts::{register_font, write_png, FONT};
use crate::colourmap::ColourMap;
use crate::overlay::{draw_colour_bar, COLOUR_BAR_WIDTH};

#[derive(Clone)]
pub struct Tile {
    /// CHW, values in [0, 1], `side x side`; empty for a heatmap tile.
    pub rgb: Vec<f32>,
    /// A saliency map (`side x side`, values in [0, 1]) drawn in the grid's colour map, half and
    /// half over `rgb`, or alone when `rgb` is empty.
    pub saliency: Option<Vec<f32>>,
    pub side: usize,
    pub caption: String,
    pub boxes: Vec<BBox>,
}

impl Tile {
    /// The CHW image `rgb` (`side x side`, values in [0, 1]) with the object boxes `boxes`.
    pub fn image(rgb: Vec<f32>, side: usize, caption: String, boxes: Vec<BBox>) -> Tile {
        Tile { rgb, saliency: None, side, caption, boxes }
    }

    /// A `side x side` map with values in [0, 1], drawn alone.
    pub fn heatmap(map: &[f32], side: usize, caption: String) -> Tile {
        Tile { rgb: Vec::new(), saliency: Some(map.to_vec()), side, caption, boxes: Vec::new() }
    }

    /// The map `map` over the CHW image `rgb` (both `side x side`).
    pub fn overlay(rgb: &[f32], map: &[f32], side: usize, caption: String) -> Tile {
        Tile { rgb: rgb.to_vec(), saliency: Some(map.to_vec()), side, caption, boxes: Vec::new() }
    }

    fn pixels(&self, colour_map: ColourMap) -> Cow<'_, [f32]> {
        match &self.saliency {
            None => Cow::Borrowed(&self.rgb),
            Some(map) if self.rgb.is_empty() => Cow::Owned(colour_map.heatmap(map)),
            Some(map) => Cow::Owned(colour_map.blend(&self.rgb, map)),
        }
    }
}

pub struct Grid {
    pub title: String,
    pub columns: usize,
    /// Each image pixel becomes `scale x scale` screen pixels.
    pub scale: usize,
    pub rows: Vec<(String, Vec<Tile>)>,
    /// The colour map of every saliency tile ([`ColourMap::default`]: jet, the paper's); a grid
    /// with saliency tiles shows it as a colour bar beside its first row.
    pub colour_map: ColourMap,
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
        let saliency = self.rows.iter().flat_map(|(_, t)| t).any(|t| t.saliency.is_some());
        let width = PAD + self.columns * cell_w + if saliency { COLOUR_BAR_WIDTH } else { 0 };
        let height = TITLE + lines.iter().map(|l| ROW_HEADER + l * cell_h).sum::<usize>() + PAD;
        write_png(path, (width as u32, height as u32), |root| {
            let err = |e| anyhow!("drawing {}: {e:?}", path.display());
            root.fill(&WHITE).map_err(err)?;
            root.draw(&Text::new(self.title.clone(), (PAD as i32, 8), (FONT, 20).into_font())).map_err(err)?;
            if saliency {
                let (x, y) = (PAD + self.columns * cell_w, TITLE + ROW_HEADER);
                let h = side * self.scale;
                draw_colour_bar(root, self.colour_map, x as i32, y as i32, h as i32).map_err(err)?;
                let style = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Top));
                let at = (width as i32 - 2, (y + h + 2) as i32);
                root.draw(&Text::new("saliency".to_string(), at, style)).map_err(err)?;
            }
            let mut y = TITLE;
            for ((header, tiles), n_lines) in self.rows.iter().zip(&lines) {
                root.draw(&Text::new(header.clone(), (PAD as i32, y as i32 + 4), (FONT, 15).into_font()))
                    .map_err(err)?;
                y += ROW_HEADER;
                for (k, tile) in tiles.iter().enumerate() {
                    let (cx, cy) = (PAD + (k % self.columns) * cell_w, y + (k / self.columns) * cell_h);
                    self.draw_tile(root, tile, cx, cy).map_err(err)?;
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
        draw_pixels(root, &tile.pixels(self.colour_map), n, s, cx, cy)?;
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
        let tile = Tile::image(rgb, side, "x".into(), vec![BBox { x0: 2, y0: 2, x1: 6, y1: 6 }]);
        let grid = Grid {
            title: "t".into(),
            columns: 2,
            scale: 3,
            rows: vec![("row".into(), vec![tile])],
            colour_map: ColourMap::default(),
        };
        let path = dir.path().join("g.png");
        grid.write_png(&path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.width() as usize, PAD + 2 * (8 * 3 + PAD), "no colour bar without saliency");
        let (x0, y0) = (PAD as u32, (TITLE + ROW_HEADER) as u32);
        assert_eq!(img.get_pixel(x0 + 1, y0 + 1).0, [255, 0, 0], "image pixel");
        // The box outline starts at image pixel (2, 2), i.e. screen (x0 + 6, y0 + 6).
        assert_eq!(img.get_pixel(x0 + 6, y0 + 10).0, [255, 32, 32], "box edge");
        assert_eq!(img.get_pixel(x0 + 10, y0 + 10).0, [255, 0, 0], "inside the box");
    }

    #[test]
    fn saliency_tiles_take_the_grids_colour_map_and_its_colour_bar() {
        let dir = tempfile::tempdir().unwrap();
        let side = 4;
        let tiles =
            vec![Tile::heatmap(&[1.0; 16], side, "h".into()), Tile::overlay(&[0.0; 48], &[0.0; 16], side, "o".into())];
        for colour_map in ColourMap::ALL {
            let grid = Grid {
                title: "t".into(),
                columns: 2,
                scale: 10,
                rows: vec![("row".into(), tiles.clone())],
                colour_map,
            };
            let path = dir.path().join(format!("{}.png", colour_map.key));
            grid.write_png(&path).unwrap();
            let img = image::open(&path).unwrap().to_rgb8();
            let cell_w = side * 10 + PAD;
            assert_eq!(img.width() as usize, PAD + 2 * cell_w + COLOUR_BAR_WIDTH);
            let (x0, y0) = (PAD as u32, (TITLE + ROW_HEADER) as u32);
            assert_eq!(img.get_pixel(x0 + 5, y0 + 5).0, colour_map.rgb8(1.0), "{colour_map:?}: heatmap of 1");
            // The overlay of 0 on black: half the colour of 0.
            let half = colour_map.rgb8(0.0).map(|c| (c as f32 / 2.0).round() as u8);
            let got = img.get_pixel(x0 + cell_w as u32 + 5, y0 + 5).0;
            assert!(
                got.iter().zip(half).all(|(&g, h)| g.abs_diff(h) <= 1),
                "{colour_map:?}: overlay {got:?} vs {half:?}"
            );
            // The colour bar's top is the colour of 1.
            let bar_x = (PAD + 2 * cell_w) as u32 + 8;
            assert_eq!(img.get_pixel(bar_x, y0).0, colour_map.rgb8(1.0), "{colour_map:?}: colour bar");
        }
    }
}
