//! Dense and grouped 2-d convolution as GEMM (`C_out/g x K` weights times a `K x oh*ow` patch
//! matrix per image and group), with a backward pass made of GEMMs too, or of [`direct`] register
//! tiles for 3x3 convs on wide maps.
//!
//! candle's CPU conv reaches about a quarter of its own matmul speed and computes the input
//! gradient with a naive transposed-convolution loop; here both directions run at GEMM speed.
//! Images are spread over rayon threads, each with its own patch buffer. The bias and an optional
//! ReLU are applied in the GEMM's epilogue: the output rows start as the bias, the GEMM
//! accumulates into them, and the ReLU runs on each image's output while it is still in cache.

use crate::batchnorm::{plane_stats, PlaneSums};
use crate::cpu::{f32_slice, par_build, sgemm, split, split_flat, with_scratch, zeros, Mat};
use crate::direct;
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
        Ok((CpuStorage::F32(forward(&g, x, w, Some(bias), self.relu, |_, _| {})), g.out_shape()))
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
/// of `nb` images is one task that writes its own output; `done(i, y_i)` sees image `i`'s output
/// when complete, while it is in cache.
pub(crate) fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    done: impl Fn(usize, &[f32]) + Sync,
) -> Vec<f32> {
    let (chunk, par) = split(g.b);
    let nb = images_per_gemm(g, chunk);
    let (cog, kdim, npix, ylen) = (g.cog(), g.kdim(), g.npix(), g.y_len());
    let bias_of = |c: usize| bias.map_or(0.0, |b| b[c]);
    let out_len = if nb > 1 { g.co * nb * npix } else { 0 };
    let kernels = ImageKernels::of(g, w, nb, par);
    par_build(g.b * ylen, nb * ylen, |i, blank| {
        with_scratch(kernels.scratch_len(g, nb) + out_len, |scratch| {
            let (col, out) = scratch.split_at_mut(kernels.scratch_len(g, nb));
            let n = blank.len() / ylen;
            let xs = &x[i * nb * g.x_len()..][..n * g.x_len()];
            let mut ys = if n == 1 {
                // One image: the convolution accumulates onto the bias in the output itself.
                let mut ys = blank.fill_rows(npix, bias_of);
                kernels.accumulate_image(g, xs, col, &mut ys, par);
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
            ys.chunks(ylen).enumerate().for_each(|(j, y)| done(i * nb + j, y));
            ys
        })
    })
}

/// `conv(x, w)` without bias, and each output plane's statistics ([`plane_stats`]) taken while
/// it is in cache: a training-mode BatchNorm's input.
pub(crate) fn forward_with_stats(g: &Geom, x: &[f32], w: &[f32]) -> (Vec<f32>, PlaneSums) {
    let stats = PlaneSums::new(g.b * g.co);
    let npix = g.npix();
    let z = forward(g, x, w, None, false, |i, y| {
        y.chunks(npix).enumerate().for_each(|(c, plane)| stats.record(i * g.co + c, plane_stats(plane)))
    });
    (z, stats)
}

/// A convolution's kernels as one image's forward reads them: packed for [`direct`]'s register
/// tiles where they apply (which run on one thread: images spread over the threads), else the
/// OIHW weights that GEMMs over patch matrices read.
pub(crate) enum ImageKernels<'a> {
    Direct(Vec<f32>),
    Gemm(&'a [f32]),
}

impl<'a> ImageKernels<'a> {
    /// For groups of `nb` images (direct tiles take one at a time: maps short enough to go
    /// several to a GEMM stay there); `par` is how one image's GEMMs would run (`split(g.b).1`).
    pub fn of(g: &Geom, w: &'a [f32], nb: usize, par: Parallelism) -> ImageKernels<'a> {
        if nb == 1 && direct::applies(g) && matches!(par, Parallelism::None) {
            return ImageKernels::Direct(direct::pack(g.co, g.ci, |o, i, t| w[(o * g.ci + i) * 9 + t]));
        }
        ImageKernels::Gemm(w)
    }

    /// Scratch floats of [`Self::accumulate_image`] (a padded input, or a patch matrix for
    /// groups of `nb` images).
    pub fn scratch_len(&self, g: &Geom, nb: usize) -> usize {
        match self {
            ImageKernels::Direct(_) => direct::padded_len(g.ci, g.h, g.w),
            ImageKernels::Gemm(_) => col_len(g, nb),
        }
    }

    /// Adds one image's `conv(x, w)` onto `y` (`C_out` rows of `n_pix`); `scratch` holds
    /// [`Self::scratch_len`]`(g, 1)` floats.
    pub fn accumulate_image(&self, g: &Geom, x: &[f32], scratch: &mut [f32], y: &mut [f32], par: Parallelism) {
        match self {
            ImageKernels::Direct(packed) => {
                direct::pad(x, g.ci, g.h, g.w, scratch);
                direct::conv(scratch, packed, g.ci, g.co, (g.h, g.w), y);
            }
            ImageKernels::Gemm(w) => accumulate_image_gemm(g, x, w, scratch, y, par),
        }
    }
}

/// Adds one image's `conv(x, w)` onto `y` (`C_out` rows of `n_pix`) by GEMMs, band by band of
/// output rows; `col` holds [`col_len`]`(g, 1)` floats.
fn accumulate_image_gemm(g: &Geom, x: &[f32], w: &[f32], col: &mut [f32], y: &mut [f32], par: Parallelism) {
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
        let grad =
            |i: usize, c: usize, dst: &mut [f32]| dst.copy_from_slice(&gy[i * g.y_len() + c * g.npix()..][..g.npix()]);
        let out = backward(&g, (x, w), self.need_x, self.need_w, 0, grad, |_, _: &mut [f32]| {});
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// The gradients of a convolution as one flat `[grad_x | grad_w | tail]`, `tail` zeros left for
/// the caller. `grad(i, c, dst)` writes channel `c` of image `i`'s output gradient into `dst`, so
/// that a fused op can compute it while it is in cache; `done(i, grad_x_i)` is called once image
/// `i`'s input gradient is complete (when computed), while it is in cache, to read it or add to
/// it. Threads take disjoint groups of images (side by side in one GEMM where maps are small, as
/// in the forward) and keep private weight gradients, summed at the end. The [`Method`] depends on
/// the conv and on whether its input gradient is needed. A half that is not needed is skipped
/// (left zero).
pub(crate) fn backward(
    g: &Geom,
    (x, w): (&[f32], &[f32]),
    need_x: bool,
    need_w: bool,
    tail: usize,
    grad: impl Fn(usize, usize, &mut [f32]) + Sync,
    done: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let nx = g.b * g.x_len();
    // The GEMM path's col2im accumulates into grad_x; an unneeded one stays untouched zero pages.
    let mut out = if need_x { zeros(nx + w.len() + tail) } else { vec![0f32; nx + w.len() + tail] };
    let (gx, rest) = out.split_at_mut(nx);
    let (chunk, par) = split(g.b);
    let nb = images_per_gemm(g, chunk);
    let method = Method::of(g, w, need_x, par);
    let scratch = method.scratch_len(g, nb);
    let acc = gx
        .par_chunks_mut(chunk * g.x_len())
        .zip(x.par_chunks(chunk * g.x_len()))
        .enumerate()
        .map(|(t, (gxs, xs))| {
            let mut acc = if need_w { vec![0f32; w.len()] } else { Vec::new() };
            with_scratch(scratch, |scratch| {
                for (k, (gxs, xs)) in gxs.chunks_mut(nb * g.x_len()).zip(xs.chunks(nb * g.x_len())).enumerate() {
                    let first = t * chunk + k * nb;
                    let images = Images { first, x: xs, gx: gxs, n: xs.len() / g.x_len() };
                    let acc = need_w.then_some(&mut acc[..]);
                    let gxs = match &method {
                        Method::Direct(d) => d.backward(g, images, &grad, scratch, acc),
                        Method::Transposed(tr) => tr.backward(g, images, &grad, scratch, acc, par),
                        Method::Gemm => backward_gemm(g, w, images, &grad, scratch, need_x, acc, par),
                    };
                    if need_x {
                        gxs.chunks_mut(g.x_len()).enumerate().for_each(|(j, gx)| done(first + j, gx));
                    }
                }
            });
            acc
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
        let gw = &mut rest[..w.len()];
        match &method {
            Method::Direct(_) => gw.copy_from_slice(&acc),
            Method::Transposed(tr) => tr.weight_grad(g, &acc, gw),
            Method::Gemm => weight_grad_gemm(g, &acc, gw),
        }
    }
    out
}

/// How [`backward`] computes a conv's gradients.
enum Method {
    /// 3x3 stride-1 "same" convs on wide maps ([`direct::applies`]), images spread over the
    /// threads, with no patch matrix.
    Direct(DirectBackward),
    /// Other stride-1 convs whose input gradient is needed: one patch matrix for both gradients.
    Transposed(Transposed),
    /// Strided and pointwise convs, and weight gradients alone: GEMMs over the input's patch
    /// matrix, `col2im` for the input gradient.
    Gemm,
}

impl Method {
    /// `par` is how the GEMMs of one group of images would run: [`direct`]'s tiles run on one
    /// thread, so they serve only where images are spread over the threads (not a batch of one,
    /// whose GEMMs use all of them).
    fn of(g: &Geom, w: &[f32], need_x: bool, par: Parallelism) -> Method {
        if direct::applies(g) && matches!(par, Parallelism::None) {
            return Method::Direct(DirectBackward::of(g, w, need_x));
        }
        let flipped = if need_x { Transposed::of(g, w) } else { None };
        flipped.map_or(Method::Gemm, Method::Transposed)
    }

    fn scratch_len(&self, g: &Geom, nb: usize) -> usize {
        match self {
            Method::Direct(_) => DirectBackward::scratch_len(g, nb),
            Method::Transposed(tr) => tr.scratch_len(g, nb),
            Method::Gemm => gemm_scratch_len(g, nb),
        }
    }
}

/// `n` consecutive images of a backward pass, from image `first`: their inputs and input
/// gradients.
struct Images<'a> {
    first: usize,
    x: &'a [f32],
    gx: &'a mut [f32],
    n: usize,
}

/// Writes the output gradient of `images` into `gy`, channel rows of `ld` floats, image `j`'s
/// starting at `j * at`.
fn output_grads(
    g: &Geom,
    images: &Images,
    grad: &impl Fn(usize, usize, &mut [f32]),
    gy: &mut [f32],
    ld: usize,
    at: usize,
) {
    let npix = g.npix();
    for j in 0..images.n {
        for c in 0..g.co {
            grad(images.first + j, c, &mut gy[c * ld + j * at..][..npix]);
        }
    }
}

/// Scratch floats of [`backward_gemm`] for groups of `nb` images.
fn gemm_scratch_len(g: &Geom, nb: usize) -> usize {
    col_len(g, nb) + g.co * nb * g.npix()
}

/// The gradients of `images` as GEMMs over the patch matrix, per conv group (the output
/// gradient side by side, `ld = n·n_pix`): the weight gradient into `acc`, and
/// `grad_x += col2im(wᵀ · grad_y)`. Returns the images' input gradients. gemm copies (packs)
/// whichever operand of the weight gradient it must read across its rows: the smaller one, so
/// `grad_wᵀ += patches · grad_yᵀ` (per group `kdim x cog`) where the patch matrix has more rows
/// (`kdim = C_in·k²` against `C_out`), else `grad_w += grad_y · patchesᵀ` (per group
/// `cog x kdim`: a ResNet-50's expanding 1x1 convs). [`weight_grad_gemm`] reads either.
#[allow(clippy::too_many_arguments)]
fn backward_gemm<'a>(
    g: &Geom,
    w: &[f32],
    images: Images<'a>,
    grad: &impl Fn(usize, usize, &mut [f32]),
    scratch: &mut [f32],
    need_x: bool,
    mut acc: Option<&mut [f32]>,
    par: Parallelism,
) -> &'a mut [f32] {
    let (cig_len, kdim, npix, cog, n) = (g.cig() * g.h * g.w, g.kdim(), g.npix(), g.cog(), images.n);
    let ld = n * npix;
    let (col, gy) = scratch.split_at_mut(col_len(g, n));
    output_grads(g, &images, grad, gy, ld, npix);
    let Images { x: xs, gx: gxs, .. } = images;
    for grp in 0..g.groups {
        let wt = Mat { data: &w[grp * cog * kdim..][..cog * kdim], rs: 1, cs: kdim };
        for rows in row_tiles(g, n) {
            let (img_cols, cols) = (rows.len() * g.ow, n * rows.len() * g.ow);
            let gyg = Mat { data: &gy[grp * cog * ld + rows.start * g.ow..], rs: ld, cs: 1 };
            if let Some(acc) = acc.as_deref_mut() {
                let p = patches(g, xs, grp, col, rows.clone());
                let dst = &mut acc[grp * cog * kdim..][..cog * kdim];
                if transposed_weight_grad(g) {
                    let (p, gy_t) = (Mat { data: p, rs: cols, cs: 1 }, Mat { data: gyg.data, rs: 1, cs: ld });
                    sgemm(kdim, cog, cols, dst, cog, true, p, gy_t, par);
                } else {
                    sgemm(cog, kdim, cols, dst, kdim, true, gyg, Mat { data: p, rs: 1, cs: cols }, par);
                }
            }
            if !need_x {
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
    gxs
}

/// Whether [`backward_gemm`] accumulates the weight gradient transposed.
fn transposed_weight_grad(g: &Geom) -> bool {
    g.kdim() > g.cog()
}

/// `grad_w` from [`backward_gemm`]'s accumulator, output channels in parallel (a ResNet-50's
/// weights are 100 MB).
fn weight_grad_gemm(g: &Geom, acc: &[f32], gw: &mut [f32]) {
    if !transposed_weight_grad(g) {
        gw.copy_from_slice(acc);
        return;
    }
    let (cog, kdim) = (g.cog(), g.kdim());
    gw.par_chunks_mut(kdim).enumerate().for_each(|(r, row)| {
        let (src, co) = (&acc[(r / cog) * cog * kdim..][..cog * kdim], r % cog);
        for (kk, v) in row.iter_mut().enumerate() {
            *v = src[kk * cog + co];
        }
    });
}

/// The input gradient of a stride-1 convolution is itself a convolution: of the output gradient
/// with the kernel flipped and its input and output channels swapped, padding `k − 1 − p`. Run
/// as one, its GEMM is `C_out·k²` deep (instead of `C_out`) and writes the gradient directly,
/// with no patch-matrix gradient to scatter back (`col2im`). Its patch matrix `P` (of the output
/// gradient) also gives the weight gradient: `grad_w[o, i, k] = Σ_q x[i, q] · P[(o, k̄), q]`, `k̄`
/// the flipped kernel offset, so the backward builds one patch matrix instead of two.
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
        // Row `(grp, ci)` of the transposed weights: input channel `ci`'s kernels of the group's
        // output channels, each flipped in both axes ((ky, kx) -> (kh − 1 − ky, kw − 1 − kx) is
        // a reversal).
        let mut wt = vec![0f32; w.len()];
        wt.par_chunks_mut(cog * kk).enumerate().for_each(|(r, row)| {
            let (grp, ci) = (r / cig, r % cig);
            for (co, dst) in row.chunks_mut(kk).enumerate() {
                let src = &w[((grp * cog + co) * cig + ci) * kk..][..kk];
                dst.iter_mut().zip(src.iter().rev()).for_each(|(d, &v)| *d = v);
            }
        });
        Some(Transposed { g: tg, w: wt })
    }

    /// Scratch floats for groups of `nb` images: their output gradients (image after image, the
    /// transposed conv's input), its patch matrix, and for several images the inputs and input
    /// gradients side by side.
    fn scratch_len(&self, g: &Geom, nb: usize) -> usize {
        let side_by_side = if nb > 1 { 2 * g.ci * nb * g.h * g.w } else { 0 };
        g.co * nb * g.npix() + col_len(&self.g, nb) + side_by_side
    }

    /// The gradients of `images` per conv group and band of input rows: `grad_x = w̃ · P`, and
    /// `acc += P · xᵀ` (per group `cog·k² x cig`, rows in `P`'s order). Returns the images' input
    /// gradients.
    fn backward<'a>(
        &self,
        g: &Geom,
        images: Images<'a>,
        grad: &impl Fn(usize, usize, &mut [f32]),
        scratch: &mut [f32],
        mut acc: Option<&mut [f32]>,
        par: Parallelism,
    ) -> &'a mut [f32] {
        let (tg, n, hw) = (&self.g, images.n, g.h * g.w);
        let (cig, kd) = (g.cig(), tg.kdim());
        let (gy, rest) = scratch.split_at_mut(g.co * n * g.npix());
        output_grads(g, &images, grad, gy, g.npix(), g.y_len());
        let (col, rest) = rest.split_at_mut(col_len(tg, n));
        let (xsb, gxb) = rest.split_at_mut(if n > 1 { g.ci * n * hw } else { 0 });
        let Images { x: xs, gx: gxs, .. } = images;
        if n > 1 && acc.is_some() {
            // The inputs side by side, the weight gradient's GEMM operand.
            for (r, dst) in xsb.chunks_mut(hw).enumerate() {
                let (c, j) = (r / n, r % n);
                dst.copy_from_slice(&xs[j * g.x_len() + c * hw..][..hw]);
            }
        }
        for grp in 0..g.groups {
            let wt = Mat { data: &self.w[grp * cig * kd..][..cig * kd], rs: kd, cs: 1 };
            for rows in row_tiles(tg, n) {
                let cols = n * rows.len() * tg.ow;
                let p = Mat { data: patches(tg, gy, grp, col, rows.clone()), rs: cols, cs: 1 };
                if n == 1 {
                    let at = grp * cig * hw + rows.start * g.w;
                    sgemm(cig, cols, kd, &mut gxs[at..], hw, false, wt, p, par);
                } else {
                    sgemm(cig, cols, kd, &mut gxb[..cig * cols], cols, false, wt, p, par);
                    for (r, src) in gxb[..cig * cols].chunks(hw).enumerate() {
                        let (c, j) = (r / n, r % n);
                        gxs[j * g.x_len() + (grp * cig + c) * hw..][..hw].copy_from_slice(src);
                    }
                }
                if let Some(acc) = acc.as_deref_mut() {
                    let xt = match n {
                        1 => Mat { data: &xs[grp * cig * hw + rows.start * g.w..], rs: 1, cs: hw },
                        _ => Mat { data: &xsb[grp * cig * n * hw..], rs: 1, cs: n * hw },
                    };
                    sgemm(kd, cig, cols, &mut acc[grp * kd * cig..][..kd * cig], cig, true, p, xt, par);
                }
            }
        }
        gxs
    }

    /// `grad_w` from [`Transposed::backward`]'s accumulator: row `(o, k̄)`, column `i` is
    /// `grad_w[o, i, k]`.
    fn weight_grad(&self, g: &Geom, acc: &[f32], gw: &mut [f32]) {
        let (cig, cog, kk) = (g.cig(), g.cog(), g.kh * g.kw);
        gw.par_chunks_mut(cig * kk).enumerate().for_each(|(r, dst)| {
            let (src, co) = (&acc[(r / cog) * cog * kk * cig..][..cog * kk * cig], r % cog);
            for (ci, dst) in dst.chunks_mut(kk).enumerate() {
                for (k, v) in dst.iter_mut().enumerate() {
                    *v = src[(co * kk + kk - 1 - k) * cig + ci];
                }
            }
        });
    }
}

