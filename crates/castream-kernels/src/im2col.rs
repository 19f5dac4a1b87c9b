//! Patch matrices for convolution as GEMM.
//!
//! `im2col` lays out one image group's receptive fields as a `(C_in/g * kh * kw, oh * ow)` matrix,
//! row `(ci, ky, kx)` holding input channel `ci` shifted by `(ky, kx)`: with stride 1 every output
//! row is a plain copy of an input row, so building it costs about one pass over memory. `col2im`
//! is its adjoint (scatter-add back onto the image), used for the input gradient.

use crate::conv::Geom;
use crate::cpu::simd_dispatch;

/// The output positions `o` in `0..len_out` whose input `o * s + k - p` lies in `0..len_in`.
pub(crate) fn valid_range(k: usize, p: usize, s: usize, len_in: usize, len_out: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 }.min(len_out);
    let hi = if len_in + p > k { (len_in + p - k).div_ceil(s) } else { 0 }.min(len_out);
    (lo, hi.max(lo))
}

simd_dispatch! {
    /// Writes the patch matrix of `x` (`C_in/g` planes of `h * w`) into `col`: `k_dim` rows of
    /// `n_pix` values, row `r` starting at `r * ld` (`ld > n_pix` leaves room for other images'
    /// columns).
    pub(crate) fn im2col(x: &[f32], g: &Geom, col: &mut [f32], ld: usize) {
        let (h, w, oh, ow, s, p) = (g.h, g.w, g.oh, g.ow, g.stride, g.pad);
        let npix = oh * ow;
        for ci in 0..g.cig() {
            let plane = &x[ci * h * w..][..h * w];
            for ky in 0..g.kh {
                let (oy0, oy1) = valid_range(ky, p, s, h, oh);
                for kx in 0..g.kw {
                    let row = &mut col[((ci * g.kh + ky) * g.kw + kx) * ld..][..npix];
                    let (ox0, ox1) = valid_range(kx, p, s, w, ow);
                    row[..oy0 * ow].fill(0.0);
                    row[oy1 * ow..].fill(0.0);
                    for oy in oy0..oy1 {
                        let src = &plane[(oy * s + ky - p) * w..][..w];
                        let out = &mut row[oy * ow..][..ow];
                        out[..ox0].fill(0.0);
                        out[ox1..].fill(0.0);
                        if s == 1 {
                            out[ox0..ox1].copy_from_slice(&src[ox0 + kx - p..ox1 + kx - p]);
                        } else {
                            for ox in ox0..ox1 {
                                out[ox] = src[ox * s + kx - p];
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_dispatch! {
    /// Adds the patch-matrix gradient `col` (row `r` at `r * ld`) back onto the image gradient `x`
    /// (adjoint of `im2col`).
    pub(crate) fn col2im(col: &[f32], g: &Geom, x: &mut [f32], ld: usize) {
        let (h, w, oh, ow, s, p) = (g.h, g.w, g.oh, g.ow, g.stride, g.pad);
        let npix = oh * ow;
        for ci in 0..g.cig() {
            let plane = &mut x[ci * h * w..][..h * w];
            for ky in 0..g.kh {
                let (oy0, oy1) = valid_range(ky, p, s, h, oh);
                for kx in 0..g.kw {
                    let row = &col[((ci * g.kh + ky) * g.kw + kx) * ld..][..npix];
                    let (ox0, ox1) = valid_range(kx, p, s, w, ow);
                    for oy in oy0..oy1 {
                        let dst = &mut plane[(oy * s + ky - p) * w..][..w];
                        let src = &row[oy * ow..][..ow];
                        if s == 1 {
                            let dst = &mut dst[ox0 + kx - p..ox1 + kx - p];
                            for (d, v) in dst.iter_mut().zip(&src[ox0..ox1]) {
                                *d += v;
                            }
                        } else {
                            for ox in ox0..ox1 {
                                dst[ox * s + kx - p] += src[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}
