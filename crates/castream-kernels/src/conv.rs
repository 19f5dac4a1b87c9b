//! Dense and grouped 2-d convolution as GEMM (`C_out/g x K` weights times a `K x oh*ow` patch
//! matrix per image and group), with a backward pass made of GEMMs too.
//!
//! candle's CPU conv reaches about a quarter of its own matmul speed and computes the input
//! gradient with a naive transposed-convolution loop; here both directions run at GEMM speed.
//! Images are spread over rayon threads, each with its own patch buffer. The bias and an optional
//! ReLU are applied in the GEMM's epilogue: the output rows start as the bias, the GEMM
//! accumulates into them, and the ReLU runs on each image's output while it is still in cache.

use crate::cpu::{f32_slice, par_build, sgemm, split, split_flat, with_scratch, zeros, Mat};
use crate::im2col::{col2im, im2col};
use crate::relu::relu_grad;
use crate::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::ops::Range;

/// Shapes of one convolution (NCHW input, OIHW weights, dilation 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub b: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    pub fn new(x: &[usize], w: &[usize], p: Conv2dParams) -> Result<Self> {
        let (&[b, ci, h, wd], &[co, cig, kh, kw]) = (x, w) else {
            bail!("conv2d: expected 4-d input and weights, got {x:?} and {w:?}")
        };
        let g = p.groups;
        if g == 0 || p.stride == 0 || ci % g != 0 || co % g != 0 || cig != ci / g {
            bail!("conv2d: input {x:?} and weights {w:?} do not match groups {g}, stride {}", p.stride)
        }
        if h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd} (padding {})", p.padding)
        }
        let oh = (h + 2 * p.padding - kh) / p.stride + 1;
        let ow = (wd + 2 * p.padding - kw) / p.stride + 1;
        Ok(Geom { b, ci, h, w: wd, co, kh, kw, stride: p.stride, pad: p.padding, groups: g, oh, ow })
    }
    pub fn cig(&self) -> usize {
        self.ci / self.groups
    }
    pub fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Inner GEMM dimension: one weight row, one patch-matrix column.
    pub fn kdim(&self) -> usize {
        self.cig() * self.kh * self.kw
    }
    pub fn npix(&self) -> usize {
        self.oh * self.ow
    }
    pub fn x_len(&self) -> usize {
        self.ci * self.h * self.w
    }
    pub fn y_len(&self) -> usize {
        self.co * self.npix()
    }
    /// A 1x1, stride-1, unpadded conv: the image group already is its patch matrix.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    pub fn out_shape(&self) -> Shape {
        Shape::from((self.b, self.co, self.oh, self.ow))
    }
}

/// A convolution op's input and weights, with their geometry.
pub(crate) struct ConvArgs<'a> {
    pub g: Geom,
    pub x: &'a [f32],
    pub w: &'a [f32],
}

impl<'a> ConvArgs<'a> {
    pub fn new(
        op: &str,
        p: Conv2dParams,
        (xs, xl): (&'a CpuStorage, &Layout),
        (ws, wl): (&'a CpuStorage, &Layout),
    ) -> Result<ConvArgs<'a>> {
        Ok(ConvArgs { g: Geom::new(xl.dims(), wl.dims(), p)?, x: f32_slice(xs, xl, op)?, w: f32_slice(ws, wl, op)? })
    }
}

impl Geom {
    /// An argument with `n` values per output channel (a bias: 1; BatchNorm's γ and β: 2).
    pub fn per_channel<'a>(
        &self,
        op: &str,
        (s, l): (&'a CpuStorage, &Layout),
        n: usize,
        what: &str,
    ) -> Result<&'a [f32]> {
        let v = f32_slice(s, l, op)?;
        if v.len() != n * self.co {
            bail!("{op}: {} output channels but {} {what}", self.co, v.len())
        }
        Ok(v)
    }

    /// An argument shaped like the output: its gradient.
    pub fn output_grad<'a>(&self, op: &str, (s, l): (&'a CpuStorage, &Layout)) -> Result<&'a [f32]> {
        if l.dims() != self.out_shape().dims() {
            bail!("{op}: gradient {:?} does not match output {:?}", l.dims(), self.out_shape())
        }
        f32_slice(s, l, op)
    }
}

