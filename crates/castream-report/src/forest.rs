//! The forest plot of the paired differences CA − GAP: per metric a panel, per method a row with
//! the mean difference, its 95% paired bootstrap interval, the paper's change and the verdict on
//! it. Each panel is oriented so that right means CA better: a lower-is-better metric is plotted
//! as GAP − CA, and its axis says so. Panels have their own scales, because metrics move by
//! different amounts (AD by tens of points, insertion by one).

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use crate::charts::{decimals, font, text, Chart, PALETTE};
use crate::claims::{Difference, Verdict};

pub struct Forest<'a> {
    pub title: &'a str,
    pub rows: &'a [Difference],
}

/// Logical layout: the label column, the verdict column, and the heights of the bands.
const WIDTH: u32 = 960;
const LABELS: u32 = 190;
const VERDICTS: u32 = 150;
const TITLE: u32 = 40;
const LEGEND: u32 = 34;
const HEADER: u32 = 30;
const ROW: u32 = 30;
const AXIS: u32 = 52;
const GAP: u32 = 16;

const OURS: RGBColor = PALETTE[0];
const PAPER: RGBColor = PALETTE[5];

/// A difference in the panel's orientation (right = CA better): mean, interval and the paper's
/// change, sign-flipped for a lower-is-better metric.
#[derive(Debug, PartialEq)]
pub struct Oriented {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub paper: Option<f64>,
}

impl Oriented {
    pub fn of(d: &Difference) -> Oriented {
        let i = &d.interval;
        if d.higher_is_better {
            Oriented { mean: i.mean, low: i.low, high: i.high, paper: d.paper }
        } else {
            Oriented { mean: -i.mean, low: -i.high, high: -i.low, paper: d.paper.map(|p| -p) }
        }
    }
}

/// The x range of a panel: 0, every interval and every paper value, with 8% of the span on each
/// side.
pub fn x_range(rows: &[Oriented]) -> (f64, f64) {
    let ends = rows.iter().flat_map(|r| [r.low, r.high, r.paper.unwrap_or(0.0)]).filter(|v| v.is_finite());
    let (lo, hi) = ends.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = if hi > lo { 0.08 * (hi - lo) } else { 1.0 };
    (lo - pad, hi + pad)
}

/// What the axis of a panel measures.
fn axis_label(d: &Difference) -> String {
    if d.higher_is_better {
        "CA − GAP (points)".to_string()
    } else {
        format!("GAP − CA (points; {} is lower-is-better, so the sign is flipped)", d.metric)
    }
}

fn verdict(d: &Difference) -> (String, RGBColor) {
    match d.paper.map(|p| Verdict::of(p, d.interval.low, d.interval.high)) {
        Some(Verdict::Reproduced) => ("reproduced".into(), PALETTE[2]),
        Some(Verdict::Contradicted) => ("contradicted".into(), PALETTE[5]),
        Some(Verdict::Inconclusive) => ("inconclusive".into(), RGBColor(100, 100, 100)),
        None => ("no paper value".into(), RGBColor(150, 150, 150)),
    }
}

