//! LayerNorm over one dimension of a contiguous tensor (ConvNeXt's channels-first `LayerNorm2d`
//! over dimension 1 of NCHW, and its channels-last `LayerNorm` over the last dimension) as one op
//! with a closed-form backward. Built from candle's ops it is seven elementwise passes and two
//! reductions, each with its own backward and allocation.
//!
//! The tensor is viewed as `outer x C x inner` (C the normalised dimension); each `C x inner` block
//! is normalised column by column: `y = x̂ · γ + β`, `x̂ = (x − mean) / sqrt(var + eps)`. Backward,
//! with `g = dy · γ`: `dx = (g − mean_C(g) − x̂ · mean_C(g · x̂)) / sqrt(var + eps)`,
//! `dγ = Σ dy · x̂`, `dβ = Σ dy`.

use crate::cpu::{f32_slice, split_flat};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy)]
struct Blocks {
    c: usize,
    inner: usize,
}

impl Blocks {
    fn of(dims: &[usize], dim: usize, op: &str) -> Result<Blocks> {
        if dim >= dims.len() || dims[dim] == 0 {
            bail!("{op}: cannot normalise dimension {dim} of shape {dims:?}")
        }
        Ok(Blocks { c: dims[dim], inner: dims[dim + 1..].iter().product() })
    }

    fn len(&self) -> usize {
        self.c * self.inner
    }
}

/// Per column of one `C x inner` block: the mean and `1 / sqrt(var + eps)`, accumulated row by
/// row so the inner loop runs over contiguous memory.
fn column_stats(x: &[f32], b: Blocks, eps: f64) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f32; b.inner];
    for row in x.chunks_exact(b.inner) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= b.c as f32);
    let mut var = vec![0f32; b.inner];
    for row in x.chunks_exact(b.inner) {
        var.iter_mut().zip(row).zip(&mean).for_each(|((s, v), m)| *s += (v - m) * (v - m));
    }
    let rstd = var.iter().map(|s| (1.0 / ((*s as f64 / b.c as f64) + eps).sqrt()) as f32).collect();
    (mean, rstd)
}

/// Blocks per parallel task: enough work per task when blocks are small (channels-last rows).
fn blocks_per_task(b: Blocks) -> usize {
    (4096 / b.len().max(1)).max(1)
}

/// `(x, γ, β) -> y`.
pub(crate) struct LayerNorm {
    pub dim: usize,
    pub eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "castream-layer-norm"
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
        let b = Blocks::of(xl.dims(), self.dim, self.name())?;
        let (x, gamma, beta) =
            (f32_slice(xs, xl, self.name())?, f32_slice(gs, gl, self.name())?, f32_slice(bs, bl, self.name())?);
        if gamma.len() != b.c || beta.len() != b.c {
            bail!("{}: {} channels but γ has {} and β {} values", self.name(), b.c, gamma.len(), beta.len())
        }
        let mut y = vec![0f32; x.len()];
        let task = blocks_per_task(b) * b.len();
        y.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(ys, xs)| {
            for (yb, xb) in ys.chunks_exact_mut(b.len()).zip(xs.chunks_exact(b.len())) {
                let (mean, rstd) = column_stats(xb, b, self.eps);
                for (ch, (yr, xr)) in yb.chunks_exact_mut(b.inner).zip(xb.chunks_exact(b.inner)).enumerate() {
                    let (g, be) = (gamma[ch], beta[ch]);
                    for (((yv, xv), m), r) in yr.iter_mut().zip(xr).zip(&mean).zip(&rstd) {
                        *yv = (xv - m) * r * g + be;
                    }
                }
            }
        });
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
        let all =
            x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &LayerNormBackward { dim: self.dim, eps: self.eps })?;
        let [dx, dgamma, dbeta] = split_flat(&all, [x.shape(), gamma.shape(), gamma.shape()])?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, γ, dy) -> [dx | dγ | dβ]` flattened.
struct LayerNormBackward {
    dim: usize,
    eps: f64,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "castream-layer-norm-backward"
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
        let b = Blocks::of(xl.dims(), self.dim, self.name())?;
        let (x, gamma, dy) =
            (f32_slice(xs, xl, self.name())?, f32_slice(gs, gl, self.name())?, f32_slice(ds, dl, self.name())?);
        if dy.len() != x.len() || gamma.len() != b.c {
            bail!("{}: gradient {:?} or γ {:?} does not match input {:?}", self.name(), dl.dims(), gl.dims(), xl.dims())
        }
        let mut dx = vec![0f32; x.len()];
        let task = blocks_per_task(b) * b.len();
        // Each task returns its partial (dγ, dβ), summed at the end.
        let partial = dx
            .par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .zip(dy.par_chunks(task))
            .map(|((dxs, xs), dys)| {
                let (mut dg, mut db) = (vec![0f64; b.c], vec![0f64; b.c]);
                for ((dxb, xb), dyb) in
                    dxs.chunks_exact_mut(b.len()).zip(xs.chunks_exact(b.len())).zip(dys.chunks_exact(b.len()))
                {
                    let (mean, rstd) = column_stats(xb, b, self.eps);
                    // Column means of g = dy · γ and of g · x̂.
                    let (mut m1, mut m2) = (vec![0f32; b.inner], vec![0f32; b.inner]);
                    for (ch, (xr, dr)) in xb.chunks_exact(b.inner).zip(dyb.chunks_exact(b.inner)).enumerate() {
                        let (mut sdx, mut sd) = (0f64, 0f64);
                        for (i, (&xv, &d)) in xr.iter().zip(dr).enumerate() {
                            let xhat = (xv - mean[i]) * rstd[i];
                            let g = d * gamma[ch];
                            m1[i] += g;
                            m2[i] += g * xhat;
                            sdx += (d * xhat) as f64;
                            sd += d as f64;
                        }
                        dg[ch] += sdx;
                        db[ch] += sd;
                    }
                    let inv_c = 1.0 / b.c as f32;
                    for (ch, ((dxr, xr), dr)) in dxb
                        .chunks_exact_mut(b.inner)
                        .zip(xb.chunks_exact(b.inner))
                        .zip(dyb.chunks_exact(b.inner))
                        .enumerate()
                    {
                        for (i, ((o, &xv), &d)) in dxr.iter_mut().zip(xr).zip(dr).enumerate() {
                            let xhat = (xv - mean[i]) * rstd[i];
                            *o = rstd[i] * (d * gamma[ch] - m1[i] * inv_c - xhat * m2[i] * inv_c);
                        }
                    }
                }
                (dg, db)
            })
            .reduce(
                || (vec![0f64; b.c], vec![0f64; b.c]),
                |(mut ga, mut ba), (gb, bb)| {
                    ga.iter_mut().zip(gb).for_each(|(a, v)| *a += v);
                    ba.iter_mut().zip(bb).for_each(|(a, v)| *a += v);
                    (ga, ba)
                },
            );
        let mut out = dx;
        out.extend(partial.0.iter().map(|&v| v as f32));
        out.extend(partial.1.iter().map(|&v| v as f32));
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * b.c)))
    }
}