/// Forward convolution `(x, w, bias) -> act(conv(x, w) + bias)`, `act` ReLU or identity; `bwd`
/// returns the input and weight gradients from one [`ConvBackward`] pass.
pub(crate) struct Conv2d {
    pub p: Conv2dParams,
    pub relu: bool,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "castream-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.p, (xs, xl), (ws, wl))?;
        let bias = g.per_channel(self.name(), (bs, bl), 1, "bias values")?;
        Ok((CpuStorage::F32(forward(&g, x, w, Some(bias), self.relu)), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if self.relu { relu_grad(y, grad)? } else { grad.contiguous()? };
        let (gx, gw) = fused_backward(x, w, &grad, |need_x, need_w| ConvBackward { p: self.p, need_x, need_w })?;
        let gb = if bias.track_op() { Some(grad.apply_op1_no_bwd(&ChannelSum)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// Output columns one GEMM should have at least: images whose output maps are smaller are
/// batched, their patch matrices side by side, so that late-stage layers (a 4x4 map: 16 columns
/// per image) stop packing the whole weight matrix again for every image.
const MIN_GEMM_COLS: usize = 256;

/// How many images each GEMM takes, for a thread holding `chunk` images.
fn images_per_gemm(g: &Geom, chunk: usize) -> usize {
    MIN_GEMM_COLS.div_ceil(g.npix()).clamp(1, chunk.max(1))
}

/// The largest patch matrix built for groups of `nb` images: `nb` whole maps side by side, or
/// one band of rows per image (nothing for a pointwise conv, whose input is its patch matrix).
pub(crate) fn col_len(g: &Geom, nb: usize) -> usize {
    match (nb, g.pointwise()) {
        (1, true) => 0,
        (1, false) => g.kdim() * band_rows(g) * g.ow,
        _ => g.kdim() * nb * g.npix(),
    }
}

/// Patch-matrix floats built at a time for one image: a band of output rows whose patch matrix
/// stays in L2 cache while the GEMM reads it (a whole 32x32 map of a 16-channel 3x3 conv is 590 KB).
const COL_TILE: usize = 1 << 16;

/// The bands of output rows each patch matrix covers for `n` images side by side: whole maps for
/// several images or a pointwise conv (no patch matrix), else bands that fit [`COL_TILE`].
fn row_tiles(g: &Geom, n: usize) -> impl Iterator<Item = Range<usize>> {
    let step = if n > 1 || g.pointwise() { g.oh.max(1) } else { band_rows(g) };
    let oh = g.oh;
    (0..oh).step_by(step).map(move |r| r..(r + step).min(oh))
}

/// Output rows per band of one image's patch matrix.
fn band_rows(g: &Geom) -> usize {
    (COL_TILE / (g.kdim() * g.ow).max(1)).clamp(1, g.oh.max(1))
}

/// The patch matrix of group `grp` of `xs` (`n` consecutive images) for the output rows `rows`
/// as a `k_dim x n·rows·ow` matrix: the input itself for one image of a pointwise conv, else
/// built in `col`.
fn patches<'a>(g: &Geom, xs: &'a [f32], grp: usize, col: &'a mut [f32], rows: Range<usize>) -> &'a [f32] {
    let (cig_len, n) = (g.cig() * g.h * g.w, xs.len() / g.x_len());
    if g.pointwise() && n == 1 {
        return &xs[grp * cig_len..][..cig_len];
    }
    let cols = rows.len() * g.ow;
    for (j, x) in xs.chunks(g.x_len()).enumerate() {
        im2col(&x[grp * cig_len..][..cig_len], g, &mut col[j * cols..], n * cols, rows.clone());
    }
    &col[..g.kdim() * n * cols]
}

/// `act(conv(x, w) + bias)` in NCHW, `act` ReLU when `relu`; no bias is a zero bias. Each group
/// of `nb` images is one task that writes its own output.
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let (chunk, par) = split(g.b);
    let nb = images_per_gemm(g, chunk);
    let (cog, kdim, npix, ylen) = (g.cog(), g.kdim(), g.npix(), g.y_len());
    let bias_of = |c: usize| bias.map_or(0.0, |b| b[c]);
    let out_len = if nb > 1 { g.co * nb * npix } else { 0 };
    par_build(g.b * ylen, nb * ylen, |i, blank| {
        with_scratch(col_len(g, nb) + out_len, |scratch| {
            let (col, out) = scratch.split_at_mut(col_len(g, nb));
            let n = blank.len() / ylen;
            let xs = &x[i * nb * g.x_len()..][..n * g.x_len()];
            let mut ys = if n == 1 {
                // One image: the GEMM accumulates onto the bias in the output itself.
                let mut ys = blank.fill_rows(npix, bias_of);
                accumulate_image(g, xs, w, col, &mut ys, par);
                ys
            } else {
                let ld = n * npix;
                for grp in 0..g.groups {
                    let wg = Mat { data: &w[grp * cog * kdim..][..cog * kdim], rs: kdim, cs: 1 };
                    let rhs = Mat { data: patches(g, xs, grp, col, 0..g.oh), rs: ld, cs: 1 };
                    sgemm(cog, ld, kdim, &mut out[grp * cog * ld..][..cog * ld], ld, false, wg, rhs, par);
                }
                // Channel rows of the side-by-side output back to each image, plus the bias.
                blank.rows_from(npix, |r| {
                    let (j, c) = (r / g.co, r % g.co);
                    (&out[c * ld + j * npix..][..npix], bias_of(c))
                })
            };
            if relu {
                ys.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            ys
        })
    })
}

/// Adds one image's `conv(x, w)` onto `y` (`C_out` rows of `n_pix`), band by band of output
/// rows; `col` holds [`col_len`]`(g, 1)` floats.
pub(crate) fn accumulate_image(g: &Geom, x: &[f32], w: &[f32], col: &mut [f32], y: &mut [f32], par: Parallelism) {
    let (cog, kdim, npix) = (g.cog(), g.kdim(), g.npix());
    for grp in 0..g.groups {
        let wg = Mat { data: &w[grp * cog * kdim..][..cog * kdim], rs: kdim, cs: 1 };
        for rows in row_tiles(g, 1) {
            let cols = rows.len() * g.ow;
            let at = grp * cog * npix + rows.start * g.ow;
            let rhs = Mat { data: patches(g, x, grp, col, rows), rs: cols, cs: 1 };
            sgemm(cog, cols, kdim, &mut y[at..], npix, true, wg, rhs, par);
        }
    }
}

/// Runs a fused backward op `(x, w, grad_y) -> [grad_x | grad_w]` for whichever of `x` and `w`
/// candle tracks, and splits its single flat output (custom ops return one tensor).
pub(crate) fn fused_backward<Op: CustomOp3>(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    op: impl FnOnce(bool, bool) -> Op,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (need_x, need_w) = (x.track_op(), w.track_op());
    if !need_x && !need_w {
        return Ok((None, None));
    }
    let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op(need_x, need_w))?;
    let [gx, gw] = split_flat(&both, [x.shape(), w.shape()])?;
    Ok((need_x.then_some(gx), need_w.then_some(gw)))
}

/// `(x, w, grad_y) -> [grad_x | grad_w]` flattened ([`backward`]).
pub(crate) struct ConvBackward {
    pub p: Conv2dParams,
    pub need_x: bool,
    pub need_w: bool,
}

impl CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "castream-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.p, (xs, xl), (ws, wl))?;
        let gy = g.output_grad(self.name(), (gs, gl))?;
        let out = backward(&g, x, w, self.need_x, self.need_w, 0, |i, c, dst| {
            dst.copy_from_slice(&gy[i * g.y_len() + c * g.npix()..][..g.npix()])
        });
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// The gradients of a convolution as one flat `[grad_x | grad_w | tail]`, `tail` zeros left for
/// the caller. `grad(i, c, dst)` writes channel `c` of image `i`'s output gradient into `dst`, so
/// that a fused op can compute it while it is in cache. Per group of images (side by side as in
/// the forward) and conv group: `grad_w += grad_y · patchesᵀ` and
/// `grad_x += col2im(wᵀ · grad_y)`, or for one image of a stride-1 conv `grad_x +=` the
/// [`Transposed`] convolution of `grad_y`. Threads take disjoint images and keep private weight
/// gradients, summed at the end. A half that is not needed is skipped (left zero).
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    need_x: bool,
    need_w: bool,
    tail: usize,
    grad: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let nx = g.b * g.x_len();
    // col2im and the transposed conv accumulate into grad_x; an unneeded one stays untouched zero
    // pages.
    let mut out = if need_x { zeros(nx + w.len() + tail) } else { vec![0f32; nx + w.len() + tail] };
    let (gx, rest) = out.split_at_mut(nx);
    let (chunk, par) = split(g.b);
    let nb = images_per_gemm(g, chunk);
    let (cig_len, kdim, npix, cog) = (g.cig() * g.h * g.w, g.kdim(), g.npix(), g.cog());
    let flipped = if need_x { Transposed::of(g, w) } else { None };
    let flipped_col = flipped.as_ref().map_or(0, |t| col_len(&t.g, 1));
    let gw_t = gx
        .par_chunks_mut(chunk * g.x_len())
        .zip(x.par_chunks(chunk * g.x_len()))
        .enumerate()
        .map(|(t, (gxs, xs))| {
            // Per group, `kdim x cog`: the weight gradient transposed.
            let mut gw_t = if need_w { vec![0f32; w.len()] } else { Vec::new() };
            with_scratch(col_len(g, nb) + flipped_col + g.co * nb * npix, |scratch| {
                let (col, rest) = scratch.split_at_mut(col_len(g, nb));
                let (tcol, gy) = rest.split_at_mut(flipped_col);
                for (k, (gxs, xs)) in gxs.chunks_mut(nb * g.x_len()).zip(xs.chunks(nb * g.x_len())).enumerate() {
                    let n = xs.len() / g.x_len();
                    let ld = n * npix;
                    for j in 0..n {
                        for c in 0..g.co {
                            grad(t * chunk + k * nb + j, c, &mut gy[c * ld + j * npix..][..npix]);
                        }
                    }
                    for grp in 0..g.groups {
                        let wt = Mat { data: &w[grp * cog * kdim..][..cog * kdim], rs: 1, cs: kdim };
                        for rows in row_tiles(g, n) {
                            let (img_cols, cols) = (rows.len() * g.ow, n * rows.len() * g.ow);
                            let gyg = Mat { data: &gy[grp * cog * ld + rows.start * g.ow..], rs: ld, cs: 1 };
                            if need_w {
                                // Transposed, `grad_wᵀ += patches · grad_yᵀ`: so gemm packs the
                                // small `grad_y` operand rather than the patch matrix.
                                let lhs = Mat { data: patches(g, xs, grp, col, rows.clone()), rs: cols, cs: 1 };
                                let gy_t = Mat { data: gyg.data, rs: 1, cs: ld };
                                let dst = &mut gw_t[grp * cog * kdim..][..cog * kdim];
                                sgemm(kdim, cog, cols, dst, cog, true, lhs, gy_t, par);
                            }
                            if !need_x || (n == 1 && flipped.is_some()) {
                                continue;
                            }
                            if g.pointwise() && n == 1 {
                                sgemm(kdim, npix, cog, &mut gxs[grp * cig_len..][..cig_len], npix, false, wt, gyg, par);
                            } else {
                                sgemm(kdim, cols, cog, &mut col[..kdim * cols], cols, false, wt, gyg, par);
                                for (j, gx) in gxs.chunks_mut(g.x_len()).enumerate() {
                                    let gxg = &mut gx[grp * cig_len..][..cig_len];
                                    col2im(&mut col[j * img_cols..], g, gxg, cols, rows.clone());
                                }
                            }
                        }
                    }
                    if let (Some(t), 1) = (&flipped, n) {
                        accumulate_image(&t.g, &gy[..g.co * npix], &t.w, tcol, gxs, par);
                    }
                }
            });
            gw_t
        })
        .reduce(Vec::new, |mut a, b| {
            if a.is_empty() {
                return b;
            }
            for (a, b) in a.iter_mut().zip(&b) {
                *a += b;
            }
            a
        });
    if need_w {
        for (dst, src) in rest[..w.len()].chunks_mut(cog * kdim).zip(gw_t.chunks(cog * kdim)) {
            for (co, row) in dst.chunks_mut(kdim).enumerate() {
                for (kk, v) in row.iter_mut().enumerate() {
                    *v = src[kk * cog + co];
                }
            }
        }
    }
    out
}

/// The input gradient of a stride-1 convolution is itself a convolution: of the output gradient
/// with the kernel flipped and its input and output channels swapped, padding `k − 1 − p`. Run
/// as one, its GEMM is `C_out·k²` deep (instead of `C_out`) and writes the gradient directly,
/// with no patch-matrix gradient to scatter back (`col2im`).
struct Transposed {
    g: Geom,
    w: Vec<f32>,
}

impl Transposed {
    /// `None` where it does not apply: strided or pointwise convs, non-square kernels, padding
    /// larger than `k − 1`.
    fn of(g: &Geom, w: &[f32]) -> Option<Transposed> {
        if g.stride != 1 || g.pointwise() || g.kh != g.kw || g.pad >= g.kh {
            return None;
        }
        let (cig, cog, kk) = (g.cig(), g.cog(), g.kh * g.kw);
        let p = Conv2dParams { stride: 1, padding: g.kh - 1 - g.pad, groups: g.groups };
        let tg = Geom::new(&[g.b, g.co, g.oh, g.ow], &[g.ci, cog, g.kh, g.kw], p).ok()?;
        debug_assert_eq!((tg.oh, tg.ow), (g.h, g.w));
        let mut wt = vec![0f32; w.len()];
        for grp in 0..g.groups {
            for co in 0..cog {
                for ci in 0..cig {
                    let src = &w[((grp * cog + co) * cig + ci) * kk..][..kk];
                    let dst = &mut wt[((grp * cig + ci) * cog + co) * kk..][..kk];
                    // Flipped in both axes: (ky, kx) -> (kh − 1 − ky, kw − 1 − kx) is a reversal.
                    dst.iter_mut().zip(src.iter().rev()).for_each(|(d, &v)| *d = v);
                }
            }
        }
        Some(Transposed { g: tg, w: wt })
    }
}

/// `(B, C, H, W) -> (C,)`: the sum over batch and positions, the bias gradient of [`Conv2d`].
pub(crate) struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "castream-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, c, h, w] = l.dims() else { bail!("{}: expected a 4-d input, got {:?}", self.name(), l.dims()) };
        let x = f32_slice(s, l, self.name())?;
        let hw = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..b).map(|i| x[(i * c + ch) * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}
