//! Patch matrices for convolution as GEMM.
//!
//! `im2col` lays out one image group's receptive fields as a `(C_in/g * kh * kw, oh * ow)` matrix,
//! row `(ci, ky, kx)` holding input channel `ci` shifted by `(ky, kx)`: with stride 1 every output
//! row is a plain copy of an input row, so building it costs about one pass over memory. `col2im`
//! is its adjoint (scatter-add back onto the image), used for the input gradient.

use std::ops::Range;

use crate::conv::Geom;
use crate::cpu::simd_dispatch;

/// The output positions `o` in `0..len_out` whose input `o * s + k - p` lies in `0..len_in`.
pub(crate) fn valid_range(k: usize, p: usize, s: usize, len_in: usize, len_out: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 }.min(len_out);
    let hi = if len_in + p > k { (len_in + p - k).div_ceil(s) } else { 0 }.min(len_out);
    (lo, hi.max(lo))
}

simd_dispatch! {
    /// Writes the patch matrix of `x` (`C_in/g` planes of `h * w`) for the output rows `rows` into
    /// `col`: `k_dim` rows of `rows.len() * ow` values, row `r` starting at `r * ld` (`ld` larger
    /// leaves room for other images' columns).
    pub(crate) fn im2col(x: &[f32], g: &Geom, col: &mut [f32], ld: usize, rows: Range<usize>) {
        let (h, w, ow, s, p) = (g.h, g.w, g.ow, g.stride, g.pad);
        if (g.kh, g.kw, s, p) == (3, 3, 1, 1) {
            match w {
                4 => return same_3x3_narrow::<4>(x, g, col, ld, rows),
                8 => return same_3x3_narrow::<8>(x, g, col, ld, rows),
                _ => {}
            }
        }
        let npix = rows.len() * ow;
        for ci in 0..g.cig() {
            let plane = &x[ci * h * w..][..h * w];
            for ky in 0..g.kh {
                let (oy0, oy1) = relative(valid_range(ky, p, s, h, g.oh), &rows);
                for kx in 0..g.kw {
                    let row = &mut col[((ci * g.kh + ky) * g.kw + kx) * ld..][..npix];
                    let (ox0, ox1) = valid_range(kx, p, s, w, ow);
                    if s == 1 && ow == w {
                        let shift = ((rows.start + ky) * w + kx) as isize - (p * w + p) as isize;
                        shifted_copy(plane, row, shift, (oy0, oy1), (ox0, ox1), ow);
                        continue;
                    }
                    row[..oy0 * ow].fill(0.0);
                    row[oy1 * ow..].fill(0.0);
                    for oy in oy0..oy1 {
                        let src = &plane[((rows.start + oy) * s + ky - p) * w..][..w];
                        let out = &mut row[oy * ow..][..ow];
                        zero_short(&mut out[..ox0]);
                        zero_short(&mut out[ox1..]);
                        gather_strided(&mut out[ox0..ox1], &src[ox0 * s + kx - p..], s);
                    }
                }
            }
        }
    }
}

/// `out[i] = src[i * s]`: a copy for stride 1, vectorised for stride 2.
#[inline(always)]
pub(crate) fn gather_strided(out: &mut [f32], src: &[f32], s: usize) {
    match s {
        1 => out.copy_from_slice(&src[..out.len()]),
        2 => gather::<2>(out, src),
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = src[i * s];
            }
        }
    }
}

/// `dst[i * s] += src[i]`, vectorised for stride 2: each pair `(dst[2i], dst[2i + 1])` gets
/// `(src[i], 0.0)` added, a whole interleaved group LLVM can vectorise (adding zero only turns a
/// −0.0 in between into +0.0).
#[inline(always)]
fn scatter_add_strided(dst: &mut [f32], src: &[f32], s: usize) {
    let Some(last) = src.len().checked_sub(1) else { return };
    if s == 2 {
        for (d, &v) in dst[..2 * last].chunks_exact_mut(2).zip(&src[..last]) {
            d[0] += v;
            d[1] += 0.0;
        }
    } else {
        for (i, &v) in src[..last].iter().enumerate() {
            dst[i * s] += v;
        }
    }
    dst[last * s] += src[last];
}

/// [`im2col`] of a 3x3 stride-1 "same" conv on `W`-wide maps (the late stages of the quick
/// ResNet: 8x8 and 4x4): each output row of a patch-matrix row is a fixed-size `[f32; W]`, the
/// input row shifted by `kx − 1` with a zero shifted in, or zeros above and below the map. The
/// general path's copy, fills and memcpy call per patch-matrix row cost more than the 16 or 64
/// floats they move.
#[inline(always)]
fn same_3x3_narrow<const W: usize>(x: &[f32], g: &Geom, col: &mut [f32], ld: usize, rows: Range<usize>) {
    let (h, npix) = (g.h, rows.len() * W);
    for (ci, plane) in x.chunks_exact(h * W).take(g.cig()).enumerate() {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut col[(ci * 9 + ky * 3 + kx) * ld..][..npix];
                for (out, oy) in row.chunks_exact_mut(W).zip(rows.clone()) {
                    let out: &mut [f32; W] = out.try_into().expect("W-wide rows");
                    // Input row `oy + ky − 1`, which is outside the map above and below.
                    let Some(src) = (oy + ky).checked_sub(1).filter(|&iy| iy < h) else {
                        *out = [0.0; W];
                        continue;
                    };
                    let src: &[f32; W] = plane[src * W..][..W].try_into().expect("W-wide rows");
                    *out = match kx {
                        0 => std::array::from_fn(|i| if i == 0 { 0.0 } else { src[i - 1] }),
                        1 => *src,
                        _ => std::array::from_fn(|i| if i + 1 == W { 0.0 } else { src[i + 1] }),
                    };
                }
            }
        }
    }
}

