//! BatchNorm in training mode (batch statistics), optionally followed by a ReLU, as one op with a
//! closed-form backward.
//!
//! Written with candle's ops it is a chain of reductions over dimensions (0, 2, 3) and broadcasts,
//! each with its own backward: measured at 85% of a quick ResNet-18 train step. Here the forward
//! takes each plane's sum and centred sum of squares (in f32 lanes; after a convolution, while its
//! output plane is in cache), combines them per channel in f64, then applies the affine map and
//! ReLU; the backward's per-channel sums are likewise taken per plane, by the pass that produces
//! the output gradient where it can, with the textbook gradient
//! `dx = γ/σ · (dy' − mean(dy') − x̂ · mean(dy' · x̂))`, `dγ = Σ dy' · x̂`, `dβ = Σ dy'`, where
//! `dy'` is the output gradient with the ReLU's mask applied. The forward keeps its statistics
//! ([`Normaliser`]) for the backward and for the running statistics, so they are computed once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cpu::{f32_slice, par_build, simd_dispatch, split_flat};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `(B, C, H, W)` with the `(B, C)` planes of `H x W` values.
#[derive(Clone, Copy)]
pub(crate) struct Planes {
    b: usize,
    c: usize,
    hw: usize,
}

impl Planes {
    pub fn of(dims: &[usize], op: &str) -> Result<Planes> {
        let &[b, c, h, w] = dims else { bail!("{op}: expected a 4-d input, got {dims:?}") };
        if b * h * w < 2 {
            bail!("{op}: training-mode BatchNorm needs more than one value per channel, got input {dims:?}")
        }
        Ok(Planes { b, c, hw: h * w })
    }

    fn n(&self) -> f64 {
        (self.b * self.hw) as f64
    }
}

/// A batch's per-channel statistics and the affine map they give, `y = act(x · scale + shift)`.
pub(crate) struct Normaliser {
    planes: Planes,
    relu: bool,
    mean: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
    inv_std: Vec<f64>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Normaliser {
    /// Statistics of `x` and the map with `γ`, `β`.
    pub fn new(x: &[f32], p: Planes, gamma: &[f32], beta: &[f32], eps: f64, relu: bool, op: &str) -> Result<Self> {
        let stats = PlaneSums::new(p.b * p.c);
        x.par_chunks(p.hw).enumerate().for_each(|(plane, x)| stats.record(plane, plane_stats(x)));
        Normaliser::from_planes(&stats, p, gamma, beta, eps, relu, op)
    }

    /// The statistics from each plane's [`plane_stats`] (recorded while the input was in cache)
    /// and the map with `γ`, `β`. Per channel, the planes' sums and centred squares are combined
    /// in f64 (Chan et al.'s parallel variance).
    pub fn from_planes(
        stats: &PlaneSums,
        p: Planes,
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
        relu: bool,
        op: &str,
    ) -> Result<Self> {
        if gamma.len() != p.c || beta.len() != p.c {
            bail!("{op}: {} channels but γ has {} and β {} values", p.c, gamma.len(), beta.len())
        }
        let (mean, var): (Vec<f64>, Vec<f64>) = (0..p.c)
            .map(|ch| {
                let planes = || (0..p.b).map(|i| stats.get(i * p.c + ch));
                let mean = planes().map(|(s, _)| s as f64).sum::<f64>() / p.n();
                let hw = p.hw as f64;
                let m2: f64 = planes().map(|(s, q)| q as f64 + hw * (s as f64 / hw - mean).powi(2)).sum();
                (mean, m2 / p.n())
            })
            .unzip();
        let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f32> = inv_std.iter().zip(gamma).map(|(inv, &g)| (g as f64 * inv) as f32).collect();
        let shift = (0..p.c).map(|ch| (beta[ch] as f64 - mean[ch] * scale[ch] as f64) as f32).collect();
        Ok(Normaliser { planes: p, relu, mean, var, inv_std, scale, shift })
    }

    /// Channel `ch`'s affine map `(scale, shift)`: `x · scale + shift` before the ReLU.
    pub fn affine(&self, ch: usize) -> (f32, f32) {
        (self.scale[ch], self.shift[ch])
    }

    /// The normalised (and rectified) output for input `x`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let hw = self.planes.hw;
        par_build(x.len(), hw, |plane, blank| {
            let (scale, shift, floor) = self.map_of(plane);
            blank.map([&x[plane * hw..][..hw]], |[x]| (x * scale + shift).max(floor))
        })
    }

