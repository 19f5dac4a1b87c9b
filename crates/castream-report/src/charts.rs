//! Charts with plotters. Text is drawn with the bundled DejaVu Sans (registered once), so charts
//! render identically on machines without system fonts.

use std::ops::{Add, Sub};
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use castream_data::atomic;
use image::codecs::png::PngEncoder;
use image::{ColorType, ImageEncoder};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// Pixels per logical pixel of a PNG chart (an SVG chart has one): a raster chart printed at a
/// paper's column width keeps legible text.
pub const PNG_SCALE: u32 = 2;

/// A chart laid out in logical pixels.
pub trait Chart {
    /// Width and height in logical pixels.
    fn size(&self) -> (u32, u32);

    /// Draws on `root`, every length and font size multiplied by `k`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: u32) -> Result<()>
    where
        DB::ErrorType: 'static;

    /// Writes `<stem>.png` at [`PNG_SCALE`] and `<stem>.svg` at the logical size.
    fn write(&self, stem: &Path) -> Result<()> {
        register_font();
        let (w, h) = self.size();
        let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
        write_png(&png, (w * PNG_SCALE, h * PNG_SCALE), |root| self.draw(root, PNG_SCALE))
            .with_context(|| format!("drawing {}", png.display()))?;
        write_svg(&svg, (w, h), |root| self.draw(root, 1)).with_context(|| format!("drawing {}", svg.display()))
    }
}

/// A font size `size` at scale `k`.
pub(crate) fn font(size: u32, k: u32) -> TextStyle<'static> {
    (FONT, (size * k) as f64).into_font().into()
}

/// Text anchored at `pos` (`h`, `v`: which point of the text lies there).
pub(crate) fn text<'a>(
    s: impl Into<String>,
    pos: (i32, i32),
    style: TextStyle<'a>,
    h: HPos,
    v: VPos,
) -> Text<'a, (i32, i32), String> {
    Text::new(s.into(), pos, style.pos(Pos::new(h, v)))
}

/// Decimals of tick labels on an axis spanning `span`.
pub(crate) fn decimals(span: f64) -> usize {
    match span {
        s if s >= 10.0 => 0,
        s if s >= 1.0 => 1,
        _ => 2,
    }
}

/// An error bar at `x` from `lo` to `hi`, with whiskers reaching `half` to each side.
pub(crate) fn error_bar<T>(x: T, lo: T, hi: T, half: T, style: ShapeStyle) -> [PathElement<(T, T)>; 3]
where
    T: Copy + Add<Output = T> + Sub<Output = T>,
{
    [
        PathElement::new([(x, lo), (x, hi)], style),
        PathElement::new([(x - half, lo), (x + half, lo)], style),
        PathElement::new([(x - half, hi), (x + half, hi)], style),
    ]
}

/// The value axis of a bar chart: from 0 (or below, for negative values) to just above the
/// highest bar or interval end, so that bar lengths stay proportional to the values.
fn value_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.into_iter().filter(|v| v.is_finite()).fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    (if lo < 0.0 { lo - 0.05 * span } else { 0.0 }, hi + 0.08 * span)
}

/// A grouped bar chart: one group per category, one bar per series, the value axis from 0 and the
/// legend to the right of the plot.
pub struct GroupedBars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub categories: &'a [String],
    pub series: &'a [(String, Vec<f64>)],
    /// Optional (low, high) interval per bar, drawn as error bars; same layout as `series`.
    pub intervals: Option<&'a [Vec<(f64, f64)>]>,
}

/// Legend rows and their swatches.
const LEGEND_ROW: u32 = 26;
const SWATCH: u32 = 14;

impl GroupedBars<'_> {
    fn legend_width(&self) -> u32 {
        let longest = self.series.iter().map(|(n, _)| n.chars().count()).chain([12]).max().unwrap_or(0) as u32;
        SWATCH + 24 + 9 * longest
    }

    fn legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, top: i32, k: u32) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let px = |v: u32| (v * k) as i32;
        let x = px(8);
        let row_y = |i: usize| top + px(LEGEND_ROW) * i as i32 + px(SWATCH) / 2;
        for (s, (name, _)) in self.series.iter().enumerate() {
            let (y, colour) = (row_y(s), PALETTE[s % PALETTE.len()]);
            area.draw(&Rectangle::new(
                [(x, y - px(SWATCH) / 2), (x + px(SWATCH), y + px(SWATCH) / 2)],
                colour.filled(),
            ))?;
            area.draw(&text(name, (x + px(SWATCH + 8), y), font(15, k), HPos::Left, VPos::Center))?;
        }
        if self.intervals.is_some() {
            let (y, mid) = (row_y(self.series.len()), x + px(SWATCH) / 2);
            for part in error_bar(mid, y + px(8), y - px(8), px(5), BLACK.stroke_width(2 * k)) {
                area.draw(&part)?;
            }
            area.draw(&text("95% interval", (x + px(SWATCH + 8), y), font(15, k), HPos::Left, VPos::Center))?;
        }
        Ok(())
    }
}

