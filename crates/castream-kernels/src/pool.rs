//! Max pooling with PyTorch's semantics (`ceil_mode = false`, dilation 1): padded positions never
//! win, the first maximum in row-major window order wins ties, and a NaN wins over numbers.
//!
//! candle's backward divides the gradient by k² and is missing when kernel != stride; here the
//! backward recomputes each window's argmax from the input (nothing stored in the forward) and
//! routes the whole output gradient to it, accumulating where windows overlap. (The ResNet stem's
//! training op, in `convbn.rs`, keeps the argmax from its forward instead.)

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

/// `dst[i] = max_nan(a[i], b[i])`. Out of place on purpose: a running maximum updated in place
/// compiles to masked stores (`vmaskmovps`, only where the maximum changed), slow on AMD.
#[inline(always)]
fn max_into(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = max_nan(a, b);
    }
}

/// Output columns per register-resident block of [`forward_plane`]'s horizontal pass.
const ROW_BLOCK: usize = 64;

simd_dispatch! {
    /// The window maxima of one plane, separably: for each output row, the maximum over its
    /// window's input rows (a vectorised pass over whole rows per kernel row), then, per block of
    /// output columns, each kernel column's candidates gathered contiguously (vectorised for
    /// stride 2) and merged in one vectorised pass, into `y`. `scratch` holds `2 * g.w` floats.
    /// The same values as the direct window maximum (max is associative; any NaN gives NaN).
    pub(crate) fn forward_plane(op: &MaxPool2d, g: &PoolGeom, x: &[f32], scratch: &mut [f32], y: &mut [f32]) {
        let (k, s, p) = (op.kernel, op.stride, op.padding);
        let (mut col, mut next) = scratch[..2 * g.w].split_at_mut(g.w);
        for (oy, out) in y.chunks_exact_mut(g.ow).enumerate() {
            let (y0, y1, _, _) = op.window(g, oy, 0);
            let mut rows = x[y0 * g.w..y1 * g.w].chunks_exact(g.w);
            col.copy_from_slice(rows.next().expect("a window has at least one row"));
            for row in rows {
                max_into(next, col, row);
                std::mem::swap(&mut col, &mut next);
            }
            for start in (0..g.ow).step_by(ROW_BLOCK) {
                let n = (g.ow - start).min(ROW_BLOCK);
                let (mut a, mut b, mut cand) = ([f32::NEG_INFINITY; ROW_BLOCK], [0f32; ROW_BLOCK], [0f32; ROW_BLOCK]);
                // The running maxima and the next ones, swapped as references (not 64-float copies).
                let (mut acc, mut tmp) = (&mut a, &mut b);
                for kx in 0..k {
                    // Candidates outside the row (padding) are −inf.
                    let (lo, hi) = valid_range(kx, p, s, g.w, g.ow);
                    let (lo, hi) = (lo.clamp(start, start + n), hi.clamp(start, start + n));
                    cand[..n].fill(f32::NEG_INFINITY);
                    if lo < hi {
                        gather_strided(&mut cand[lo - start..hi - start], &col[lo * s + kx - p..], s);
                    }
                    max_into(&mut tmp[..n], &acc[..n], &cand[..n]);
                    std::mem::swap(&mut acc, &mut tmp);
                }
                out[start..start + n].copy_from_slice(&acc[..n]);
            }
        }
    }
}

/// Per-row scratch of the window argmax, one entry per output column (padded to whole blocks of
/// [`LANES`]).
pub(crate) struct Winners {
    /// Each window's maximum, and its position in the plane.
    best: Vec<f32>,
    at: Vec<u32>,
    /// The candidates of each kernel offset, gathered contiguously (−inf where the offset falls in
    /// the padding or past the row): `k * k` rows.
    cand: Vec<f32>,
    /// Each candidate row's position in the plane, relative to `ox * stride`.
    base: Vec<u32>,
    /// `ox * stride`.
    step: Vec<u32>,
    /// Per kernel column, the output columns whose candidate lies inside the row.
    valid: Vec<(usize, usize)>,
    /// Output columns, and their number rounded up to whole blocks.
    ow: usize,
    width: usize,
}

/// Output columns per block of the argmax: one AVX register of f32.
const LANES: usize = 8;

