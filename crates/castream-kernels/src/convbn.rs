//! A convolution followed by training-mode BatchNorm (and a ReLU) as one op.
//!
//! As two ops, the convolution's output and its gradient are candle tensors: candle's backward
//! allocates a zero tensor plus an addition for every gradient it accumulates, and the
//! BatchNorm's input gradient is written out whole before the convolution's backward reads it
//! back. Here the convolution's output stays inside the op (kept for the backward with the batch
//! statistics), and the backward computes each image's BatchNorm input gradient just before that
//! image's GEMMs, while it is in cache.
//!
//! With a max-pool after the ReLU (the ResNet stem), each normalised plane is pooled while it is
//! in cache, so the full-resolution activation is never written out; the forward keeps each
//! window's argmax. The backward routes the pooled gradient through them as it computes the
//! BatchNorm's sums and each plane's input gradient, so the full-resolution gradient is never
//! written out either.

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept, Gradient, Normaliser, PlaneSums, Planes};
use crate::conv::{self, ConvArgs, Geom};
use crate::cpu::{f32_slice, split_flat, with_scratch};
use crate::pool::{argmax_row, MaxPool2d, Winners};
use crate::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// What the forward keeps: the convolution's output and its normalisation, and with a pool, the
/// position in its plane of each window's maximum.
pub(crate) struct Saved {
    z: Vec<f32>,
    pub norm: Normaliser,
    argmax: Vec<u32>,
}

/// `(x, w, [γ | β]) -> act(BatchNorm(conv(x, w)))` with the batch statistics, `act` a ReLU or
/// the identity, then the max-pool `pool` (which needs the ReLU).
pub(crate) struct ConvBnTrain {
    pub p: Conv2dParams,
    pub eps: f64,
    pub relu: bool,
    pub pool: Option<MaxPool2d>,
    pub saved: Arc<OnceLock<Saved>>,
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "castream-conv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.p, (xs, xl), (ws, wl))?;
        let params = g.per_channel(self.name(), (ps, pl), 2, "BatchNorm parameters (expected γ and β)")?;
        let (z, stats) = conv::forward_with_stats(&g, x, w);
        let (gamma, beta) = params.split_at(g.co);
        let planes = Planes::of(g.out_shape().dims(), self.name())?;
        let norm = Normaliser::from_planes(&stats, planes, gamma, beta, self.eps, self.relu, self.name())?;
        let Some(pool) = self.pool else {
            let y = norm.apply(&z);
            keep(&self.saved, Saved { z, norm, argmax: Vec::new() }, self.name())?;
            return Ok((CpuStorage::F32(y), g.out_shape()));
        };
        if !self.relu {
            bail!("{}: the fused max-pool follows a ReLU", self.name())
        }
        let pg = pool.geom(g.out_shape().dims())?;
        let (npix, pooled) = (g.npix(), pg.oh * pg.ow);
        let mut argmax = vec![0u32; pg.planes * pooled];
        let mut y = vec![0f32; pg.planes * pooled];
        y.par_chunks_mut(pooled).zip(argmax.par_chunks_mut(pooled)).enumerate().for_each(|(i, (yp, ap))| {
            let mut r = Winners::new(&pg, &pool);
            with_scratch(npix, |a| {
                norm.apply_plane(i, &z[i * npix..][..npix], a);
                for ((oy, yr), ar) in yp.chunks_mut(pg.ow).enumerate().zip(ap.chunks_mut(pg.ow)) {
                    argmax_row(&pool, &pg, a, oy, &mut r);
                    yr.copy_from_slice(r.best());
                    ar.copy_from_slice(r.at());
                }
            })
        });
        keep(&self.saved, Saved { z, norm, argmax }, self.name())?;
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.co, pg.oh, pg.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_x, need_w) = (x.track_op(), w.track_op());
        let op = ConvBnBackward { p: self.p, pool: self.pool, need_x, need_w, saved: self.saved.clone() };
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let [gx, gw, gp] = split_flat(&all, [x.shape(), w.shape(), params.shape()])?;
        Ok((need_x.then_some(gx), need_w.then_some(gw), Some(gp)))
    }
}