    /// [`Normaliser::apply`] on one plane (number `plane` of the batch) into `out`.
    pub fn apply_plane(&self, plane: usize, x: &[f32], out: &mut [f32]) {
        let (scale, shift, floor) = self.map_of(plane);
        for (o, &x) in out.iter_mut().zip(x) {
            *o = (x * scale + shift).max(floor);
        }
    }

    /// Plane `plane`'s `(scale, shift, floor)`: `max(x · scale + shift, floor)`.
    fn map_of(&self, plane: usize) -> (f32, f32, f32) {
        let ch = plane % self.planes.c;
        (self.scale[ch], self.shift[ch], if self.relu { 0.0 } else { f32::NEG_INFINITY })
    }

    /// Plane `plane`'s `(Σ dy', Σ dy' · (x − mean))` for its input `x` and output gradient `dy`
    /// (in f32 lanes): the backward's sums, recorded by whichever pass produces `dy`.
    pub fn plane_grad_sums(&self, plane: usize, x: &[f32], dy: &[f32]) -> (f32, f32) {
        let ch = plane % self.planes.c;
        let mut s = (0f32, 0f32);
        grad_sums_row(x, dy, self.scale[ch], self.shift[ch], self.relu, self.mean[ch] as f32, &mut s);
        s
    }

    /// [`Normaliser::plane_grad_sums`] for an output gradient that is zero but at the positions
    /// `at` of the plane, where it is `gy` (added where positions repeat): a max-pool's gradient
    /// before it is spread over the plane. Summed in f64 (no lanes to vectorise over).
    pub fn plane_grad_sums_sparse(&self, plane: usize, x: &[f32], (at, gy): (&[u32], &[f32])) -> (f32, f32) {
        let ch = plane % self.planes.c;
        let (scale, shift, mean) = (self.scale[ch], self.shift[ch], self.mean[ch]);
        let mut s = (0f64, 0f64);
        for (&a, &d) in at.iter().zip(gy) {
            let xv = x[a as usize];
            if !self.relu || xv * scale + shift > 0.0 {
                s = (s.0 + d as f64, s.1 + d as f64 * (xv as f64 - mean));
            }
        }
        (s.0 as f32, s.1 as f32)
    }

    /// The backward for output gradient `dy`: `dx_i = a · dy'_i + b · x_i + k` per channel
    /// `(a, b, k)`, and `[dγ | dβ]`.
    pub fn backward(&self, x: &[f32], dy: &[f32]) -> Gradient {
        let hw = self.planes.hw;
        self.gradient_of(|plane| self.plane_grad_sums(plane, &x[plane * hw..][..hw], &dy[plane * hw..][..hw]))
    }

    /// [`Normaliser::backward`] from per-plane sums recorded while `dy` was produced.
    pub fn gradient(&self, sums: &PlaneSums) -> Gradient {
        self.gradient_of(|plane| sums.get(plane))
    }

    /// The gradient from each plane's sums (`plane_sums`): per channel, the planes added in f64
    /// in batch order.
    fn gradient_of(&self, plane_sums: impl Fn(usize) -> (f32, f32) + Sync) -> Gradient {
        let p = self.planes;
        let sums: Vec<(f64, f64)> = (0..p.c)
            .into_par_iter()
            .map(|ch| {
                let total = (0..p.b)
                    .map(|i| plane_sums(i * p.c + ch))
                    .fold((0f64, 0f64), |t, s| (t.0 + s.0 as f64, t.1 + s.1 as f64));
                (total.0, total.1 * self.inv_std[ch])
            })
            .collect();
        let n = p.n();
        // a = γ/σ, b = −γ/σ · Σ(dy' x̂)/(n σ) and k chosen so that the whole is
        // γ/σ · (dy' − Σdy'/n − x̂ Σ(dy' x̂)/n).
        let coef = (0..p.c)
            .map(|ch| {
                let (sum_dy, sum_dy_xhat) = sums[ch];
                let (a, inv) = (self.scale[ch] as f64, self.inv_std[ch]);
                let b = -a * sum_dy_xhat / n * inv;
                let k = -a * sum_dy / n - b * self.mean[ch];
                (a as f32, b as f32, k as f32)
            })
            .collect();
        let params = sums.iter().map(|s| s.1 as f32).chain(sums.iter().map(|s| s.0 as f32)).collect();
        Gradient { coef, params }
    }

    /// Planes in the batch (`B·C`).
    pub fn planes(&self) -> usize {
        self.planes.b * self.planes.c
    }

