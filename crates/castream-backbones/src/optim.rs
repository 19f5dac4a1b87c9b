//! Optimizers with checkpointable state. candle-nn's AdamW decays every parameter (norms and
//! biases included) and keeps its moments private; its SGD has neither momentum nor weight decay.
//! These follow PyTorch's `torch.optim.AdamW` and `torch.optim.SGD` update rules exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use castream_data::valid::{in_interval, in_range, OutOfRange};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Decoupled weight decay (Loshchilov & Hutter), PyTorch's update order.
    AdamW { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    /// PyTorch SGD: coupled weight decay, heavy-ball or Nesterov momentum.
    Sgd { lr: f64, momentum: f64, weight_decay: f64, nesterov: bool },
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::AdamW { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr,
        }
    }

    pub fn adamw(lr: f64, weight_decay: f64) -> OptimizerConfig {
        OptimizerConfig::AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    /// The valid ranges (docs/specs.md, "Valid ranges"): `lr` in (0, 10], `beta1`, `beta2` and
    /// `momentum` in [0, 1), `eps` in (0, 1], `weight_decay` in [0, 1]; NaN and infinities never.
    pub fn validate(&self) -> std::result::Result<(), OutOfRange> {
        in_interval("lr", self.lr(), (0.0, false), (10.0, true), 3e-3)?;
        match *self {
            OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay, .. } => {
                in_interval("beta1", beta1, (0.0, true), (1.0, false), 0.9)?;
                in_interval("beta2", beta2, (0.0, true), (1.0, false), 0.999)?;
                in_interval("eps", eps, (0.0, false), (1.0, true), 1e-8)?;
                in_interval("weight_decay", weight_decay, (0.0, true), (1.0, true), 0.05)
            }
            OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
                in_interval("momentum", momentum, (0.0, true), (1.0, false), 0.9)?;
                in_interval("weight_decay", weight_decay, (0.0, true), (1.0, true), 1e-4)
            }
        }
    }
}

impl crate::train::TrainConfig {
    /// Most epochs a run may ask for.
    pub const MAX_EPOCHS: usize = 10_000;
    /// Largest batch.
    pub const MAX_BATCH_SIZE: usize = 65_536;

    /// The valid ranges (docs/specs.md, "Valid ranges"): `epochs` 1 to [`Self::MAX_EPOCHS`],
    /// `batch_size` 1 to [`Self::MAX_BATCH_SIZE`], and the optimizer's
    /// ([`OptimizerConfig::validate`]). Kept beside the optimizer's ranges (train.rs holds the loop).
    pub fn validate(&self) -> std::result::Result<(), OutOfRange> {
        in_range("epochs", self.epochs, 1..=Self::MAX_EPOCHS, 10)?;
        in_range("batch_size", self.batch_size, 1..=Self::MAX_BATCH_SIZE, 128)?;
        self.optimizer.validate().map_err(|e| e.within("optimizer"))
    }
}

struct Param {
    name: String,
    var: Var,
    /// Weight decay applies to weight matrices and kernels, not to biases, norm scales or layer
    /// scales (every parameter of rank <= 1), the usual rule of timm and the CNN literature.
    decay: bool,
    /// AdamW: first and second moments. SGD: the momentum buffer in `first`.
    first: Option<Tensor>,
    second: Option<Tensor>,
}

pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<Param>,
    /// Number of steps taken (AdamW's bias correction; SGD's first-step buffer).
    steps: u64,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, vars: Vec<(String, Var)>) -> Optimizer {
        let params = vars
            .into_iter()
            .map(|(name, var)| Param { decay: var.rank() > 1, name, var, first: None, second: None })
            .collect();
        Optimizer { config, params, steps: 0 }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr` (the schedule's value for this step). Parameters
    /// without a gradient are left unchanged.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            let w = p.var.as_tensor();
            match self.config {
                OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay, .. } => {
                    let zeros = || w.zeros_like();
                    let m = p.first.take().map_or_else(zeros, Ok)?;
                    let v = p.second.take().map_or_else(zeros, Ok)?;
                    let m = ((m * beta1)? + (g * (1.0 - beta1))?)?;
                    let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let decayed =
                        if p.decay && weight_decay > 0.0 { (w * (1.0 - lr * weight_decay))? } else { w.clone() };
                    let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - beta2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    p.var.set(&(decayed - (update * lr)?)?)?;
                    p.first = Some(m);
                    p.second = Some(v);
                }
                OptimizerConfig::Sgd { momentum, weight_decay, nesterov, .. } => {
                    let g = if p.decay && weight_decay > 0.0 { (g + (w * weight_decay)?)? } else { g.clone() };
                    let direction = if momentum > 0.0 {
                        let buf = match p.first.take() {
                            Some(buf) => ((buf * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let d = if nesterov { (&g + (&buf * momentum)?)? } else { buf.clone() };
                        p.first = Some(buf);
                        d
                    } else {
                        g
                    };
                    p.var.set(&(w - (direction * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors, for checkpoints: `first.<param>`, `second.<param>`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            if let Some(t) = &p.first {
                out.insert(format!("first.{}", p.name), t.clone());
            }
            if let Some(t) = &p.second {
                out.insert(format!("second.{}", p.name), t.clone());
            }
        }
        out
    }

    /// Restores what [`Optimizer::state`] returned, with the step count.
    pub fn restore(&mut self, mut state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for p in &mut self.params {
            p.first = state.remove(&format!("first.{}", p.name));
            p.second = state.remove(&format!("second.{}", p.name));
        }
        if let Some(extra) = state.keys().next() {
            candle_core::bail!("optimizer state has `{extra}`, which names no parameter of this model");
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;

    fn var(values: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(values, shape, &cpu()).unwrap()).unwrap()
    }

    /// Runs `steps` updates of f(w) = sum(c * w) (gradient c) and returns the weights.
    fn run(config: OptimizerConfig, w0: &[f32], shape: &[usize], c: f32, steps: usize) -> Vec<f32> {
        let w = var(w0, shape);
        let mut opt = Optimizer::new(config.clone(), vec![("w".into(), w.clone())]);
        for _ in 0..steps {
            let loss = (w.as_tensor() * c as f64).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), config.lr()).unwrap();
        }
        w.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn adamw_matches_the_hand_computed_recurrence() {
        let (lr, b1, b2, eps, wd, c) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.5f64, 2.0f64);
        let cfg = OptimizerConfig::AdamW { lr, beta1: b1, beta2: b2, eps, weight_decay: wd };
        let got = run(cfg, &[1.0, -3.0], &[1, 2], c as f32, 3);
        for (k, w0) in [1.0f64, -3.0].into_iter().enumerate() {
            let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
            for t in 1..=3 {
                m = b1 * m + (1.0 - b1) * c;
                v = b2 * v + (1.0 - b2) * c * c;
                w *= 1.0 - lr * wd;
                w -= lr * (m / (1.0 - b1.powi(t))) / ((v / (1.0 - b2.powi(t))).sqrt() + eps);
            }
            assert!((got[k] as f64 - w).abs() < 1e-5, "{} vs {w}", got[k]);
        }
    }

    #[test]
    fn sgd_momentum_nesterov_and_decay_match_pytorch() {
        let (lr, mu, wd, c) = (0.1f64, 0.9f64, 0.01f64, 1.0f64);
        for nesterov in [false, true] {
            let cfg = OptimizerConfig::Sgd { lr, momentum: mu, weight_decay: wd, nesterov };
            let got = run(cfg, &[2.0, 4.0], &[2, 1], c as f32, 3)[1] as f64;
            let (mut w, mut buf) = (4.0f64, None::<f64>);
            for _ in 0..3 {
                let g = c + wd * w;
                let b = buf.map_or(g, |b| mu * b + g);
                buf = Some(b);
                w -= lr * if nesterov { g + mu * b } else { b };
            }
            assert!((got - w).abs() < 1e-5, "nesterov={nesterov}: {got} vs {w}");
        }
    }

    #[test]
    fn biases_and_norm_scales_are_not_decayed() {
        // Gradient 1: a decayed parameter moves by lr * (1 + wd * w), an undecayed one by lr.
        let cfg = OptimizerConfig::Sgd { lr: 0.5, momentum: 0.0, weight_decay: 0.1, nesterov: false };
        assert_eq!(run(cfg.clone(), &[1.0, 1.0], &[2], 1.0, 1), vec![0.5, 0.5], "rank-1 parameter decayed");
        assert_eq!(run(cfg, &[1.0, 1.0], &[1, 2], 1.0, 1), vec![0.45, 0.45]);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let cfg = OptimizerConfig::adamw(0.05, 0.1);
        let loss = |w: &Var| (w.as_tensor().sqr().unwrap() * 3.0).unwrap().sum_all().unwrap();
        let (a, b) = (var(&[1.0, 2.0], &[2, 1]), var(&[1.0, 2.0], &[2, 1]));
        let mut opt_a = Optimizer::new(cfg.clone(), vec![("w".into(), a.clone())]);
        for _ in 0..4 {
            opt_a.step(&loss(&a).backward().unwrap(), 0.05).unwrap();
        }
        let mut opt_b = Optimizer::new(cfg.clone(), vec![("w".into(), b.clone())]);
        for _ in 0..2 {
            opt_b.step(&loss(&b).backward().unwrap(), 0.05).unwrap();
        }
        // "Interrupt" after two steps: a fresh optimizer restored from the saved state.
        let (state, steps) = (opt_b.state(), opt_b.steps());
        let mut opt_c = Optimizer::new(cfg, vec![("w".into(), b.clone())]);
        opt_c.restore(state, steps).unwrap();
        for _ in 0..2 {
            opt_c.step(&loss(&b).backward().unwrap(), 0.05).unwrap();
        }
        let (wa, wb): (Vec<f32>, Vec<f32>) = (
            a.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            b.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(wa, wb);
    }
}