/// [`Method::Direct`]: the input gradient is the convolution of the padded `grad_y` with the
/// flipped, transposed kernel (as in [`Transposed`]), the weight gradient the correlation of
/// `grad_y` with the padded input, both read in place by [`direct`]'s register tiles.
struct DirectBackward {
    /// The transposed conv's kernels (`C_out` to `C_in` channels, flipped) in [`direct::pack`]'s
    /// order, where the input gradient is needed.
    packed: Option<Vec<f32>>,
}

impl DirectBackward {
    fn of(g: &Geom, w: &[f32], need_x: bool) -> DirectBackward {
        let (ci, co) = (g.ci, g.co);
        // Transposed conv: output channel `i`, input channel `o`, offset `t` flipped (8 − t).
        let packed = need_x.then(|| direct::pack(ci, co, |i, o, t| w[(o * ci + i) * 9 + 8 - t]));
        DirectBackward { packed }
    }

    /// Scratch floats for groups of `nb` images: their output gradients, one of them padded, and
    /// their padded inputs.
    fn scratch_len(g: &Geom, nb: usize) -> usize {
        nb * (g.co * g.npix() + direct::padded_len(g.ci, g.h, g.w)) + direct::padded_len(g.co, g.h, g.w)
    }

    /// The gradients of `images`: their input gradients added onto `images.gx` (zeros; where
    /// needed), their weight gradient added to `acc` (OIHW) in one pass over all of them, whose
    /// register sums then cover several small maps.
    fn backward<'a>(
        &self,
        g: &Geom,
        images: Images<'a>,
        grad: &impl Fn(usize, usize, &mut [f32]),
        scratch: &mut [f32],
        acc: Option<&mut [f32]>,
    ) -> &'a mut [f32] {
        let (hw, ylen) = ((g.h, g.w), g.y_len());
        let (gy, rest) = scratch.split_at_mut(images.n * ylen);
        output_grads(g, &images, grad, gy, g.npix(), ylen);
        let (gyp, xp) = rest.split_at_mut(direct::padded_len(g.co, g.h, g.w));
        if let Some(packed) = &self.packed {
            for (gy, gx) in gy.chunks_exact(ylen).zip(images.gx.chunks_exact_mut(g.x_len())) {
                direct::pad(gy, g.co, g.h, g.w, gyp);
                direct::conv(gyp, packed, g.co, g.ci, hw, gx);
            }
        }
        if let Some(acc) = acc {
            direct::pad(images.x, images.n * g.ci, g.h, g.w, xp);
            direct::weight_grad(gy, xp, (g.co, g.ci, images.n), hw, acc);
        }
        images.gx
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