impl Forest<'_> {
    /// The panels: each metric in order of appearance, with its rows.
    fn panels(&self) -> Vec<Vec<&Difference>> {
        let mut panels: Vec<Vec<&Difference>> = Vec::new();
        for d in self.rows {
            match panels.iter_mut().find(|p| p[0].metric == d.metric) {
                Some(p) => p.push(d),
                None => panels.push(vec![d]),
            }
        }
        panels
    }

    /// A row's label: the method, and the backbone when there are several (only the backbone
    /// when every row has the same method, as table1's top-1).
    fn label(&self, d: &Difference) -> String {
        let several = |f: fn(&Difference) -> &str| self.rows.iter().any(|r| f(r) != f(&self.rows[0]));
        match (several(|r| &r.backbone), several(|r| &r.method)) {
            (true, true) => format!("{} {}", d.backbone, d.method),
            (true, false) => d.backbone.clone(),
            _ => d.method.clone(),
        }
    }

    fn legend<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: u32) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let px = |v: u32| (v * k) as i32;
        let (y, x) = (px(TITLE + LEGEND / 2), px(LABELS));
        root.draw(&PathElement::new([(x, y), (x + px(40), y)], OURS.stroke_width(3 * k)))?;
        root.draw(&Circle::new((x + px(20), y), px(5), OURS.filled()))?;
        root.draw(&text("ours: mean, 95% paired interval", (x + px(50), y), font(15, k), HPos::Left, VPos::Center))?;
        if self.rows.iter().any(|d| d.paper.is_some()) {
            let x = x + px(330);
            draw_diamond(root, (x, y), k)?;
            root.draw(&text("the paper's change (ImageNet)", (x + px(14), y), font(15, k), HPos::Left, VPos::Center))?;
        }
        Ok(())
    }

    fn panel<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        rows: &[&Difference],
        top: u32,
        k: u32,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let px = |v: u32| (v * k) as i32;
        let oriented: Vec<Oriented> = rows.iter().map(|d| Oriented::of(d)).collect();
        let (lo, hi) = x_range(&oriented);
        let plot_w = WIDTH - LABELS - VERDICTS;
        let header_y = px(top + HEADER / 2);
        root.draw(&text(&rows[0].metric, (px(12), header_y), font(17, k), HPos::Left, VPos::Center))?;
        let grey = RGBColor(90, 90, 90);
        root.draw(&text("← GAP better", (px(LABELS), header_y), font(14, k).color(&grey), HPos::Left, VPos::Center))?;
        let right = px(LABELS + plot_w);
        root.draw(&text("CA better →", (right, header_y), font(14, k).color(&grey), HPos::Right, VPos::Center))?;

        let n = rows.len();
        let area = root.clone().shrink(((LABELS * k), (top + HEADER) * k), (plot_w * k, (ROW * n as u32 + AXIS) * k));
        let mut chart =
            ChartBuilder::on(&area).x_label_area_size(AXIS * k).build_cartesian_2d(lo..hi, 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_labels(7)
            .x_label_formatter(&|v| match format!("{v:+.*}", decimals(hi - lo)) {
                // Rounding turns a tick at 0 into "+0.0" or "-0.0".
                t if t[1..].chars().all(|c| c == '0' || c == '.') => "0".to_string(),
                t => t,
            })
            .x_desc(axis_label(rows[0]))
            .label_style(font(14, k))
            .axis_desc_style(font(14, k))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(TRANSPARENT)
            .draw()?;
        chart.draw_series([PathElement::new([(0.0, 0.0), (0.0, n as f64)], BLACK.stroke_width(k))])?;
        for (i, (d, o)) in rows.iter().zip(&oriented).enumerate() {
            // The first row at the top.
            let y = n as f64 - i as f64 - 0.5;
            // Ours over the paper's, where they overlap.
            if let Some(p) = o.paper {
                draw_diamond(root, chart.backend_coord(&(p, y)), k)?;
            }
            chart.draw_series([PathElement::new([(o.low, y), (o.high, y)], OURS.stroke_width(3 * k))])?;
            chart.draw_series([Circle::new((o.mean, y), px(5), OURS.filled())])?;
            let (_, row_y) = chart.backend_coord(&(lo, y));
            root.draw(&text(self.label(d), (px(LABELS - 12), row_y), font(15, k), HPos::Right, VPos::Center))?;
            let (word, colour) = verdict(d);
            let at = (right + px(12), row_y);
            root.draw(&text(word, at, font(15, k).color(&colour), HPos::Left, VPos::Center))?;
        }
        Ok(())
    }

    fn panel_height(rows: usize) -> u32 {
        HEADER + ROW * rows as u32 + AXIS + GAP
    }
}

/// The paper's marker: a hollow diamond centred at `(x, y)` in pixels.
fn draw_diamond<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, (x, y): (i32, i32), k: u32) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let r = (7 * k) as i32;
    let corners = vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)];
    root.draw(&Polygon::new(corners.clone(), WHITE.filled()))?;
    let mut outline = corners;
    outline.push((x, y - r));
    root.draw(&PathElement::new(outline, PAPER.stroke_width(2 * k)))?;
    Ok(())
}