impl Chart for GroupedBars<'_> {
    /// Wide enough for every category label (150 logical pixels each) and the legend.
    fn size(&self) -> (u32, u32) {
        ((150 * self.categories.len() as u32 + self.legend_width()).max(960), 540)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: u32) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let px = |v: u32| (v * k) as i32;
        root.fill(&WHITE)?;
        let body = root.margin(8 * k, 0, 0, 0).titled(self.title, font(20, k))?;
        let (plot, legend) = body.split_horizontally(body.dim_in_pixel().0 - self.legend_width() * k);
        let highs = self.intervals.into_iter().flatten().flat_map(|v| v.iter().flat_map(|i| [i.0, i.1]));
        let (y_min, y_max) = value_range(self.series.iter().flat_map(|(_, v)| v.iter().copied()).chain(highs));
        let n = self.categories.len();
        let margin = 12 * k;
        let mut chart = ChartBuilder::on(&plot)
            .margin(margin)
            .x_label_area_size(40 * k)
            .y_label_area_size(80 * k)
            .build_cartesian_2d(0.0..n as f64, y_min..y_max)?;
        let span = y_max - y_min;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| format!("{v:.*}", decimals(span)))
            .y_desc(self.y_label)
            .label_style(font(15, k))
            .axis_desc_style(font(16, k))
            .bold_line_style(BLACK.mix(0.15))
            .light_line_style(TRANSPARENT)
            .draw()?;
        for (i, category) in self.categories.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, y_min));
            root.draw(&text(category, (x, y + px(8)), font(15, k), HPos::Center, VPos::Top))?;
        }
        let width = 0.8 / self.series.len().max(1) as f64;
        let x_of = |s: usize, i: usize| i as f64 + 0.1 + s as f64 * width;
        for (s, (_, values)) in self.series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            // A missing cell (NaN) is left empty, e.g. CAM has no CA row.
            let bars = values.iter().enumerate().filter(|(_, v)| v.is_finite());
            chart.draw_series(
                bars.map(|(i, &v)| {
                    Rectangle::new([(x_of(s, i), 0.0), (x_of(s, i) + width * 0.95, v)], colour.filled())
                }),
            )?;
            if let Some(iv) = self.intervals.and_then(|all| all.get(s)) {
                let drawn = iv
                    .iter()
                    .zip(values)
                    .enumerate()
                    .filter(|(_, ((lo, hi), v))| lo.is_finite() && hi.is_finite() && v.is_finite());
                let style = BLACK.stroke_width(2 * k);
                chart.draw_series(drawn.flat_map(|(i, (&(lo, hi), _))| {
                    error_bar(x_of(s, i) + width * 0.475, lo, hi, width * 0.15, style)
                }))?;
            }
        }
        self.legend(&legend, margin as i32, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_axis_starts_at_zero() {
        // Accuracies of 83 to 85 %: from 0, 8% headroom above the highest interval end.
        assert_eq!(value_range([83.2, 84.9, 85.0]), (0.0, 85.0 + 0.08 * 85.0));
        // A negative value extends the axis below 0 by 5% of the span.
        assert_eq!(value_range([-2.0, 8.0, f64::NAN]), (-2.5, 8.8));
        assert_eq!(value_range([]), (0.0, 0.08));
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
            intervals: Some(&[vec![(2.0, 4.0), (4.0, 6.0)], vec![(0.5, 1.5), (1.0, 3.0)]]),
        }
        .write(&dir.path().join("c"))
        .unwrap();
        let png = image::open(dir.path().join("c.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (960 * PNG_SCALE, 540 * PNG_SCALE));
        // Both bar colours are present in the raster.
        for colour in [PALETTE[0], PALETTE[1]] {
            assert!(png.pixels().any(|p| p.0 == [colour.0, colour.1, colour.2]));
        }
        let svg = std::fs::read_to_string(dir.path().join("c.svg")).unwrap();
        assert!(svg.contains("Counts") && svg.contains("train"));
    }
}
