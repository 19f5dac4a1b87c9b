//! Interpretability tables from per-image scores: every cell a mean with its 95% bootstrap
//! interval, GAP-vs-CA differences with paired intervals, the paper's values and the sign of its
//! GAP→CA change beside ours, per-image values in Parquet, and one grouped-bar chart per metric.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use castream_metrics::bootstrap::{crossed_interval, crossed_paired_interval, mean_difference, Interval};
use polars::prelude::*;

use crate::charts::{Chart, GroupedBars};
use crate::claims::{differences_table, Difference, Verdict};
use crate::forest::Forest;
use crate::tables::Table;
use castream_metrics::{Metric, PerImage};

/// The scores of one (backbone, method, pooling) cell.
pub struct Row {
    pub backbone: String,
    pub method: String,
    pub pooling: String,
    /// Per stream seed, in the run's seed order; one for a model without a stream (GAP).
    pub values: Vec<PerImage>,
}

impl Row {
    /// Metric `m`'s per-image values of every seed.
    fn seeds(&self, m: Metric) -> Vec<&[f64]> {
        self.values.iter().map(|v| v[&m].as_slice()).collect()
    }
}

/// A published value: `paper(backbone, method, pooling, metric)`.
pub type PaperLookup<'a> = &'a dyn Fn(&str, &str, &str, Metric) -> Option<f64>;

pub struct Scorecard<'a> {
    pub name: &'a str,
    pub title: &'a str,
    pub rows: &'a [Row],
    pub metrics: &'a [Metric],
    pub resamples: usize,
    pub seed: u64,
    pub paper: Option<PaperLookup<'a>>,
}

