//! Max pooling with PyTorch's semantics (`ceil_mode = false`, dilation 1): padded positions never
//! win, the first maximum in row-major window order wins ties, and a NaN wins over numbers.
//!
//! candle's backward divides the gradient by k² and is missing when kernel != stride; here the
//! backward recomputes each window's argmax from the input (nothing stored in the forward) and
//! routes the whole output gradient to it, accumulating where windows overlap.

use crate::cpu::{f32_slice, par_build, simd_dispatch, with_scratch};
use crate::im2col::{gather_strided, valid_range};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

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

/// Per-row scratch of the max-pool backward, one entry per output column.
struct Winners {
    /// The running maximum of each window.
    best: Vec<f32>,
    /// Its position in the plane.
    at: Vec<u32>,
    /// The candidates of one kernel offset, gathered contiguously.
    cand: Vec<f32>,
    /// `ox * stride`: a candidate's column relative to the offset's first.
    step: Vec<u32>,
}

simd_dispatch! {
    /// Routes one plane's output gradient to each window's argmax, one output row at a time: for
    /// each kernel offset in row-major window order, every window of the row compares its
    /// candidate with its running maximum (PyTorch's rule: a larger value or a NaN replaces it) —
    /// branch-free selects over contiguous arrays, which vectorise; then the row's gradients are
    /// added at the winners. `gx` must start at zero. Per-window argmax loops spent most of their
    /// time in mispredicted comparisons.
    fn backward_plane(op: &MaxPool2d, g: &PoolGeom, x: &[f32], gy: &[f32], gx: &mut [f32], r: &mut Winners) {
        let (k, s, p) = (op.kernel, op.stride, op.padding);
        for (oy, gyr) in gy.chunks_exact(g.ow).enumerate() {
            let (y0, y1, _, _) = op.window(g, oy, 0);
            r.best.fill(f32::NEG_INFINITY);
            for (ox, a) in r.at.iter_mut().enumerate() {
                *a = (y0 * g.w + op.window(g, oy, ox).2) as u32;
            }
            for iy in y0..y1 {
                let row = &x[iy * g.w..][..g.w];
                for kx in 0..k {
                    let (lo, hi) = valid_range(kx, p, s, g.w, g.ow);
                    gather_strided(&mut r.cand[lo..hi], &row[lo * s + kx - p..], s);
                    // Position of candidate `ox`: `iy * w + ox * s + kx - p` (>= 0 for ox >= lo).
                    let base = ((iy * g.w + kx) as u32).wrapping_sub(p as u32);
                    let (best, at) = (&mut r.best[lo..hi], &mut r.at[lo..hi]);
                    update_winners(best, at, &r.cand[lo..hi], &r.step[lo..hi], base);
                }
            }
            for (&a, &d) in r.at.iter().zip(gyr) {
                gx[a as usize] += d;
            }
        }
    }
}

/// One kernel offset's candidates against the running maxima. Blocks of eight are updated in
/// registers and stored whole: written in place as `if wins { .. }`, LLVM emits masked stores,
/// which are slow on AMD cores. Candidate `i` sits at `base + step[i]` (wrapping: `base` may be
/// "negative" by the padding).
#[inline(always)]
fn update_winners(best: &mut [f32], at: &mut [u32], cand: &[f32], step: &[u32], base: u32) {
    #[inline(always)]
    fn one(b: f32, a: u32, v: f32, at_v: u32) -> (f32, u32) {
        if v > b || v.is_nan() {
            (v, at_v)
        } else {
            (b, a)
        }
    }
    let n = best.len() / 8 * 8;
    let blocks = best[..n].chunks_exact_mut(8).zip(at[..n].chunks_exact_mut(8));
    for ((b, a), (v, o)) in blocks.zip(cand[..n].chunks_exact(8).zip(step[..n].chunks_exact(8))) {
        let (mut bb, mut aa) = ([0f32; 8], [0u32; 8]);
        for j in 0..8 {
            (bb[j], aa[j]) = one(b[j], a[j], v[j], base.wrapping_add(o[j]));
        }
        b.copy_from_slice(&bb);
        a.copy_from_slice(&aa);
    }
    for i in n..best.len() {
        (best[i], at[i]) = one(best[i], at[i], cand[i], base.wrapping_add(step[i]));
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
        let (plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let gx = par_build(x.len(), plane, |i, blank| {
            let mut gxp = blank.fill(|_| 0.0);
            let mut r = Winners {
                best: vec![0.0; g.ow],
                at: vec![0; g.ow],
                cand: vec![0.0; g.ow],
                step: (0..g.ow).map(|ox| (ox * self.0.stride) as u32).collect(),
            };
            backward_plane(&self.0, &g, &x[i * plane..][..plane], &gy[i * out_plane..][..out_plane], &mut gxp, &mut r);
            gxp
        });
        Ok((CpuStorage::F32(gx), xl.shape().clone()))
    }
}
