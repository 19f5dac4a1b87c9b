//! Max pooling with PyTorch's semantics (`ceil_mode = false`, dilation 1): padded positions never
//! win, the first maximum in row-major window order wins ties, and a NaN wins over numbers.
//!
//! candle's backward divides the gradient by k² and is missing when kernel != stride; here the
//! backward recomputes each window's argmax from the input (nothing stored in the forward) and
//! routes the whole output gradient to it, accumulating where windows overlap.

use crate::cpu::{f32_slice, par_build, simd_dispatch, with_scratch, zeros};
use crate::im2col::valid_range;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

pub(crate) struct PoolGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl MaxPool2d {
    pub(crate) fn geom(&self, dims: &[usize]) -> Result<PoolGeom> {
        let &[b, c, h, w] = dims else { bail!("max_pool2d: expected a 4-d input, got {dims:?}") };
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if k == 0 || s == 0 || 2 * p > k || h + 2 * p < k || w + 2 * p < k {
            bail!("max_pool2d: kernel {k}, stride {s}, padding {p} invalid for input {dims:?} (PyTorch needs padding <= kernel / 2)")
        }
        Ok(PoolGeom { planes: b * c, h, w, oh: (h + 2 * p - k) / s + 1, ow: (w + 2 * p - k) / s + 1 })
    }

    /// The clipped input window `[y0, y1) x [x0, x1)` of output `(oy, ox)`.
    fn window(&self, g: &PoolGeom, oy: usize, ox: usize) -> (usize, usize, usize, usize) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let y0 = (oy * s).saturating_sub(p);
        let x0 = (ox * s).saturating_sub(p);
        (y0, (oy * s + k - p).min(g.h), x0, (ox * s + k - p).min(g.w))
    }

    /// Index within the plane of the window's maximum, PyTorch's rule: start from the first valid
    /// position at -inf, replace on `v > max || v.is_nan()`.
    #[inline(always)]
    fn argmax(&self, g: &PoolGeom, plane: &[f32], oy: usize, ox: usize) -> usize {
        let (y0, y1, x0, x1) = self.window(g, oy, ox);
        let (mut best, mut max) = (y0 * g.w + x0, f32::NEG_INFINITY);
        for iy in y0..y1 {
            for ix in x0..x1 {
                let v = plane[iy * g.w + ix];
                if v > max || v.is_nan() {
                    max = v;
                    best = iy * g.w + ix;
                }
            }
        }
        best
    }
}

/// PyTorch's update rule: a larger value or a NaN replaces the running maximum.
#[inline(always)]
fn max_nan(max: f32, v: f32) -> f32 {
    if v > max || v.is_nan() {
        v
    } else {
        max
    }
}

simd_dispatch! {
    /// The window maxima of one plane, separably: for each output row, the maximum over its
    /// window's input rows (`col`, a vectorised pass over whole rows per kernel row), then the
    /// horizontal window maxima of that row into `y`, which must start at −inf (its callers build
    /// it so). The same values as the direct window maximum (max is associative; any NaN gives
    /// NaN).
    pub(crate) fn forward_plane(op: &MaxPool2d, g: &PoolGeom, x: &[f32], col: &mut [f32], y: &mut [f32]) {
        let (k, s, p) = (op.kernel, op.stride, op.padding);
        for (oy, out) in y.chunks_exact_mut(g.ow).enumerate() {
            let (y0, y1, _, _) = op.window(g, oy, 0);
            col.fill(f32::NEG_INFINITY);
            for row in x[y0 * g.w..y1 * g.w].chunks_exact(g.w) {
                for (c, &v) in col.iter_mut().zip(row) {
                    *c = max_nan(*c, v);
                }
            }
            for kx in 0..k {
                let (lo, hi) = valid_range(kx, p, s, g.w, g.ow);
                for ox in lo..hi {
                    out[ox] = max_nan(out[ox], col[ox * s + kx - p]);
                }
            }
        }
    }
}

simd_dispatch! {
    fn backward_plane(op: &MaxPool2d, g: &PoolGeom, x: &[f32], gy: &[f32], gx: &mut [f32]) {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                gx[op.argmax(g, x, oy, ox)] += gy[oy * g.ow + ox];
            }
        }
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "castream-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(l.dims())?;
        let x = f32_slice(s, l, self.name())?;
        let plane = g.oh * g.ow;
        let y = par_build(g.planes * plane, plane, |i, blank| {
            let mut yp = blank.fill(|_| f32::NEG_INFINITY);
            with_scratch(g.w, |col| forward_plane(self, &g, &x[i * g.h * g.w..][..g.h * g.w], col, &mut yp));
            yp
        });
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPool2dBackward(*self))?))
    }
}

/// `(x, grad_y) -> grad_x`.
pub(crate) struct MaxPool2dBackward(pub MaxPool2d);

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "castream-max-pool2d-backward"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0.geom(xl.dims())?;
        let d = xl.dims();
        if gl.dims() != [d[0], d[1], g.oh, g.ow] {
            bail!("{}: gradient {:?} does not match the output of {:?}", self.name(), gl.dims(), d)
        }
        let x = f32_slice(xs, xl, self.name())?;
        let gy = f32_slice(gs, gl, self.name())?;
        let mut gx = zeros(x.len());
        gx.par_chunks_mut(g.h * g.w)
            .zip(x.par_chunks(g.h * g.w))
            .zip(gy.par_chunks(g.oh * g.ow))
            .for_each(|((gxp, xp), gyp)| backward_plane(&self.0, &g, xp, gyp, gxp));
        Ok((CpuStorage::F32(gx), xl.shape().clone()))
    }
}