impl Scorecard<'_> {
    /// The mean over seeds and images and its two-way bootstrap interval.
    fn interval(&self, r: &Row, m: Metric) -> Interval {
        crossed_interval(&r.seeds(m), self.resamples, 0.95, self.seed)
    }

    /// CA − GAP over seeds and images, paired by image, with its two-way bootstrap interval.
    fn paired(&self, ca: &Row, gap: &Row, m: Metric) -> Interval {
        crossed_paired_interval(&ca.seeds(m), &gap.values[0][&m], self.resamples, 0.95, self.seed)
    }

    /// The summary table: one row per cell; per metric the paper's value where it has one
    /// (`<metric>_paper`), ours with its interval (`<metric>`, `_low`, `_high`) and ours minus the
    /// paper's (`<metric>_diff`). The Markdown folds each interval into one cell.
    pub fn summary(&self) -> Result<Table> {
        let text = |f: fn(&Row) -> &String| self.rows.iter().map(|r| f(r).clone()).collect::<Vec<_>>();
        let keys = || {
            vec![
                Column::new("backbone".into(), text(|r| &r.backbone)),
                Column::new("method".into(), text(|r| &r.method)),
                Column::new("pooling".into(), text(|r| &r.pooling)),
            ]
        };
        let (mut columns, mut display) = (keys(), keys());
        for &m in self.metrics {
            let iv: Vec<Interval> = self.rows.iter().map(|r| self.interval(r, m)).collect();
            let paper: Vec<Option<f64>> = match self.paper {
                Some(paper) => self.rows.iter().map(|r| paper(&r.backbone, &r.method, &r.pooling, m)).collect(),
                None => vec![None; self.rows.len()],
            };
            let has_paper = paper.iter().any(Option::is_some);
            if has_paper {
                columns.push(Column::new(format!("{m}_paper").into(), paper.clone()));
                display.push(Column::new(format!("{m}_paper").into(), paper.clone()));
            }
            columns.push(Column::new(m.name().into(), iv.iter().map(|i| i.mean).collect::<Vec<_>>()));
            columns.push(Column::new(format!("{m}_low").into(), iv.iter().map(|i| i.low).collect::<Vec<_>>()));
            columns.push(Column::new(format!("{m}_high").into(), iv.iter().map(|i| i.high).collect::<Vec<_>>()));
            let cells: Vec<String> =
                iv.iter().map(|i| format!("{:.2} [{:.2}, {:.2}]", i.mean, i.low, i.high)).collect();
            display.push(Column::new(format!("{} [95% CI]", m.label()).into(), cells));
            if has_paper {
                let diff: Vec<Option<f64>> = iv.iter().zip(&paper).map(|(i, p)| Some(i.mean - (*p)?)).collect();
                columns.push(Column::new(format!("{m}_diff").into(), diff.clone()));
                display.push(Column::new(format!("{m}_diff").into(), diff));
            }
        }
        let mut table = Table::new(self.name, self.title, DataFrame::new(self.rows.len(), columns)?);
        table.display = Some(DataFrame::new(self.rows.len(), display)?);
        let n = self.rows.first().and_then(|r| r.values.first()?.values().next()).map_or(0, Vec::len);
        let seeds = self.rows.iter().map(|r| r.values.len()).max().unwrap_or(1);
        table = table.note(if seeds > 1 {
            format!(
                "{n} images per cell; rows with a stream: the mean over {seeds} stream seeds. 95% CI: percentile interval of a two-way bootstrap that resamples seeds and images ({} resamples, seed {}; `_low`/`_high` in the CSV and Parquet; docs/results.md).",
                self.resamples, self.seed
            )
        } else {
            format!(
                "{n} images per cell; 95% CI: percentile bootstrap interval of the mean ({} resamples, seed {}; `_low`/`_high` in the CSV and Parquet).",
                self.resamples, self.seed
            )
        });
        for line in self.sign_agreement() {
            table = table.note(line);
        }
        Ok(table)
    }

    /// (backbone, method) pairs that have both a GAP and a CA row, with those rows.
    fn pairs(&self) -> Vec<(&Row, &Row)> {
        let find = |r: &Row, pooling: &str| {
            self.rows.iter().find(|o| o.backbone == r.backbone && o.method == r.method && o.pooling == pooling)
        };
        self.rows.iter().filter(|r| r.pooling == "GAP").filter_map(|gap| Some((gap, find(gap, "CA")?))).collect()
    }

    /// The CA − GAP table: per (backbone, method, metric) the paired bootstrap interval of the
    /// per-image difference, whether it excludes 0, the paper's change and the verdict on it
    /// ([`Verdict`]).
    pub fn differences(&self) -> Result<Option<Table>> {
        self.difference_table(&self.difference_rows())
    }

    fn difference_table(&self, rows: &[Difference]) -> Result<Option<Table>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let name = format!("{}_ca_vs_gap", self.name);
        Ok(Some(differences_table(&name, &self.differences_title(), rows, self.paper.is_some(), self.resamples)?))
    }

    fn differences_title(&self) -> String {
        format!("{}: CA − GAP, paired", self.title)
    }

    /// The paired differences CA − GAP of every (backbone, method) with both rows, per metric.
    fn difference_rows(&self) -> Vec<Difference> {
        let mut rows = Vec::new();
        for (gap, ca) in self.pairs() {
            for &m in self.metrics {
                rows.push(Difference {
                    backbone: gap.backbone.clone(),
                    method: gap.method.clone(),
                    metric: m.label(),
                    higher_is_better: m.higher_is_better(),
                    paper: self.paper_change(gap, ca, m),
                    interval: self.paired(ca, gap, m),
                    per_seed: ca.seeds(m).iter().map(|v| mean_difference(v, &gap.values[0][&m])).collect(),
                });
            }
        }
        rows
    }

    fn paper_change(&self, gap: &Row, ca: &Row, m: Metric) -> Option<f64> {
        let paper = self.paper?;
        Some(paper(&ca.backbone, &ca.method, "CA", m)? - paper(&gap.backbone, &gap.method, "GAP", m)?)
    }

    /// One line per metric: the verdict on the paper's GAP→CA change for each method.
    fn sign_agreement(&self) -> Vec<String> {
        let pairs = self.pairs();
        let mut lines = Vec::new();
        for &m in self.metrics {
            let marks: Vec<(String, Verdict)> = pairs
                .iter()
                .filter_map(|(gap, ca)| {
                    let p = self.paper_change(gap, ca, m)?;
                    let d = self.paired(ca, gap, m);
                    Some((gap.method.clone(), Verdict::of(p, d.low, d.high)))
                })
                .collect();
            if !marks.is_empty() {
                let count = |v: Verdict| marks.iter().filter(|(_, w)| *w == v).count();
                lines.push(format!(
                    "The paper's GAP→CA change, {}: {} reproduced, {} contradicted, {} inconclusive ({}).",
                    m.label(),
                    count(Verdict::Reproduced),
                    count(Verdict::Contradicted),
                    count(Verdict::Inconclusive),
                    marks.iter().map(|(method, v)| format!("{method} {v}")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        lines
    }

    /// Every per-image value: `<name>_per_image.parquet` (backbone, method, pooling, seed: the
    /// stream seed's index in the run, image, metrics).
    pub fn write_per_image(&self, images: &[usize], dir: &Path) -> Result<()> {
        // One block of images per (row, seed).
        let blocks: Vec<(&Row, u32)> =
            self.rows.iter().flat_map(|r| (0..r.values.len()).map(move |k| (r, k as u32))).collect();
        let repeat = |f: fn(&Row) -> &String| -> Vec<String> {
            blocks.iter().flat_map(|(r, _)| std::iter::repeat_n(f(r).clone(), images.len())).collect()
        };
        let mut columns = vec![
            Column::new("backbone".into(), repeat(|r| &r.backbone)),
            Column::new("method".into(), repeat(|r| &r.method)),
            Column::new("pooling".into(), repeat(|r| &r.pooling)),
            Column::new(
                "seed".into(),
                blocks.iter().flat_map(|&(_, k)| std::iter::repeat_n(k, images.len())).collect::<Vec<_>>(),
            ),
            Column::new(
                "image".into(),
                blocks.iter().flat_map(|_| images.iter().map(|&i| i as u32)).collect::<Vec<_>>(),
            ),
        ];
        for &m in self.metrics {
            columns.push(Column::new(
                m.name().into(),
                blocks.iter().flat_map(|(r, k)| r.values[*k as usize][&m].clone()).collect::<Vec<_>>(),
            ));
        }
        let mut frame = DataFrame::new(blocks.len() * images.len(), columns)?;
        let path = dir.join(format!("{}_per_image.parquet", self.name));
        castream_data::atomic::write_with(&path, |f| Ok(ParquetWriter::new(f).finish(&mut frame).map(|_| ())?))
    }

    /// One chart per metric, `<name>_<metric>.png/.svg`: a bar per method, one series per pooling,
    /// with the intervals as error bars.
    pub fn write_charts(&self, dir: &Path) -> Result<()> {
        let several = self.rows.iter().any(|o| o.backbone != self.rows[0].backbone);
        let category = |r: &Row| if several { format!("{} {}", r.backbone, r.method) } else { r.method.clone() };
        let (mut categories, mut series_names): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for r in self.rows {
            if !categories.contains(&category(r)) {
                categories.push(category(r));
            }
            if !series_names.contains(&r.pooling) {
                series_names.push(r.pooling.clone());
            }
        }
        for &m in self.metrics {
            let mut cells: BTreeMap<(usize, usize), Interval> = BTreeMap::new();
            for r in self.rows {
                let c = categories.iter().position(|c| *c == category(r)).expect("collected above");
                let s = series_names.iter().position(|s| *s == r.pooling).expect("collected above");
                cells.insert((s, c), self.interval(r, m));
            }
            let get = |s: usize, c: usize| cells.get(&(s, c)).copied();
            let series: Vec<(String, Vec<f64>)> = series_names
                .iter()
                .enumerate()
                .map(|(s, n)| {
                    (n.clone(), (0..categories.len()).map(|c| get(s, c).map_or(f64::NAN, |i| i.mean)).collect())
                })
                .collect();
            let intervals: Vec<Vec<(f64, f64)>> = (0..series_names.len())
                .map(|s| {
                    (0..categories.len()).map(|c| get(s, c).map_or((f64::NAN, f64::NAN), |i| (i.low, i.high))).collect()
                })
                .collect();
            GroupedBars {
                title: &format!("{}: {} (95% intervals)", self.title, m.label()),
                y_label: &format!("{} %", m.name()),
                categories: &categories,
                series: &series,
                intervals: Some(&intervals),
            }
            .write(&dir.join(format!("{}_{}", self.name, m.name())))?;
        }
        Ok(())
    }

    /// Summary, differences with their forest plot (`<name>_forest.png/.svg`), per-image values and
    /// charts, all into `dir`.
    pub fn write(&self, images: &[usize], notes: &[String], dir: &Path) -> Result<()> {
        let mut summary = self.summary()?;
        for n in notes {
            summary = summary.note(n.clone());
        }
        summary.write(dir)?;
        let differences = self.difference_rows();
        if let Some(d) = self.difference_table(&differences)? {
            d.write(dir)?;
            Forest { title: &self.differences_title(), rows: &differences }
                .write(&dir.join(format!("{}_forest", self.name)))?;
        }
        self.write_per_image(images, dir)?;
        self.write_charts(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, pooling: &str, ad: Vec<f64>) -> Row {
        Row {
            backbone: "resnet18".into(),
            method: method.into(),
            pooling: pooling.into(),
            values: vec![[(Metric::AverageDrop, ad)].into()],
        }
    }

    fn paper(_: &str, method: &str, pooling: &str, _: Metric) -> Option<f64> {
        match (method, pooling) {
            ("A", "GAP") => Some(10.0),
            ("A", "CA") => Some(8.0),
            ("B", "GAP") => Some(10.0),
            ("B", "CA") => Some(12.0),
            _ => None,
        }
    }

    fn card(rows: &[Row]) -> Scorecard<'_> {
        Scorecard {
            name: "t",
            title: "T",
            rows,
            metrics: &[Metric::AverageDrop],
            resamples: 500,
            seed: 3,
            paper: Some(&paper),
        }
    }

    #[test]
    fn summary_means_paper_columns_and_claim_verdicts() {
        // Method A: CA lowers AD by 1 on every image, as the paper's does; method B: CA lowers it too, the paper's raises it.
        let rows = [
            row("A", "GAP", vec![5.0, 7.0, 9.0]),
            row("A", "CA", vec![4.0, 6.0, 8.0]),
            row("B", "GAP", vec![1.0, 2.0, 3.0]),
            row("B", "CA", vec![0.0, 1.0, 2.0]),
        ];
        let t = card(&rows).summary().unwrap();
        let ad: Vec<f64> = t.frame.column("AD").unwrap().f64().unwrap().into_no_null_iter().collect();
        assert_eq!(ad, [7.0, 6.0, 2.0, 1.0]);
        let paper_col: Vec<Option<f64>> = t.frame.column("AD_paper").unwrap().f64().unwrap().iter().collect();
        assert_eq!(paper_col, [Some(10.0), Some(8.0), Some(10.0), Some(12.0)]);
        let diff: Vec<f64> = t.frame.column("AD_diff").unwrap().f64().unwrap().into_no_null_iter().collect();
        assert_eq!(diff, [-3.0, -2.0, -8.0, -11.0]);
        let low: Vec<f64> = t.frame.column("AD_low").unwrap().f64().unwrap().into_no_null_iter().collect();
        assert!(low.iter().zip(&ad).all(|(l, m)| l <= m));
        let line = "AD↓: 1 reproduced, 1 contradicted, 0 inconclusive (A reproduced, B contradicted)";
        assert!(t.notes.iter().any(|n| n.contains(line)), "{:?}", t.notes);
        let md = t.markdown().unwrap();
        assert!(md.contains("| 7.00 [5.00, 9.00] |"), "{md}");
    }

    #[test]
    fn paired_differences_see_a_constant_shift_that_unpaired_intervals_hide() {
        let rows = [row("A", "GAP", vec![5.0, 50.0, 95.0, 20.0]), row("A", "CA", vec![4.0, 49.0, 94.0, 19.0])];
        let d = card(&rows).differences().unwrap().unwrap();
        let get = |c: &str| d.frame.column(c).unwrap().f64().unwrap().get(0).unwrap();
        assert_eq!((get("ca_minus_gap"), get("low"), get("high")), (-1.0, -1.0, -1.0));
        assert_eq!(get("ca_minus_gap_paper"), -2.0);
        let verdict = d.frame.column("verdict").unwrap().str().unwrap().get(0).unwrap().to_string();
        assert_eq!(verdict, "CA better (interval excludes 0)");
        assert_eq!(d.frame.column("claim").unwrap().str().unwrap().get(0), Some("reproduced"));
    }

    #[test]
    fn ca_rows_average_their_seeds_and_differences_list_each_seed() {
        let ad = |v: Vec<f64>| -> PerImage { [(Metric::AverageDrop, v)].into() };
        let gap = row("A", "GAP", vec![5.0, 7.0, 9.0]);
        let ca = Row { values: vec![ad(vec![4.0, 6.0, 8.0]), ad(vec![6.0, 8.0, 10.0])], ..row("A", "CA", vec![]) };
        let rows = [gap, ca];
        let t = card(&rows).summary().unwrap();
        let means: Vec<f64> = t.frame.column("AD").unwrap().f64().unwrap().into_no_null_iter().collect();
        assert_eq!(means, [7.0, 7.0], "the CA row is the mean over both seeds and all images");
        let d = card(&rows).differences().unwrap().unwrap();
        assert_eq!(d.frame.column("ca_minus_gap").unwrap().f64().unwrap().get(0), Some(0.0));
        assert_eq!(d.frame.column("per_seed").unwrap().str().unwrap().get(0), Some("-1.00, +1.00"));
        // Each seed shifts every image alike, in opposite directions: the interval is the seeds'
        // spread (resample means −1, 0, +1), where either seed alone would give a point.
        let (low, high) = (
            d.frame.column("low").unwrap().f64().unwrap().get(0),
            d.frame.column("high").unwrap().f64().unwrap().get(0),
        );
        assert_eq!((low, high), (Some(-1.0), Some(1.0)));
        let dir = tempfile::tempdir().unwrap();
        card(&rows).write_per_image(&[0, 1, 2], dir.path()).unwrap();
        let back =
            ParquetReader::new(std::fs::File::open(dir.path().join("t_per_image.parquet")).unwrap()).finish().unwrap();
        let seeds: Vec<u32> = back.column("seed").unwrap().u32().unwrap().into_no_null_iter().collect();
        assert_eq!(seeds, [0, 0, 0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn per_image_values_and_charts_are_written() {
        let rows = [row("A", "GAP", vec![1.0, 2.0]), row("A", "CA", vec![3.0, 4.0]), row("C", "CA", vec![5.0, 6.0])];
        let dir = tempfile::tempdir().unwrap();
        card(&rows).write(&[7, 9], &[], dir.path()).unwrap();
        let back =
            ParquetReader::new(std::fs::File::open(dir.path().join("t_per_image.parquet")).unwrap()).finish().unwrap();
        assert_eq!(back.height(), 6);
        let images: Vec<u32> = back.column("image").unwrap().u32().unwrap().into_no_null_iter().collect();
        assert_eq!(images, [7, 9, 7, 9, 7, 9]);
        let ad: Vec<f64> = back.column("AD").unwrap().f64().unwrap().into_no_null_iter().collect();
        assert_eq!(ad, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        for f in ["t.md", "t.csv", "t_ca_vs_gap.md", "t_AD.png", "t_AD.svg", "t_forest.png", "t_forest.svg"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
    }
}