/// `(x, w, dy) -> [dx | dw | dγ | dβ]` flattened, `dy` the pooled output's gradient when the
/// forward pooled: it is routed to each window's maximum as the BatchNorm's gradient is computed,
/// plane by plane in cache, and the full-resolution gradient is never written out.
struct ConvBnBackward {
    p: Conv2dParams,
    pool: Option<MaxPool2d>,
    need_x: bool,
    need_w: bool,
    saved: Arc<OnceLock<Saved>>,
}

impl CustomOp3 for ConvBnBackward {
    fn name(&self) -> &'static str {
        "castream-conv-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Saved { z, norm, argmax } = kept(&self.saved, self.name())?;
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.p, (xs, xl), (ws, wl))?;
        let (need_x, need_w) = (self.need_x, self.need_w);
        let no_hook = |_: usize, _: &mut [f32]| {};
        let out = match self.pool {
            None => {
                let dy = g.output_grad(self.name(), (ds, dl))?;
                let grad = norm.backward(z, dy);
                backward(&g, (x, w), (z, norm, &grad), dy, need_x, need_w, no_hook)
            }
            Some(pool) => {
                let pg = pool.geom(g.out_shape().dims())?;
                let (npix, pooled) = (g.npix(), pg.oh * pg.ow);
                let gy = f32_slice(ds, dl, self.name())?;
                if dl.dims() != [g.b, g.co, pg.oh, pg.ow] || gy.len() != argmax.len() {
                    bail!(
                        "{}: gradient {:?} does not match the pooled output {:?}",
                        self.name(),
                        dl.dims(),
                        [g.b, g.co, pg.oh, pg.ow]
                    )
                }
                // Plane `i`'s gradient: `gy` at the windows' maxima.
                let sparse = |i: usize| (&argmax[i * pooled..][..pooled], &gy[i * pooled..][..pooled]);
                let sums = PlaneSums::new(pg.planes);
                (0..pg.planes)
                    .into_par_iter()
                    .for_each(|i| sums.record(i, norm.plane_grad_sums_sparse(i, &z[i * npix..][..npix], sparse(i))));
                let grad = norm.gradient(&sums);
                let dz = |i: usize, ch: usize, out: &mut [f32]| {
                    let plane = i * g.co + ch;
                    norm.dx_plane_sparse(&grad, ch, &z[plane * npix..][..npix], sparse(plane), out)
                };
                backward_with(&g, (x, w), &grad, dz, need_x, need_w, no_hook)
            }
        };
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// The gradients of conv + BatchNorm (+ ReLU) for the output gradient `dy`, from the conv output
/// `z`, the normalisation the forward kept and its gradient `grad` (its sums over `dy`):
/// `[dx | dw | dγ | dβ]` flattened (`dx`, `dw` left zero when not needed). Each image's
/// BatchNorm input gradient is computed just before that image's GEMMs, while it is in cache;
/// `done` sees each image's `dx` when complete ([`conv::backward`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    g: &Geom,
    (x, w): (&[f32], &[f32]),
    (z, norm, grad): (&[f32], &Normaliser, &Gradient),
    dy: &[f32],
    need_x: bool,
    need_w: bool,
    done: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let (npix, ylen) = (g.npix(), g.y_len());
    let dz = |i: usize, ch: usize, dz: &mut [f32]| {
        let at = i * ylen + ch * npix;
        norm.dx_row(grad, ch, &z[at..][..npix], &dy[at..][..npix], dz);
    };
    backward_with(g, (x, w), grad, dz, need_x, need_w, done)
}

/// [`backward`] with `dz(i, ch, out)` writing the BatchNorm's input gradient for channel `ch` of
/// image `i`.
fn backward_with(
    g: &Geom,
    (x, w): (&[f32], &[f32]),
    grad: &Gradient,
    dz: impl Fn(usize, usize, &mut [f32]) + Sync,
    need_x: bool,
    need_w: bool,
    done: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = conv::backward(g, (x, w), need_x, need_w, grad.params.len(), dz, done);
    let n = out.len();
    out[n - grad.params.len()..].copy_from_slice(&grad.params);
    out
}
