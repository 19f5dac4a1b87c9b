//! Bilinear resizing with `align_corners = false`, matching PyTorch's CPU kernel bit for bit in
//! its index arithmetic (f32 source coordinates, clamped at 0, upper neighbour clamped to the
//! edge). candle has no backward for it; ours scatters each output gradient to its four sources.

use crate::cpu::{f32_slice, simd_dispatch, zeros};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Source taps of one output coordinate: `out = l0 · in[i0] + l1 · in[i1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub l0: f32,
    pub l1: f32,
}

/// PyTorch's `area_pixel_compute_source_index` + `guard_index_and_lambda` for one axis, with the
/// scale `in / out` (no explicit scale factor).
pub(crate) fn taps(len_in: usize, len_out: usize) -> Vec<Tap> {
    let scale = len_in as f32 / len_out as f32;
    (0..len_out)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(len_in - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < len_in - 1 { i0 + 1 } else { i0 };
            Tap { i0, i1, l0: 1.0 - l1, l1 }
        })
        .collect()
}

struct Plan {
    planes: usize,
    h: usize,
    w: usize,
    ty: Vec<Tap>,
    tx: Vec<Tap>,
}

fn plan(dims: &[usize], oh: usize, ow: usize) -> Result<Plan> {
    let &[b, c, h, w] = dims else { bail!("upsample_bilinear2d: expected a 4-d input, got {dims:?}") };
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        bail!("upsample_bilinear2d: empty size, {dims:?} to {oh}x{ow}")
    }
    Ok(Plan { planes: b * c, h, w, ty: taps(h, oh), tx: taps(w, ow) })
}

simd_dispatch! {
    fn forward_plane(p: &Plan, x: &[f32], y: &mut [f32]) {
        let ow = p.tx.len();
        for (ty, out) in p.ty.iter().zip(y.chunks_mut(ow)) {
            let (r0, r1) = (&x[ty.i0 * p.w..][..p.w], &x[ty.i1 * p.w..][..p.w]);
            for (tx, o) in p.tx.iter().zip(out) {
                *o = ty.l0 * (tx.l0 * r0[tx.i0] + tx.l1 * r0[tx.i1]) + ty.l1 * (tx.l0 * r1[tx.i0] + tx.l1 * r1[tx.i1]);
            }
        }
    }
}

simd_dispatch! {
    fn backward_plane(p: &Plan, gy: &[f32], gx: &mut [f32]) {
        let ow = p.tx.len();
        for (ty, grow) in p.ty.iter().zip(gy.chunks(ow)) {
            for (tx, &g) in p.tx.iter().zip(grow) {
                let (a, b) = (ty.l0 * g, ty.l1 * g);
                gx[ty.i0 * p.w + tx.i0] += a * tx.l0;
                gx[ty.i0 * p.w + tx.i1] += a * tx.l1;
                gx[ty.i1 * p.w + tx.i0] += b * tx.l0;
                gx[ty.i1 * p.w + tx.i1] += b * tx.l1;
            }
        }
    }
}

/// Forward resize of `(B, C, H, W)` to `(B, C, h, w)`.
pub(crate) struct UpsampleBilinear2d {
    pub h: usize,
    pub w: usize,
}

impl CustomOp1 for UpsampleBilinear2d {
    fn name(&self) -> &'static str {
        "castream-upsample-bilinear2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = plan(l.dims(), self.h, self.w)?;
        let x = f32_slice(s, l, self.name())?;
        let mut y = vec![0f32; p.planes * self.h * self.w];
        y.par_chunks_mut(self.h * self.w).zip(x.par_chunks(p.h * p.w)).for_each(|(yp, xp)| forward_plane(&p, xp, yp));
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], self.h, self.w))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&UpsampleBilinear2dBackward { h, w })?))
    }
}

/// `grad_y -> grad_x`, the input being `h x w`.
struct UpsampleBilinear2dBackward {
    h: usize,
    w: usize,
}

impl CustomOp1 for UpsampleBilinear2dBackward {
    fn name(&self) -> &'static str {
        "castream-upsample-bilinear2d-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims();
        let &[b, c, oh, ow] = d else { bail!("{}: expected a 4-d gradient, got {d:?}", self.name()) };
        let p = plan(&[b, c, self.h, self.w], oh, ow)?;
        let gy = f32_slice(s, l, self.name())?;
        let mut gx = zeros(p.planes * self.h * self.w);
        gx.par_chunks_mut(self.h * self.w)
            .zip(gy.par_chunks(oh * ow))
            .for_each(|(gxp, gyp)| backward_plane(&p, gyp, gxp));
        Ok((CpuStorage::F32(gx), Shape::from((b, c, self.h, self.w))))
    }
}
