//! The metrics' registry: every per-image score a table can report, with its key (as specs spell
//! it), column name, direction and group. Tables, spec validation and docs/metrics.md read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One per-image score; a table cell is its mean. All in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Metric {
    AverageDrop,
    AverageGain,
    AverageIncrease,
    Insertion,
    Deletion,
    Pointing,
    Energy,
    Iou,
    Aopc,
    RoadMorf,
    RoadLerf,
    Road,
    MaxSensitivity,
    Coherency,
    Complexity,
    Adcc,
}

/// What a metric needs computed: the model's confidence on the explanation image, the
/// insertion/deletion curves, the ground-truth object box, the ROAD imputations, or the source's
/// maps of other inputs (perturbed images, the explanation image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Confidence,
    Causal,
    Localisation,
    Road,
    Robustness,
    Adcc,
}

pub struct MetricInfo {
    pub metric: Metric,
    /// The spelling of specs.
    pub key: &'static str,
    /// The column name of tables.
    pub column: &'static str,
    pub higher_is_better: bool,
    pub group: Group,
}

const fn info(metric: Metric, key: &'static str, column: &'static str, up: bool, group: Group) -> MetricInfo {
    MetricInfo { metric, key, column, higher_is_better: up, group }
}

/// Every metric, once.
pub const REGISTRY: [MetricInfo; 16] = [
    info(Metric::AverageDrop, "average-drop", "AD", false, Group::Confidence),
    info(Metric::AverageGain, "average-gain", "AG", true, Group::Confidence),
    info(Metric::AverageIncrease, "average-increase", "AI", true, Group::Confidence),
    info(Metric::Insertion, "insertion", "I", true, Group::Causal),
    info(Metric::Deletion, "deletion", "D", false, Group::Causal),
    info(Metric::Pointing, "pointing-game", "PG", true, Group::Localisation),
    info(Metric::Energy, "energy-pointing-game", "EPG", true, Group::Localisation),
    info(Metric::Iou, "iou", "IoU", true, Group::Localisation),
    info(Metric::Aopc, "aopc", "AOPC", true, Group::Causal),
    info(Metric::RoadMorf, "road-morf", "ROAD-MoRF", false, Group::Road),
    info(Metric::RoadLerf, "road-lerf", "ROAD-LeRF", true, Group::Road),
    info(Metric::Road, "road", "ROAD", true, Group::Road),
    info(Metric::MaxSensitivity, "max-sensitivity", "MS", false, Group::Robustness),
    info(Metric::Coherency, "coherency", "Coh", true, Group::Adcc),
    info(Metric::Complexity, "complexity", "Cx", false, Group::Adcc),
    info(Metric::Adcc, "adcc", "ADCC", true, Group::Adcc),
];

/// The paper's five metrics (tables 2–5).
pub const PAPER_METRICS: [Metric; 5] =
    [Metric::AverageDrop, Metric::AverageGain, Metric::AverageIncrease, Metric::Insertion, Metric::Deletion];
/// Localisation against the ground-truth box (table 6).
pub const LOCALISATION: [Metric; 3] = [Metric::Pointing, Metric::Energy, Metric::Iou];

/// Per-image values of each metric, in the order of the evaluated images.
pub type PerImage = BTreeMap<Metric, Vec<f64>>;

impl Metric {
    pub const ALL: [Metric; REGISTRY.len()] = {
        let mut all = [Metric::AverageDrop; REGISTRY.len()];
        let mut i = 0;
        while i < REGISTRY.len() {
            all[i] = REGISTRY[i].metric;
            i += 1;
        }
        all
    };

    pub fn info(self) -> &'static MetricInfo {
        REGISTRY.iter().find(|e| e.metric == self).expect("every metric is registered (tested)")
    }

    pub fn key(self) -> &'static str {
        self.info().key
    }

    /// The column name of tables.
    pub fn name(self) -> &'static str {
        self.info().column
    }

    pub fn higher_is_better(self) -> bool {
        self.info().higher_is_better
    }

    pub fn group(self) -> Group {
        self.info().group
    }

    /// `AD↓`, `AG↑`, … for chart titles.
    pub fn label(self) -> String {
        format!("{}{}", self.name(), if self.higher_is_better() { "↑" } else { "↓" })
    }
}

castream_data::keyed!(Metric, "metric", name);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_and_keys_parse_back() {
        let mut seen = std::collections::BTreeSet::new();
        for e in &REGISTRY {
            assert!(seen.insert(e.metric), "{:?} registered twice", e.metric);
            assert_eq!(e.key.parse::<Metric>().unwrap(), e.metric);
        }
        assert_eq!(seen.len(), 16);
        assert!(!Metric::AverageDrop.higher_is_better() && !Metric::Deletion.higher_is_better());
        assert_eq!(Metric::Insertion.label(), "I↑");
        let err = "avg-drop".parse::<Metric>().unwrap_err();
        assert!(err.contains("average-drop, average-gain"), "{err}");
    }
}