impl Winners {
    pub fn new(g: &PoolGeom, op: &MaxPool2d) -> Winners {
        let width = g.ow.next_multiple_of(LANES);
        let k2 = op.kernel * op.kernel;
        Winners {
            best: vec![0.0; width],
            at: vec![0; width],
            cand: vec![0.0; k2 * width],
            base: vec![0; k2],
            step: (0..width).map(|ox| (ox * op.stride) as u32).collect(),
            valid: (0..op.kernel).map(|kx| valid_range(kx, op.padding, op.stride, g.w, g.ow)).collect(),
            ow: g.ow,
            width,
        }
    }

    /// The maxima of the last [`argmax_row`].
    pub fn best(&self) -> &[f32] {
        &self.best[..self.ow]
    }

    /// Their positions in the plane.
    pub fn at(&self) -> &[u32] {
        &self.at[..self.ow]
    }
}

simd_dispatch! {
    /// The maximum and its position (PyTorch's rule: the first in row-major window order, a NaN
    /// wins) of each window of output row `oy` of plane `x`, into `r`. The candidates of each
    /// kernel offset are gathered into rows first; then each block of eight windows runs through
    /// them with its running maxima in registers, with branch-free selects ([`block_avx2`]):
    /// per-window loops spent most of their time in mispredicted comparisons.
    pub(crate) fn argmax_row(op: &MaxPool2d, g: &PoolGeom, x: &[f32], oy: usize, r: &mut Winners) {
        let (k, s, p, width) = (op.kernel, op.stride, op.padding, r.width);
        let (y0, y1, _, _) = op.window(g, oy, 0);
        let rows_used = (y1 - y0) * k;
        for (t, cand) in r.cand.chunks_exact_mut(width).take(rows_used).enumerate() {
            let (iy, kx) = (y0 + t / k, t % k);
            let (lo, hi) = r.valid[kx];
            cand[..lo].fill(f32::NEG_INFINITY);
            cand[hi..].fill(f32::NEG_INFINITY);
            gather_strided(&mut cand[lo..hi], &x[iy * g.w + lo * s + kx - p..], s);
            // Position of candidate `ox`: `iy * w + ox * s + kx - p` (wrapping: may be
            // "negative" by the padding where the candidate is −inf and never wins).
            r.base[t] = ((iy * g.w + kx) as u32).wrapping_sub(p as u32);
        }
        let avx2 = has_avx2();
        for ox0 in (0..g.ow).step_by(LANES) {
            let mut best = [f32::NEG_INFINITY; LANES];
            let mut at = [0u32; LANES];
            for (j, a) in at.iter_mut().enumerate() {
                // A window whose values are all −inf reports its first valid position.
                *a = (y0 * g.w + op.window(g, oy, (ox0 + j).min(g.ow - 1)).2) as u32;
            }
            let step: &[u32; LANES] = r.step[ox0..ox0 + LANES].try_into().expect("whole blocks");
            let rows = r.cand.chunks_exact(width).map(|c| c[ox0..ox0 + LANES].try_into().expect("whole blocks"));
            let rows = rows.zip(r.base.iter().copied()).take(rows_used);
            run_block(avx2, &mut best, &mut at, rows, step);
            r.best[ox0..ox0 + LANES].copy_from_slice(&best);
            r.at[ox0..ox0 + LANES].copy_from_slice(&at);
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[allow(unreachable_code)]
    false
}

/// [`block_avx2`] when `avx2` (which [`has_avx2`] gave), otherwise [`block`].
#[inline(always)]
fn run_block<'a>(
    avx2: bool,
    best: &mut [f32; LANES],
    at: &mut [u32; LANES],
    rows: impl Iterator<Item = (&'a [f32; LANES], u32)>,
    step: &[u32; LANES],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` says the CPU has AVX2.
        return unsafe { block_avx2(best, at, rows, step) };
    }
    let _ = avx2;
    block(best, at, rows, step)
}

/// A block of windows' running `(best, at)` through candidate rows `(values, base)`: a value
/// that is larger, or a NaN, replaces the maximum, its position being `base + step`.
#[inline(always)]
fn block<'a>(
    best: &mut [f32; LANES],
    at: &mut [u32; LANES],
    rows: impl Iterator<Item = (&'a [f32; LANES], u32)>,
    step: &[u32; LANES],
) {
    for (v, base) in rows {
        for j in 0..LANES {
            if v[j] > best[j] || v[j].is_nan() {
                (best[j], at[j]) = (v[j], base.wrapping_add(step[j]));
            }
        }
    }
}

/// [`block`] in AVX registers: written as plain code, LLVM either keeps it scalar and branchy
/// or turns it into masked stores, which are slow on AMD cores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2<'a>(
    best: &mut [f32; LANES],
    at: &mut [u32; LANES],
    rows: impl Iterator<Item = (&'a [f32; LANES], u32)>,
    step: &[u32; LANES],
) {
    use std::arch::x86_64::*;
    // SAFETY (loads and stores): each pointer is to an array of LANES = 8 lanes of 4 bytes.
    let (mut b, mut a, st) = unsafe {
        (
            _mm256_loadu_ps(best.as_ptr()),
            _mm256_castsi256_ps(_mm256_loadu_si256(at.as_ptr() as *const __m256i)),
            _mm256_loadu_si256(step.as_ptr() as *const __m256i),
        )
    };
    for (v, base) in rows {
        let v = unsafe { _mm256_loadu_ps(v.as_ptr()) };
        let wins = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, b), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let pos = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_set1_epi32(base as i32), st));
        b = _mm256_blendv_ps(b, v, wins);
        a = _mm256_blendv_ps(a, pos, wins);
    }
    unsafe {
        _mm256_storeu_ps(best.as_mut_ptr(), b);
        _mm256_storeu_si256(at.as_mut_ptr() as *mut __m256i, _mm256_castps_si256(a));
    }
}

/// Adds one plane's output gradient `gy` at the positions `at` of its windows' maxima into `gx`.
pub(crate) fn scatter_plane(at: &[u32], gy: &[f32], gx: &mut [f32]) {
    for (&a, &d) in at.iter().zip(gy) {
        gx[a as usize] += d;
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
            let mut yp = blank.fill(f32::NEG_INFINITY);
            with_scratch(2 * g.w, |scratch| {
                forward_plane(self, &g, &x[i * g.h * g.w..][..g.h * g.w], scratch, &mut yp)
            });
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
        // The argmax of every window is recomputed from the input: nothing was kept.
        let gx = par_build(x.len(), plane, |i, blank| {
            let mut gxp = blank.fill(0.0);
            let mut r = Winners::new(&g, &self.0);
            let (xp, gyp) = (&x[i * plane..][..plane], &gy[i * out_plane..][..out_plane]);
            for (oy, gyr) in gyp.chunks_exact(g.ow).enumerate() {
                argmax_row(&self.0, &g, xp, oy, &mut r);
                scatter_plane(r.at(), gyr, &mut gxp);
            }
            gxp
        });
        Ok((CpuStorage::F32(gx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 block update against the plain one (the fallback, and the definition) on rows
    /// with ties, −inf and NaNs, where PyTorch's rule decides which position wins.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_block_matches_the_plain_one() {
        if !has_avx2() {
            return;
        }
        // Ties, −inf and repeated maxima; lanes 0–2 meet a NaN (at rows 2–4), lane 3 two.
        let values = [0.0, 1.0, -1.0, 1.0, f32::NEG_INFINITY, 2.0, 0.0];
        let value = |t: usize, j: usize| match (t, j) {
            (t, j) if j < 3 && t == j + 2 => f32::NAN,
            (1 | 6, 3) => f32::NAN,
            _ => values[(j * 3 + t * 5) % values.len()],
        };
        let rows: Vec<([f32; LANES], u32)> =
            (0..9).map(|t| (std::array::from_fn(|j| value(t, j)), 100 * t as u32)).collect();
        let step: [u32; LANES] = std::array::from_fn(|j| 2 * j as u32);
        let (mut b1, mut a1) = ([f32::NEG_INFINITY; LANES], [7u32; LANES]);
        let (mut b2, mut a2) = (b1, a1);
        block(&mut b1, &mut a1, rows.iter().map(|(v, b)| (v, *b)), &step);
        // SAFETY: AVX2 checked above.
        unsafe { block_avx2(&mut b2, &mut a2, rows.iter().map(|(v, b)| (v, *b)), &step) };
        assert_eq!(a1, a2);
        assert_eq!(b1.map(f32::to_bits), b2.map(f32::to_bits));
        // The rows do exercise the rule: some lane ends on a NaN, some on a number.
        assert!(b1.iter().any(|v| v.is_nan()) && b1.iter().any(|v| !v.is_nan()));
    }
}