    /// One row of `dx` (channel `ch`) from [`Normaliser::backward`]'s coefficients.
    pub fn dx_row(&self, g: &Gradient, ch: usize, x: &[f32], dy: &[f32], out: &mut [f32]) {
        let (a, b, k) = g.coef[ch];
        dx_row(x, dy, self.scale[ch], self.shift[ch], self.relu, a, b, k, out)
    }

    /// [`Normaliser::dx_row`] of a whole plane for the sparse output gradient of
    /// [`Normaliser::plane_grad_sums_sparse`].
    pub fn dx_plane_sparse(&self, g: &Gradient, ch: usize, x: &[f32], (at, gy): (&[u32], &[f32]), out: &mut [f32]) {
        let (a, b, k) = g.coef[ch];
        let (scale, shift) = (self.scale[ch], self.shift[ch]);
        for (o, &xv) in out.iter_mut().zip(x) {
            *o = b * xv + k;
        }
        for (&p, &d) in at.iter().zip(gy) {
            let p = p as usize;
            if !self.relu || x[p] * scale + shift > 0.0 {
                out[p] += a * d;
            }
        }
    }

    /// The whole input gradient, plane by plane.
    fn dx_all(&self, g: &Gradient, x: &[f32], dy: &[f32], out: &mut [f32]) {
        let hw = self.planes.hw;
        out.par_chunks_mut(hw).enumerate().for_each(|(plane, dst)| {
            self.dx_row(g, plane % self.planes.c, &x[plane * hw..][..hw], &dy[plane * hw..][..hw], dst)
        });
    }

    /// `(mean, biased variance)` as `(C,)` f32 tensors, for the running statistics.
    pub fn stats(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let t = |v: &[f64]| Tensor::from_iter(v.iter().map(|&v| v as f32), device);
        Ok((t(&self.mean)?, t(&self.var)?))
    }
}

/// One plane's `(Σ x, Σ (x − m)²)`, `m` its mean: the forward's statistics, per plane while it is
/// in cache (two passes over it, each summed in f32 lanes).
pub(crate) fn plane_stats(x: &[f32]) -> (f32, f32) {
    let (mut sum, mut m2) = (0f32, 0f32);
    lane_sum(x, 0.0, false, &mut sum);
    lane_sum(x, sum / x.len().max(1) as f32, true, &mut m2);
    (sum, m2)
}

simd_dispatch! {
    /// `Σ (x − shift)`, or `Σ (x − shift)²` when `square`, in 8 lanes so that it vectorises.
    fn lane_sum(x: &[f32], shift: f32, square: bool, out: &mut f32) {
        let mut acc = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        let term = |v: f32| if square { (v - shift) * (v - shift) } else { v - shift };
        for c in chunks {
            for l in 0..8 {
                acc[l] += term(c[l]);
            }
        }
        for (l, &v) in rest.iter().enumerate() {
            acc[l] += term(v);
        }
        *out = acc.iter().sum();
    }
}

/// Calls `run` with the output-gradient mask of the ReLU: `dy` where the forward's output
/// `max(x · scale + shift, 0)` was positive (the same expression as [`Normaliser::apply`], so
/// exactly the forward's mask), or `dy` unmasked without the ReLU. Each is its own monomorphised loop,
/// the mask a branch-free select, so both vectorise.
macro_rules! with_mask {
    ($relu:expr, $scale:expr, $shift:expr, $run:ident($($arg:expr),*)) => {
        if $relu {
            let (scale, shift) = ($scale, $shift);
            $run($($arg,)* |x: f32, dy: f32| if x * scale + shift > 0.0 { dy } else { 0.0 })
        } else {
            $run($($arg,)* |_: f32, dy: f32| dy)
        }
    };
}

simd_dispatch! {
    /// `sums += (Σ dy', Σ dy' · (x − mean))` over a row.
    fn grad_sums_row(x: &[f32], dy: &[f32], scale: f32, shift: f32, relu: bool, mean: f32, sums: &mut (f32, f32)) {
        with_mask!(relu, scale, shift, grad_sums(x, dy, mean, sums))
    }
}

/// [`grad_sums_row`] for one mask, in 8 lanes so that the sums vectorise.
#[inline(always)]
fn grad_sums(x: &[f32], dy: &[f32], mean: f32, sums: &mut (f32, f32), mask: impl Fn(f32, f32) -> f32) {
    let (mut s0, mut s1) = ([0f32; 8], [0f32; 8]);
    let (xc, dc) = (x.chunks_exact(8), dy.chunks_exact(8));
    let (xr, dr) = (xc.remainder(), dc.remainder());
    for (xs, ds) in xc.zip(dc) {
        for l in 0..8 {
            let d = mask(xs[l], ds[l]);
            s0[l] += d;
            s1[l] += d * (xs[l] - mean);
        }
    }
    for (l, (&xv, &d)) in xr.iter().zip(dr).enumerate() {
        let d = mask(xv, d);
        s0[l] += d;
        s1[l] += d * (xv - mean);
    }
    sums.0 += s0.iter().sum::<f32>();
    sums.1 += s1.iter().sum::<f32>();
}

