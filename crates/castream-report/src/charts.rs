//! Charts with plotters. Text is drawn with the bundled DejaVu Sans (registered once), so charts
//! render identically on machines without system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use castream_data::atomic;
use image::codecs::png::PngEncoder;
use image::{ColorType, ImageEncoder};
use plotters::coord::Shift;
use plotters::prelude::*;

pub const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font under [`FONT`]; every drawing function calls it first.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .unwrap_or_else(|_| panic!("bundled DejaVuSans.ttf is not a valid font"));
    });
}

/// Draws a PNG of `size` pixels in memory with `draw` and writes it atomically: never a
/// half-drawn file, and never through a symlink at `path` (the link is replaced, not followed).
pub fn write_png(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| anyhow!("drawing {}: {e:?}", path.display()))?;
    }
    atomic::write_with(path, |f| Ok(PngEncoder::new(f).write_image(&pixels, w, h, ColorType::Rgb8)?))
}

/// [`write_png`] for an SVG.
pub fn write_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| anyhow!("drawing {}: {e:?}", path.display()))?;
    }
    atomic::write(path, svg.as_bytes())
}

/// Series colours, distinguishable in print and for common colour-vision deficiencies
/// (Okabe–Ito).
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

/// Where to start the value axis of an accuracy chart so that differences between bars show: the
/// multiple of 5 below the lowest interval end, minus 5, never below 0.
pub fn axis_floor(lows: &[f64]) -> f64 {
    ((lows.iter().cloned().fold(f64::MAX, f64::min) / 5.0).floor() * 5.0 - 5.0).max(0.0)
}

/// A grouped bar chart: one group per category, one bar per series.
pub struct GroupedBars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub categories: &'a [String],
    pub series: &'a [(String, Vec<f64>)],
    /// Optional (low, high) interval per bar, drawn as error bars; same layout as `series`.
    pub intervals: Option<&'a [Vec<(f64, f64)>]>,
    /// Start the value axis here instead of at 0 (to make small differences visible); the axis
    /// label says so.
    pub y_from: Option<f64>,
}

impl GroupedBars<'_> {
    /// Writes `<stem>.png` and `<stem>.svg`.
    pub fn write(&self, stem: &Path) -> Result<()> {
        register_font();
        // Wide enough for every category label (about 120 px each).
        let size = ((120 * self.categories.len() as u32).max(960), 540);
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        write_png(&png, size, |root| self.draw(root.clone()))?;
        write_svg(&svg, size, |root| self.draw(root.clone()))
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing chart `{}`: {e:?}", self.title);
        root.fill(&WHITE).map_err(err)?;
        let highs = self.intervals.into_iter().flatten().flat_map(|v| v.iter().map(|i| i.1));
        let y_max = self.series.iter().flat_map(|(_, v)| v.iter().copied()).chain(highs).fold(0.0f64, f64::max);
        let y_min = self.y_from.unwrap_or(0.0);
        let y_max = y_min + (y_max - y_min) * 1.1;
        let y_desc = match self.y_from {
            Some(v) => format!("{} (axis from {v})", self.y_label),
            None => self.y_label.to_string(),
        };
        let n = self.categories.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n as f64, y_min..y_max.max(y_min + 1e-9))
            .map_err(err)?;
        let categories = self.categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < categories.len() {
                    categories[i].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| if y_max >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") })
            .y_desc(y_desc)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let k = self.series.len().max(1) as f64;
        let width = 0.8 / k;
        for (s, (name, values)) in self.series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            chart
                // A missing cell (NaN) is left empty, e.g. CAM has no CA row.
                .draw_series(values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                    let x0 = i as f64 + 0.1 + s as f64 * width;
                    Rectangle::new([(x0, y_min), (x0 + width * 0.95, v)], colour.filled())
                }))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
            if let Some(iv) = self.intervals.and_then(|all| all.get(s)) {
                chart
                    .draw_series(
                        iv.iter()
                            .zip(values)
                            .enumerate()
                            .filter(|(_, ((lo, hi), v))| lo.is_finite() && hi.is_finite() && v.is_finite())
                            .map(|(i, (&(lo, hi), &v))| {
                                let x = i as f64 + 0.1 + s as f64 * width + width * 0.475;
                                ErrorBar::new_vertical(x, lo, v, hi, BLACK.stroke_width(2), 8)
                            }),
                    )
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_floor_by_hand() {
        assert_eq!(axis_floor(&[83.2, 84.9]), 75.0);
        assert_eq!(axis_floor(&[85.0]), 80.0);
        assert_eq!(axis_floor(&[3.0]), 0.0);
    }

    #[test]
    fn writes_png_and_svg_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let cats = vec!["a".to_string(), "b".to_string()];
        let series = vec![("train".to_string(), vec![3.0, 5.0]), ("test".to_string(), vec![1.0, 2.0])];
        GroupedBars {
            title: "Counts",
            y_label: "images",
            categories: &cats,
            series: &series,
            intervals: None,
            y_from: None,
        }
        .write(&dir.path().join("c"))
        .unwrap();
        let png = image::open(dir.path().join("c.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (960, 540));
        // Both bar colours are present in the raster.
        for colour in [PALETTE[0], PALETTE[1]] {
            assert!(png.pixels().any(|p| p.0 == [colour.0, colour.1, colour.2]));
        }
        let svg = std::fs::read_to_string(dir.path().join("c.svg")).unwrap();
        assert!(svg.contains("Counts") && svg.contains("train"));
    }
}
