//! The settings of the metrics that have any (ROAD, max-sensitivity); specs set them under
//! `protocol.scoring`. The defaults are the metrics' authors' (ROAD) and Captum's (max-sensitivity).

use castream_data::valid::{in_interval, in_range, OutOfRange};
use serde::{Deserialize, Serialize};

use crate::metric::{Group, Metric};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricOptions {
    /// ROAD: the removal fractions' step in percent; 10 removes 10%, 20%, …, 90%.
    pub road_step: u32,
    /// ROAD: the standard deviation of the noise added to imputed values, in normalised units.
    pub road_noise: f64,
    /// Max-sensitivity: the perturbation's radius in pixel units (pixels in [0, 1]).
    pub sensitivity_radius: f64,
    /// Max-sensitivity: perturbations per image (each costs one explanation of the batch).
    pub sensitivity_samples: usize,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions { road_step: 10, road_noise: 0.01, sensitivity_radius: 0.02, sensitivity_samples: 10 }
    }
}

/// The options a cell's scores depend on: only those of the metrics it computes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsedOptions {
    road: Option<(u32, f64)>,
    sensitivity: Option<(f64, usize)>,
}

impl MetricOptions {
    /// The valid ranges (docs/specs.md, "Valid ranges").
    pub fn validate(&self) -> Result<(), OutOfRange> {
        in_range("road_step", self.road_step as usize, 1..=50, 10)?;
        in_interval("road_noise", self.road_noise, (0.0, true), (1.0, true), 0.01)?;
        in_interval("sensitivity_radius", self.sensitivity_radius, (0.0, false), (1.0, true), 0.02)?;
        in_range("sensitivity_samples", self.sensitivity_samples, 1..=1000, 10)
    }

    /// The options `metrics` use, or `None` when they use none (so cells of metrics without
    /// options keep their cache keys).
    pub fn used_by(&self, metrics: &[Metric]) -> Option<UsedOptions> {
        let uses = |g: Group| metrics.iter().any(|m| m.group() == g);
        let used = UsedOptions {
            road: uses(Group::Road).then_some((self.road_step, self.road_noise)),
            sensitivity: uses(Group::Robustness).then_some((self.sensitivity_radius, self.sensitivity_samples)),
        };
        (used.road.is_some() || used.sensitivity.is_some()).then_some(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_the_options_a_cell_uses() {
        assert!(MetricOptions::default().validate().is_ok());
        let bad = MetricOptions { road_step: 0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(bad.to_string(), "road_step = 0: out of range; valid: 1 to 50. Fix: e.g. road_step = 10");
        assert!(MetricOptions { sensitivity_radius: 0.0, ..Default::default() }.validate().is_err());
        let o = MetricOptions::default();
        assert_eq!(o.used_by(&[Metric::AverageDrop, Metric::Insertion]), None);
        let used = o.used_by(&[Metric::Road]).unwrap();
        assert_eq!((used.road, used.sensitivity), (Some((10, 0.01)), None));
    }
}
