//! A verdict on each of the paper's claims, by one rule (docs/results.md, Claims): the paper
//! states a change (CA − GAP) with a sign; ours is a paired difference with a 95% interval.
//! **reproduced** when the interval excludes 0 on the paper's side, **contradicted** when it
//! excludes 0 on the other side, **inconclusive** when it contains 0 (or the paper's change is 0).

use std::fmt;

use anyhow::Result;
use castream_metrics::bootstrap::Interval;
use polars::prelude::*;

use crate::tables::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reproduced,
    Contradicted,
    Inconclusive,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Reproduced, Verdict::Contradicted, Verdict::Inconclusive];

    /// The verdict on a claimed change `paper` given our interval `[low, high]` of the same change.
    pub fn of(paper: f64, low: f64, high: f64) -> Verdict {
        let side = if low > 0.0 {
            1.0
        } else if high < 0.0 {
            -1.0
        } else {
            return Verdict::Inconclusive;
        };
        if paper == 0.0 || paper.is_nan() {
            Verdict::Inconclusive
        } else if paper.signum() == side {
            Verdict::Reproduced
        } else {
            Verdict::Contradicted
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What a paired interval of CA − GAP says by itself: better, worse, or no clear difference.
pub fn difference(mean: f64, low: f64, high: f64, higher_is_better: bool) -> String {
    if low > 0.0 || high < 0.0 {
        let better = (mean > 0.0) == higher_is_better;
        format!("CA {} (interval excludes 0)", if better { "better" } else { "worse" })
    } else {
        "no clear difference".to_string()
    }
}

/// One paired difference CA − GAP, as the `*_ca_vs_gap` tables list them.
pub struct Difference {
    pub backbone: String,
    pub method: String,
    /// Its column label, e.g. `AD↓`.
    pub metric: String,
    pub higher_is_better: bool,
    /// The paper's change, where it states one.
    pub paper: Option<f64>,
    /// Over every stream seed (and image).
    pub interval: Interval,
    /// The mean paired difference of each stream seed alone.
    pub per_seed: Vec<f64>,
}

/// The table of `rows`: the difference and its interval, what it says by itself, and — with
/// `paper` — the paper's change and the verdict on it.
pub fn differences_table(name: &str, title: &str, rows: &[Difference], paper: bool, resamples: usize) -> Result<Table> {
    let text = |f: &dyn Fn(&Difference) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let number = |f: &dyn Fn(&Difference) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let mut columns = vec![
        Column::new("backbone".into(), text(&|r| r.backbone.clone())),
        Column::new("method".into(), text(&|r| r.method.clone())),
        Column::new("metric".into(), text(&|r| r.metric.clone())),
        Column::new("ca_minus_gap".into(), number(&|r| r.interval.mean)),
        Column::new("low".into(), number(&|r| r.interval.low)),
        Column::new("high".into(), number(&|r| r.interval.high)),
        Column::new(
            "verdict".into(),
            text(&|r| difference(r.interval.mean, r.interval.low, r.interval.high, r.higher_is_better)),
        ),
    ];
    if rows.iter().any(|r| r.per_seed.len() > 1) {
        let per_seed = |r: &Difference| r.per_seed.iter().map(|d| format!("{d:+.2}")).collect::<Vec<_>>().join(", ");
        columns.push(Column::new("per_seed".into(), text(&per_seed)));
    }
    if paper {
        columns.insert(3, Column::new("ca_minus_gap_paper".into(), rows.iter().map(|r| r.paper).collect::<Vec<_>>()));
        let claims: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.paper.map(|p| Verdict::of(p, r.interval.low, r.interval.high).label().to_string()))
            .collect();
        columns.push(Column::new("claim".into(), claims));
    }
    let mut table = Table::new(name, title, DataFrame::new(rows.len(), columns)?).note(format!(
        "Per-image differences CA − GAP on the same images; low/high: 95% paired bootstrap interval ({resamples} resamples; \
         with several stream seeds over seeds and images, and per_seed the mean difference of each seed alone)."
    ));
    if paper {
        table = table.note(
            "claim: the paper's change (CA − GAP on ImageNet) is reproduced when our interval excludes 0 on its side, \
             contradicted when it excludes 0 on the other, inconclusive when it contains 0 (docs/results.md).",
        );
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_by_cases() {
        // The paper's increase, our interval above 0: reproduced; below 0: contradicted.
        assert_eq!(Verdict::of(2.9, 0.3, 1.2), Verdict::Reproduced);
        assert_eq!(Verdict::of(2.9, -1.2, -0.3), Verdict::Contradicted);
        // A decrease (AD going down is CA's improvement) works the same way.
        assert_eq!(Verdict::of(-0.5, -2.0, -0.1), Verdict::Reproduced);
        assert_eq!(Verdict::of(-0.5, 0.1, 2.0), Verdict::Contradicted);
        // An interval containing 0, or touching it, decides nothing.
        assert_eq!(Verdict::of(2.9, -0.1, 1.2), Verdict::Inconclusive);
        assert_eq!(Verdict::of(2.9, 0.0, 1.2), Verdict::Inconclusive);
        assert_eq!(Verdict::of(0.0, 0.3, 1.2), Verdict::Inconclusive);
    }
}
