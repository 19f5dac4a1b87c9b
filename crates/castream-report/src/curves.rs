//! Line charts of per-epoch curves (the quick backbones' learning curves): panels side by side,
//! one line with point markers per series, sharing the x axis's meaning.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::charts::{decimals, font, Chart, PALETTE};

/// One panel: a title, its y axis and its series of `(x, y)` points.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// The legend in the upper right corner (falling curves) instead of the lower right (rising).
    pub legend_top: bool,
}

/// Panels of line series side by side, x from the smallest to the largest x of any series.
pub struct Curves<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub panels: &'a [Panel],
}

/// `[lo, hi]` of `values` with 5% margins (a unit span when all are equal).
fn padded_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { 1.0 };
    (lo - 0.05 * span, hi + 0.05 * span)
}

impl Chart for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (480 * self.panels.len().max(1) as u32, 460)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: u32) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let body = root.margin(8 * k, 0, 0, 0).titled(self.title, font(20, k))?;
        for (panel, area) in self.panels.iter().zip(body.split_evenly((1, self.panels.len().max(1)))) {
            let points = || panel.series.iter().flat_map(|(_, p)| p.iter().copied());
            // Padded ranges: never infinite (plotters would not end on an empty panel's range).
            let (x_min, x_max) = padded_range(points().map(|(x, _)| x));
            let (y_min, y_max) = padded_range(points().map(|(_, y)| y));
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, font(16, k))
                .margin(12 * k)
                .x_label_area_size(40 * k)
                .y_label_area_size(64 * k)
                .build_cartesian_2d(x_min..x_max, y_min..y_max)?;
            let (x_span, y_span) = (x_max - x_min, y_max - y_min);
            chart
                .configure_mesh()
                .x_desc(self.x_label)
                .y_desc(&panel.y_label)
                .x_label_formatter(&|v| format!("{v:.*}", decimals(x_span)))
                .y_label_formatter(&|v| format!("{v:.*}", decimals(y_span)))
                .label_style(font(13, k))
                .axis_desc_style(font(14, k))
                .bold_line_style(BLACK.mix(0.15))
                .light_line_style(TRANSPARENT)
                .draw()?;
            for (s, (name, pts)) in panel.series.iter().enumerate() {
                let colour = PALETTE[s % PALETTE.len()];
                let style = colour.stroke_width(2 * k);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16 * k as i32, y)], style));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3 * k, colour.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(if panel.legend_top {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .label_font(font(13, k))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::PNG_SCALE;

    #[test]
    fn ranges_pad_and_survive_flat_or_empty_series() {
        assert_eq!(padded_range([1.0, 3.0]), (0.9, 3.1));
        assert_eq!(padded_range([2.0, 2.0, f64::NAN]), (1.95, 2.05));
        assert_eq!(padded_range([]), (0.0, 1.0));
    }

    #[test]
    fn writes_one_panel_per_curve_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let line = |v: &[f64]| v.iter().enumerate().map(|(i, &y)| (i as f64 + 1.0, y)).collect::<Vec<_>>();
        let panels = [
            Panel {
                title: "validation accuracy".into(),
                y_label: "%".into(),
                series: vec![("resnet18".into(), line(&[70.0, 80.0, 85.0])), ("convnext".into(), line(&[60.0, 75.0]))],
                legend_top: false,
            },
            Panel {
                title: "train loss".into(),
                y_label: "loss".into(),
                series: vec![("resnet18".into(), line(&[1.0]))],
                legend_top: true,
            },
        ];
        Curves { title: "Learning curves", x_label: "epoch", panels: &panels }.write(&dir.path().join("c")).unwrap();
        let png = image::open(dir.path().join("c.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (2 * 480 * PNG_SCALE, 460 * PNG_SCALE));
        for colour in [PALETTE[0], PALETTE[1]] {
            assert!(png.pixels().any(|p| p.0 == [colour.0, colour.1, colour.2]), "a series colour is missing");
        }
        let svg = std::fs::read_to_string(dir.path().join("c.svg")).unwrap();
        assert!(["Learning curves", "validation accuracy", "train loss", "convnext"].iter().all(|t| svg.contains(t)));
        // A panel without points draws empty axes instead of looping on an infinite range.
        let empty =
            [Panel { title: "none".into(), y_label: "".into(), series: vec![("a".into(), vec![])], legend_top: false }];
        Curves { title: "t", x_label: "x", panels: &empty }.write(&dir.path().join("e")).unwrap();
    }
}