simd_dispatch! {
    /// `out = a · dy' + b · x + k`.
    fn dx_row(x: &[f32], dy: &[f32], scale: f32, shift: f32, relu: bool, a: f32, b: f32, k: f32, out: &mut [f32]) {
        with_mask!(relu, scale, shift, dx(x, dy, (a, b, k), out))
    }
}

/// [`dx_row`] for one mask.
#[inline(always)]
fn dx(x: &[f32], dy: &[f32], (a, b, k): (f32, f32, f32), out: &mut [f32], mask: impl Fn(f32, f32) -> f32) {
    for ((o, &xv), &d) in out.iter_mut().zip(x).zip(dy) {
        *o = a * mask(xv, d) + b * xv + k;
    }
}

/// Two sums per plane, each plane's recorded once by the pass that has it in cache, from
/// whichever thread computes it: the forward's statistics ([`plane_stats`]) or the backward's
/// ([`Normaliser::plane_grad_sums`]).
pub(crate) struct PlaneSums(Vec<[AtomicU32; 2]>);

impl PlaneSums {
    pub fn new(planes: usize) -> PlaneSums {
        PlaneSums((0..planes).map(|_| [AtomicU32::new(0), AtomicU32::new(0)]).collect())
    }

    pub fn record(&self, plane: usize, (a, b): (f32, f32)) {
        self.0[plane][0].store(a.to_bits(), Ordering::Relaxed);
        self.0[plane][1].store(b.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self, plane: usize) -> (f32, f32) {
        let [a, b] = &self.0[plane];
        (f32::from_bits(a.load(Ordering::Relaxed)), f32::from_bits(b.load(Ordering::Relaxed)))
    }
}

/// [`Normaliser::backward`]'s result.
pub(crate) struct Gradient {
    coef: Vec<(f32, f32, f32)>,
    /// `[dγ | dβ]`.
    pub params: Vec<f32>,
}

/// `(x, γ, β) -> act(BatchNorm(x))` with the batch statistics; the [`Normaliser`] is kept in
/// `saved` for the backward and the running statistics.
pub(crate) struct BatchNormTrain {
    pub eps: f64,
    pub relu: bool,
    pub saved: Arc<OnceLock<Normaliser>>,
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
        let x = f32_slice(xs, xl, self.name())?;
        let (gamma, beta) = (f32_slice(gs, gl, self.name())?, f32_slice(bs, bl, self.name())?);
        let norm = Normaliser::new(x, p, gamma, beta, self.eps, self.relu, self.name())?;
        let y = norm.apply(x);
        keep(&self.saved, norm, self.name())?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op2_no_bwd(&grad.contiguous()?, &BatchNormBackward { saved: self.saved.clone() })?;
        let [dx, dgamma, dbeta] = split_flat(&all, [x.shape(), gamma.shape(), gamma.shape()])?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Stores the forward's statistics for the backward.
pub(crate) fn keep<T>(saved: &OnceLock<T>, value: T, op: &str) -> Result<()> {
    if saved.set(value).is_err() {
        bail!("{op}: the op was applied twice")
    }
    Ok(())
}

/// The statistics a forward kept, or an error naming the op.
pub(crate) fn kept<'a, T>(saved: &'a OnceLock<T>, op: &str) -> Result<&'a T> {
    match saved.get() {
        Some(v) => Ok(v),
        None => bail!("{op}: backward before forward"),
    }
}

/// `(x, dy) -> [dx | dγ | dβ]` flattened.
struct BatchNormBackward {
    saved: Arc<OnceLock<Normaliser>>,
}

impl CustomOp2 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "castream-batch-norm-train-backward"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let norm = kept(&self.saved, self.name())?;
        let (x, dy) = (f32_slice(xs, xl, self.name())?, f32_slice(ds, dl, self.name())?);
        if dy.len() != x.len() {
            bail!("{}: gradient {:?} does not match input {:?}", self.name(), dl.dims(), xl.dims())
        }
        let g = norm.backward(x, dy);
        let mut out = vec![0f32; x.len() + g.params.len()];
        let (dx, params) = out.split_at_mut(x.len());
        norm.dx_all(&g, x, dy, dx);
        params.copy_from_slice(&g.params);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