/// `out[i] = src[i * S]`, with the stride known at compile time so that the loads vectorise
/// (as interleaved loads and shuffles).
#[inline(always)]
fn gather<const S: usize>(out: &mut [f32], src: &[f32]) {
    let Some(last) = out.len().checked_sub(1) else { return };
    let src = &src[..last * S + 1];
    for (o, c) in out[..last].iter_mut().zip(src.chunks_exact(S)) {
        *o = c[0];
    }
    out[last] = src[last * S];
}

/// A range of output rows `(lo, hi)` made relative to the rows `rows` being built.
fn relative((lo, hi): (usize, usize), rows: &Range<usize>) -> (usize, usize) {
    let clip = |v: usize| v.clamp(rows.start, rows.end) - rows.start;
    (clip(lo), clip(hi))
}

/// One patch-matrix row of a stride-1 conv whose output is as wide as its input (a "same"
/// conv): output `i` is input `i + shift` at the valid rows `oy0..oy1` and columns `ox0..ox1`, so
/// the row is one contiguous copy whose wrapped columns (at most `2 · padding` per output row)
/// are then zeroed, instead of a copy and two fills per output row.
#[inline(always)]
fn shifted_copy(
    plane: &[f32],
    row: &mut [f32],
    shift: isize,
    (oy0, oy1): (usize, usize),
    (ox0, ox1): (usize, usize),
    ow: usize,
) {
    if oy0 >= oy1 || ox0 >= ox1 {
        row.fill(0.0);
        return;
    }
    let (a, b) = (oy0 * ow + ox0, (oy1 - 1) * ow + ox1);
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    row[a..b].copy_from_slice(&plane[(a as isize + shift) as usize..][..b - a]);
    zero_wrapped(row, (oy0, oy1), (ox0, ox1), ow);
}

/// Zeroes the columns outside `ox0..ox1` between the valid rows `oy0..oy1` of a patch-matrix row.
#[inline(always)]
fn zero_wrapped(row: &mut [f32], (oy0, oy1): (usize, usize), (ox0, ox1): (usize, usize), ow: usize) {
    if ox0 > 0 || ox1 < ow {
        for oy in oy0..oy1 - 1 {
            zero_short(&mut row[oy * ow + ox1..(oy + 1) * ow + ox0]);
        }
    }
}

/// Zeroes a padding gap, usually one or two floats, with plain stores: LLVM turns a fill loop
/// into a `memset` call, which costs more than the stores (measured: a third of im2col's time
/// for 3x3 convs went to per-row `memset` calls).
#[inline(always)]
fn zero_short(v: &mut [f32]) {
    match v {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => (*a, *b) = (0.0, 0.0),
        _ => v.fill(0.0),
    }
}

simd_dispatch! {
    /// Adds the patch-matrix gradient `col` of the output rows `rows` (row `r` at `r * ld`) back
    /// onto the image gradient `x` (adjoint of `im2col`). For a "same" stride-1 conv each row is
    /// added as one contiguous shifted range after zeroing its wrapped columns, so `col` is
    /// scratch that this overwrites.
    pub(crate) fn col2im(col: &mut [f32], g: &Geom, x: &mut [f32], ld: usize, rows: Range<usize>) {
        let (h, w, ow, s, p) = (g.h, g.w, g.ow, g.stride, g.pad);
        let npix = rows.len() * ow;
        for ci in 0..g.cig() {
            let plane = &mut x[ci * h * w..][..h * w];
            for ky in 0..g.kh {
                let (oy0, oy1) = relative(valid_range(ky, p, s, h, g.oh), &rows);
                for kx in 0..g.kw {
                    let row = &mut col[((ci * g.kh + ky) * g.kw + kx) * ld..][..npix];
                    let (ox0, ox1) = valid_range(kx, p, s, w, ow);
                    if s == 1 && ow == w {
                        if oy0 < oy1 && ox0 < ox1 {
                            let (a, b) = (oy0 * ow + ox0, (oy1 - 1) * ow + ox1);
                            zero_wrapped(row, (oy0, oy1), (ox0, ox1), ow);
                            let shift = ((rows.start + ky) * w + kx) as isize - (p * w + p) as isize;
                            let dst = &mut plane[(a as isize + shift) as usize..][..b - a];
                            for (d, v) in dst.iter_mut().zip(&row[a..b]) {
                                *d += v;
                            }
                        }
                        continue;
                    }
                    for oy in oy0..oy1 {
                        let dst = &mut plane[((rows.start + oy) * s + ky - p) * w..][..w];
                        let src = &row[oy * ow..][..ow];
                        if s == 1 {
                            let dst = &mut dst[ox0 + kx - p..ox1 + kx - p];
                            for (d, v) in dst.iter_mut().zip(&src[ox0..ox1]) {
                                *d += v;
                            }
                        } else {
                            scatter_add_strided(&mut dst[ox0 * s + kx - p..], &src[ox0..ox1], s);
                        }
                    }
                }
            }
        }
    }
}
