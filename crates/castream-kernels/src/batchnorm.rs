//! BatchNorm in training mode (batch statistics) as one op with a closed-form backward.
//!
//! Written with candle's ops it is a chain of reductions over dimensions (0, 2, 3) and broadcasts,
//! each with its own backward: measured at 85% of a quick ResNet-18 train step. Here the forward
//! is two passes over the input (per-channel statistics in f64, then the affine map) and the
//! backward two more, with the textbook gradient
//! `dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂))`, `dγ = Σ dy · x̂`, `dβ = Σ dy`.

use crate::cpu::{f32_slice, norm_grads};
use crate::relu::relu_grad;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `(B, C, H, W)` with the `(B, C)` planes of `H x W` values.
#[derive(Clone, Copy)]
struct Planes {
    b: usize,
    c: usize,
    hw: usize,
}

impl Planes {
    fn of(dims: &[usize], op: &str) -> Result<Planes> {
        let &[b, c, h, w] = dims else { bail!("{op}: expected a 4-d input, got {dims:?}") };
        if b * h * w < 2 {
            bail!("{op}: training-mode BatchNorm needs more than one value per channel, got input {dims:?}")
        }
        Ok(Planes { b, c, hw: h * w })
    }

    fn n(&self) -> f64 {
        (self.b * self.hw) as f64
    }

    /// The planes of channel `ch`.
    fn channel<'a>(&self, x: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (c, hw) = (self.c, self.hw);
        (0..self.b).map(move |i| &x[(i * c + ch) * hw..][..hw])
    }
}

/// Per-channel mean and biased variance, two-pass in f64.
fn stats(x: &[f32], p: Planes) -> Vec<(f64, f64)> {
    (0..p.c)
        .into_par_iter()
        .map(|ch| {
            let mean = p.channel(x, ch).flatten().map(|&v| v as f64).sum::<f64>() / p.n();
            let var = p.channel(x, ch).flatten().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / p.n();
            (mean, var)
        })
        .collect()
}

/// Writes `a[ch] * x + b[ch]` plane by plane (with `g` read alongside when given).
fn affine_planes(out: &mut [f32], p: Planes, f: impl Fn(usize, usize) -> f32 + Sync) {
    out.par_chunks_mut(p.hw).enumerate().for_each(|(plane, dst)| {
        let base = plane * p.hw;
        for (k, d) in dst.iter_mut().enumerate() {
            *d = f(plane % p.c, base + k);
        }
    });
}

/// `(x, γ, β) -> y`, normalising with the batch statistics, then a ReLU when `relu`.
pub(crate) struct BatchNormTrain {
    pub eps: f64,
    pub relu: bool,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "castream-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(xl.dims(), self.name())?;
        let (x, gamma, beta) =
            (f32_slice(xs, xl, self.name())?, f32_slice(gs, gl, self.name())?, f32_slice(bs, bl, self.name())?);
        if gamma.len() != p.c || beta.len() != p.c {
            bail!("{}: {} channels but γ has {} and β {} values", self.name(), p.c, gamma.len(), beta.len())
        }
        let (scale, shift): (Vec<f32>, Vec<f32>) = stats(x, p)
            .iter()
            .zip(gamma.iter().zip(beta))
            .map(|(&(mean, var), (&g, &b))| {
                let s = g as f64 / (var + self.eps).sqrt();
                (s as f32, (b as f64 - mean * s) as f32)
            })
            .unzip();
        let mut y = vec![0f32; x.len()];
        let floor = if self.relu { 0.0 } else { f32::NEG_INFINITY };
        affine_planes(&mut y, p, |ch, i| (x[i] * scale[ch] + shift[ch]).max(floor));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if self.relu { relu_grad(y, grad)? } else { grad.clone() };
        norm_grads(x, gamma, &grad, &BatchNormBackward { eps: self.eps })
    }
}

/// `(x, γ, dy) -> [dx | dγ | dβ]` flattened.
struct BatchNormBackward {
    eps: f64,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "castream-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(xl.dims(), self.name())?;
        let (x, gamma, dy) =
            (f32_slice(xs, xl, self.name())?, f32_slice(gs, gl, self.name())?, f32_slice(ds, dl, self.name())?);
        if dy.len() != x.len() || gamma.len() != p.c {
            bail!("{}: gradient {:?} or γ {:?} does not match input {:?}", self.name(), dl.dims(), gl.dims(), xl.dims())
        }
        // Per channel: mean, 1/σ, Σ dy, Σ dy · x̂.
        let sums: Vec<(f64, f64, f64, f64)> = stats(x, p)
            .into_par_iter()
            .enumerate()
            .map(|(ch, (mean, var))| {
                let inv = 1.0 / (var + self.eps).sqrt();
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for (xp, dp) in p.channel(x, ch).zip(p.channel(dy, ch)) {
                    for (&xv, &d) in xp.iter().zip(dp) {
                        sum_dy += d as f64;
                        sum_dy_xhat += d as f64 * (xv as f64 - mean) * inv;
                    }
                }
                (mean, inv, sum_dy, sum_dy_xhat)
            })
            .collect();
        let n = p.n();
        // dx = a · dy + b · x + k per channel, with a = γ/σ, b = −γ/σ · Σ(dy x̂)/(n σ) and k chosen
        // so that the whole is γ/σ · (dy − Σdy/n − x̂ Σ(dy x̂)/n).
        let coef: Vec<(f32, f32, f32)> = sums
            .iter()
            .zip(gamma)
            .map(|(&(mean, inv, sum_dy, sum_dy_xhat), &g)| {
                let a = g as f64 * inv;
                let b = -a * sum_dy_xhat / n * inv;
                let k = -a * sum_dy / n - b * mean;
                (a as f32, b as f32, k as f32)
            })
            .collect();
        let mut out = vec![0f32; x.len() + 2 * p.c];
        let (dx, rest) = out.split_at_mut(x.len());
        affine_planes(dx, p, |ch, i| {
            let (a, b, k) = coef[ch];
            a * dy[i] + b * x[i] + k
        });
        for (ch, &(_, _, sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
            rest[ch] = sum_dy_xhat as f32;
            rest[p.c + ch] = sum_dy as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * p.c)))
    }
}

/// `(B, C, H, W) -> (2, C)`: the per-channel batch mean and biased variance (no gradient), for
/// the running statistics.
pub(crate) struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "castream-channel-stats"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(xl.dims(), self.name())?;
        let s = stats(f32_slice(xs, xl, self.name())?, p);
        let out: Vec<f32> = s.iter().map(|m| m.0 as f32).chain(s.iter().map(|m| m.1 as f32)).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, p.c))))
    }
}