impl Chart for Forest<'_> {
    fn size(&self) -> (u32, u32) {
        (WIDTH, TITLE + LEGEND + self.panels().iter().map(|p| Forest::panel_height(p.len())).sum::<u32>())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: u32) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        root.draw(&text(self.title, ((12 * k) as i32, (10 * k) as i32), font(20, k), HPos::Left, VPos::Top))?;
        self.legend(root, k)?;
        let mut top = TITLE + LEGEND;
        for rows in self.panels() {
            self.panel(root, &rows, top, k)?;
            top += Forest::panel_height(rows.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_metrics::bootstrap::Interval;

    fn diff(
        method: &str,
        metric: &str,
        up: bool,
        (mean, low, high): (f64, f64, f64),
        paper: Option<f64>,
    ) -> Difference {
        Difference {
            backbone: "resnet18".into(),
            method: method.into(),
            metric: metric.into(),
            higher_is_better: up,
            paper,
            interval: Interval { mean, low, high },
            per_seed: Vec::new(),
        }
    }

    #[test]
    fn right_is_better_for_ca_whatever_the_metric() {
        // AG↑ up by 2 [1, 3]: as is.
        let ag = Oriented::of(&diff("A", "AG↑", true, (2.0, 1.0, 3.0), Some(4.0)));
        assert_eq!(ag, Oriented { mean: 2.0, low: 1.0, high: 3.0, paper: Some(4.0) });
        // AD↓ down by 2 [-3, -1] (CA better), the paper's -5: mirrored to +2 [1, 3], paper +5.
        let ad = Oriented::of(&diff("A", "AD↓", false, (-2.0, -3.0, -1.0), Some(-5.0)));
        assert_eq!(ad, Oriented { mean: 2.0, low: 1.0, high: 3.0, paper: Some(5.0) });
        // The range holds 0, both intervals and the paper's values, padded by 8% of the span
        // [-1, 5] = 6: 0.48 each side.
        let worse = Oriented { mean: -0.5, low: -1.0, high: 0.0, paper: None };
        let (lo, hi) = x_range(&[ag, ad, worse]);
        assert!((lo + 1.48).abs() < 1e-12 && (hi - 5.48).abs() < 1e-12, "{lo} {hi}");
        // All intervals on one side: 0 still shown.
        let (lo, hi) = x_range(&[Oriented { mean: 2.0, low: 1.0, high: 3.0, paper: None }]);
        assert!((lo + 0.24).abs() < 1e-12 && (hi - 3.24).abs() < 1e-12, "{lo} {hi}");
    }

    #[test]
    fn writes_a_png_of_the_stated_size_and_an_svg() {
        let rows = [
            diff("Grad-CAM", "AD↓", false, (-1.5, -2.5, -0.5), Some(-3.0)),
            diff("Score-CAM", "AD↓", false, (18.0, 12.0, 24.0), Some(-2.0)),
            diff("Grad-CAM", "insertion↑", true, (0.8, 0.3, 1.3), None),
            diff("Score-CAM", "insertion↑", true, (0.1, -0.4, 0.6), Some(1.0)),
        ];
        let forest = Forest { title: "T: CA − GAP", rows: &rows };
        assert_eq!(forest.panels().len(), 2);
        let dir = tempfile::tempdir().unwrap();
        forest.write(&dir.path().join("t_forest")).unwrap();
        let (w, h) = forest.size();
        assert_eq!((w, h), (WIDTH, TITLE + LEGEND + 2 * (HEADER + 2 * ROW + AXIS + GAP)));
        let png = image::open(dir.path().join("t_forest.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (2 * w, 2 * h));
        assert!(png.pixels().any(|p| p.0 == [OURS.0, OURS.1, OURS.2]), "our intervals are drawn");
        let svg = std::fs::read_to_string(dir.path().join("t_forest.svg")).unwrap();
        for word in ["reproduced", "contradicted", "inconclusive", "no paper value", "GAP − CA"] {
            assert!(svg.contains(word), "{word}");
        }
    }
}
