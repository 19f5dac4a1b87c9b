//! Learning-rate schedules, evaluated per optimisation step.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    Constant,
    /// Linear warm-up from 0 over `warmup_epochs`, then half a cosine down to `min_ratio * lr`.
    Cosine {
        warmup_epochs: f64,
        min_ratio: f64,
    },
    /// Multiply by `gamma` at each epoch in `milestones` (the authors' code: 30/60 of 90, 0.1).
    Step {
        milestones: Vec<usize>,
        gamma: f64,
    },
}

impl Schedule {
    /// The learning rate at `step` (0-based) of a run of `total` steps, `per_epoch` steps each epoch.
    pub fn lr(&self, base: f64, step: usize, per_epoch: usize, total: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine { warmup_epochs, min_ratio } => {
                let warmup = (warmup_epochs * per_epoch as f64).round() as usize;
                if step < warmup {
                    return base * (step + 1) as f64 / warmup as f64;
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let min = base * min_ratio;
                min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Step { milestones, gamma } => {
                let epoch = step / per_epoch.max(1);
                base * gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_linearly_then_decays_to_the_floor() {
        let s = Schedule::Cosine { warmup_epochs: 1.0, min_ratio: 0.1 };
        let lr = |step| s.lr(1.0, step, 10, 110);
        assert!((lr(0) - 0.1).abs() < 1e-12 && (lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12, "cosine starts at the base rate");
        assert!((lr(60) - 0.55).abs() < 1e-12, "half way: mean of base and floor");
        assert!((lr(110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn step_schedule_drops_at_milestones() {
        let s = Schedule::Step { milestones: vec![30, 60], gamma: 0.1 };
        let lr = |epoch: usize| s.lr(0.1, epoch * 100, 100, 9000);
        assert_eq!(lr(0), 0.1);
        assert!((lr(30) - 0.01).abs() < 1e-15 && (lr(59) - 0.01).abs() < 1e-15);
        assert!((lr(60) - 0.001).abs() < 1e-15);
        assert_eq!(Schedule::Constant.lr(0.3, 5, 1, 10), 0.3);
    }
}
