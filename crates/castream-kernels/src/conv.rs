//! Dense and grouped 2-d convolution as GEMM (`C_out/g x K` weights times a `K x oh*ow` patch
//! matrix per image and group), with a backward pass made of GEMMs too.
//!
//! candle's CPU conv reaches about a quarter of its own matmul speed and computes the input
//! gradient with a naive transposed-convolution loop; here both directions run at GEMM speed.
//! Images are spread over rayon threads, each with its own patch buffer. The bias and an optional
//! ReLU are applied in the GEMM's epilogue: the output rows start as the bias, the GEMM
//! accumulates into them, and the ReLU runs on each image's output while it is still in cache.

use crate::cpu::{f32_slice, sgemm, split, zeros, Mat};
use crate::im2col::{col2im, im2col};
use crate::relu::relu_grad;
use crate::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
        let g = Geom::new(xl.dims(), wl.dims(), self.p)?;
        let x = f32_slice(xs, xl, self.name())?;
        let w = f32_slice(ws, wl, self.name())?;
        let bias = f32_slice(bs, bl, self.name())?;
        if bias.len() != g.co {
            bail!("{}: {} output channels but {} bias values", self.name(), g.co, bias.len())
        }
        let mut y = vec![0f32; g.b * g.y_len()];
        let (chunk, par) = split(g.b);
        let (cig_len, cog_len, kdim, npix) = (g.cig() * g.h * g.w, g.cog() * g.npix(), g.kdim(), g.npix());
        y.par_chunks_mut(chunk * g.y_len()).zip(x.par_chunks(chunk * g.x_len())).for_each(|(ys, xs)| {
            let mut col = if g.pointwise() { Vec::new() } else { vec![0f32; kdim * npix] };
            for (y, x) in ys.chunks_mut(g.y_len()).zip(xs.chunks(g.x_len())) {
                for (row, &b) in y.chunks_mut(npix).zip(bias) {
                    row.fill(b);
                }
                for grp in 0..g.groups {
                    let xg = &x[grp * cig_len..][..cig_len];
                    let rhs = if g.pointwise() {
                        xg
                    } else {
                        im2col(xg, &g, &mut col);
                        &col
                    };
                    sgemm(
                        g.cog(),
                        npix,
                        kdim,
                        &mut y[grp * cog_len..][..cog_len],
                        npix,
                        true,
                        Mat { data: &w[grp * g.cog() * kdim..][..g.cog() * kdim], rs: kdim, cs: 1 },
                        Mat { data: rhs, rs: npix, cs: 1 },
                        par,
                    );
                }
                if self.relu {
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        });
        Ok((CpuStorage::F32(y), g.out_shape()))
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
    let (nx, nw) = (x.elem_count(), w.elem_count());
    let gx = if need_x { Some(both.narrow(0, 0, nx)?.reshape(x.shape())?) } else { None };
    let gw = if need_w { Some(both.narrow(0, nx, nw)?.reshape(w.shape())?) } else { None };
    Ok((gx, gw))
}

/// `(x, w, grad_y) -> [grad_x | grad_w]` flattened. Per image and group:
/// `grad_w += grad_y · im2col(x)ᵀ` and `grad_x += col2im(wᵀ · grad_y)`. Threads take disjoint
/// images and keep private weight gradients, summed at the end. The half that is not needed is
/// skipped.
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
        let g = Geom::new(xl.dims(), wl.dims(), self.p)?;
        if gl.dims() != g.out_shape().dims() {
            bail!("{}: gradient {:?} does not match output {:?}", self.name(), gl.dims(), g.out_shape())
        }
        let x = f32_slice(xs, xl, self.name())?;
        let w = f32_slice(ws, wl, self.name())?;
        let gy = f32_slice(gs, gl, self.name())?;
        let nx = g.b * g.x_len();
        // col2im accumulates into grad_x; an unneeded grad_x stays untouched zero pages.
        let mut out = if self.need_x { zeros(nx + w.len()) } else { vec![0f32; nx + w.len()] };
        let (gx, gw_out) = out.split_at_mut(nx);
        let (chunk, par) = split(g.b);
        let (cig_len, cog_len, kdim, npix, cog) =
            (g.cig() * g.h * g.w, g.cog() * g.npix(), g.kdim(), g.npix(), g.cog());
        let (need_x, need_w) = (self.need_x, self.need_w);
        let gw = gx
            .par_chunks_mut(chunk * g.x_len())
            .zip(x.par_chunks(chunk * g.x_len()))
            .zip(gy.par_chunks(chunk * g.y_len()))
            .map(|((gxs, xs), gys)| {
                let mut gw = if need_w { vec![0f32; w.len()] } else { Vec::new() };
                let mut col = if g.pointwise() { Vec::new() } else { vec![0f32; kdim * npix] };
                for ((gx, x), gy) in gxs.chunks_mut(g.x_len()).zip(xs.chunks(g.x_len())).zip(gys.chunks(g.y_len())) {
                    for grp in 0..g.groups {
                        let gyg = Mat { data: &gy[grp * cog_len..][..cog_len], rs: npix, cs: 1 };
                        let wg = &w[grp * cog * kdim..][..cog * kdim];
                        if need_w {
                            let xg = &x[grp * cig_len..][..cig_len];
                            let patches = if g.pointwise() {
                                xg
                            } else {
                                im2col(xg, &g, &mut col);
                                &col
                            };
                            let dst = &mut gw[grp * cog * kdim..][..cog * kdim];
                            sgemm(cog, kdim, npix, dst, kdim, true, gyg, Mat { data: patches, rs: 1, cs: npix }, par);
                        }
                        if need_x {
                            let wt = Mat { data: wg, rs: 1, cs: kdim };
                            let gxg = &mut gx[grp * cig_len..][..cig_len];
                            if g.pointwise() {
                                sgemm(kdim, npix, cog, gxg, npix, false, wt, gyg, par);
                            } else {
                                sgemm(kdim, npix, cog, &mut col, npix, false, wt, gyg, par);
                                col2im(&col, &g, gxg);
                            }
                        }
                    }
                }
                gw
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
            gw_out.copy_from_slice(&gw);
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + w.len())))
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
