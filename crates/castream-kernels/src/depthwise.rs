//! Depthwise convolution (`groups == C_in == C_out`, e.g. ConvNeXt's 7x7) as direct shifted
//! multiply-adds over zero-padded planes.
//!
//! candle runs one tiny convolution per channel (well under 1 GFLOP/s); a depthwise conv has no
//! reduction over channels, so GEMM gains nothing and the work is `kh * kw` vectorisable
//! `row += w * shifted_row` passes per output row. Forward and input gradient are parallel over
//! (image, channel) planes, the weight gradient over channels (no reduction across threads).

use crate::conv::{fused_backward, ChannelSum, Geom};
use crate::cpu::{f32_slice, simd_dispatch};
use crate::Conv2dParams;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// True for the convolutions this module handles.
pub(crate) fn is_depthwise(x_dims: &[usize], w_dims: &[usize], groups: usize) -> bool {
    matches!((x_dims, w_dims), (&[_, c, _, _], &[co, 1, _, _]) if groups > 1 && groups == c && co == c)
}

/// Side lengths of a plane zero-padded by `pad` on each side.
fn padded(g: &Geom) -> (usize, usize) {
    (g.h + 2 * g.pad, g.w + 2 * g.pad)
}

/// Copies an `h x w` plane into the middle of a zeroed `(h + 2p) x (w + 2p)` buffer (any slack
/// after it stays as allocated: zeros).
fn pad_plane(x: &[f32], g: &Geom, buf: &mut [f32]) {
    let (hp, wp) = padded(g);
    buf[..hp * wp].fill(0.0);
    for (iy, row) in x.chunks(g.w).enumerate() {
        buf[(iy + g.pad) * wp + g.pad..][..g.w].copy_from_slice(row);
    }
}

/// Register tile of the stride-1 forward: `TILE_ROWS` output rows of `TILE_COLS` (one AVX-512
/// vector) accumulate all `kh * kw` taps in registers, with independent chains per row. Ragged
/// edges compute whole tiles from the padded buffer's slack and store only the valid part:
/// row-pass tails (`out += k · row`, masked load-add-store per tap) were measured 4x slower.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 16;

/// Length of a padded-plane buffer: the padded plane plus slack for whole edge tiles.
fn pad_len(g: &Geom) -> usize {
    let (hp, wp) = padded(g);
    (hp + TILE_ROWS) * wp + TILE_COLS
}

simd_dispatch! {
    /// One output plane: `y[oy, ox] = Σ k[ky, kx] · pad[oy·s + ky, ox·s + kx]`.
    fn forward_plane(pad: &[f32], k: &[f32], g: &Geom, y: &mut [f32]) {
        let (_, wp) = padded(g);
        let s = g.stride;
        if s != 1 {
            for (oy, out) in y.chunks_mut(g.ow).enumerate() {
                out.fill(0.0);
                for ky in 0..g.kh {
                    let row = &pad[(oy * s + ky) * wp..][..wp];
                    for kx in 0..g.kw {
                        let wv = k[ky * g.kw + kx];
                        for (ox, o) in out.iter_mut().enumerate() {
                            *o += wv * row[ox * s + kx];
                        }
                    }
                }
            }
            return;
        }
        for oy in (0..g.oh).step_by(TILE_ROWS) {
            for ox in (0..g.ow).step_by(TILE_COLS) {
                let mut acc = [[0f32; TILE_COLS]; TILE_ROWS];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let wv = k[ky * g.kw + kx];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let src = &pad[(oy + r + ky) * wp + ox + kx..][..TILE_COLS];
                            for i in 0..TILE_COLS {
                                acc[i] += wv * src[i];
                            }
                        }
                    }
                }
                let cols = TILE_COLS.min(g.ow - ox);
                for (r, acc) in acc.iter().enumerate().take(g.oh - oy) {
                    y[(oy + r) * g.ow + ox..][..cols].copy_from_slice(&acc[..cols]);
                }
            }
        }
    }
}

/// For stride 1 and a square kernel with `p < k`, the geometry whose forward is the input
/// gradient: the output grad as input, padded by `k - 1 - p`, producing an `h x w` plane.
fn transposed(g: &Geom) -> Option<Geom> {
    (g.stride == 1 && g.kh == g.kw && g.pad < g.kh).then(|| Geom {
        h: g.oh,
        w: g.ow,
        pad: g.kh - 1 - g.pad,
        oh: g.h,
        ow: g.w,
        ..*g
    })
}

simd_dispatch! {
    /// Input gradient of one plane (any stride): scatters `k[ky, kx] · gy[oy, ox]` onto the zeroed padded
    /// buffer `gpad`, then crops the interior into `gx`.
    fn input_grad_plane(gy: &[f32], k: &[f32], g: &Geom, gpad: &mut [f32], gx: &mut [f32]) {
        let (_, wp) = padded(g);
        let (s, ow) = (g.stride, g.ow);
        gpad.fill(0.0);
        for (oy, grow) in gy.chunks(ow).enumerate() {
            for ky in 0..g.kh {
                let row = &mut gpad[(oy * s + ky) * wp..][..wp];
                for kx in 0..g.kw {
                    let wv = k[ky * g.kw + kx];
                    if s == 1 {
                        for (d, v) in row[kx..kx + ow].iter_mut().zip(grow) {
                            *d += wv * v;
                        }
                    } else {
                        for (ox, v) in grow.iter().enumerate() {
                            row[ox * s + kx] += wv * v;
                        }
                    }
                }
            }
        }
        for (iy, out) in gx.chunks_mut(g.w).enumerate() {
            out.copy_from_slice(&gpad[(iy + g.pad) * wp + g.pad..][..g.w]);
        }
    }
}

/// Lanes of the weight-gradient dot products: independent partial sums let the compiler
/// vectorise a floating-point reduction it may not reorder.
const LANES: usize = 16;

simd_dispatch! {
    /// Adds one plane's contribution `Σ gy[oy, ox] · pad[oy·s + ky, ox·s + kx]` to `gk[ky, kx]`.
    fn weight_grad_plane(pad: &[f32], gy: &[f32], g: &Geom, gk: &mut [f32]) {
        let (_, wp) = padded(g);
        let (s, ow) = (g.stride, g.ow);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let mut acc = [0f32; LANES];
                let mut tail = 0f32;
                for (oy, grow) in gy.chunks(ow).enumerate() {
                    let row = &pad[(oy * s + ky) * wp + kx..];
                    if s == 1 {
                        let row = &row[..ow];
                        let full = ow / LANES * LANES;
                        for (gc, rc) in grow[..full].chunks_exact(LANES).zip(row[..full].chunks_exact(LANES)) {
                            for i in 0..LANES {
                                acc[i] += gc[i] * rc[i];
                            }
                        }
                        for (gv, rv) in grow[full..].iter().zip(&row[full..]) {
                            tail += gv * rv;
                        }
                    } else {
                        for (ox, gv) in grow.iter().enumerate() {
                            tail += gv * row[ox * s];
                        }
                    }
                }
                gk[ky * g.kw + kx] += acc.iter().sum::<f32>() + tail;
            }
        }
    }
}

/// Forward depthwise convolution `(x, w, bias)`, the bias added to each plane while it is in
/// cache (a separate broadcast add was one more pass forward and a strided sum backward); `bwd`
/// returns the input and weight gradients from one [`DepthwiseBackward`].
pub(crate) struct DepthwiseConv2d(pub Conv2dParams);

impl CustomOp3 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "castream-depthwise-conv2d"
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
        let g = Geom::new(xl.dims(), wl.dims(), self.0)?;
        if !is_depthwise(xl.dims(), wl.dims(), g.groups) || bl.dims() != [g.co] {
            bail!("{}: bad shapes {:?}, {:?}, bias {:?}", self.name(), xl.dims(), wl.dims(), bl.dims())
        }
        let x = f32_slice(xs, xl, self.name())?;
        let w = f32_slice(ws, wl, self.name())?;
        let bias = f32_slice(bs, bl, self.name())?;
        let (plane_in, kk) = (g.h * g.w, g.kh * g.kw);
        let mut y = vec![0f32; g.b * g.y_len()];
        y.par_chunks_mut(g.npix()).enumerate().for_each_init(
            || vec![0f32; pad_len(&g)],
            |pad, (i, yp)| {
                pad_plane(&x[i * plane_in..][..plane_in], &g, pad);
                forward_plane(pad, &w[(i % g.ci) * kk..][..kk], &g, yp);
                let b = bias[i % g.ci];
                yp.iter_mut().for_each(|v| *v += b);
            },
        );
        Ok((CpuStorage::F32(y), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = fused_backward(x, w, grad, |need_x, need_w| DepthwiseBackward { p: self.0, need_x, need_w })?;
        let gb = if bias.track_op() { Some(grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// `(x, w, grad_y) -> [grad_x | grad_w]` flattened, skipping the half that is not needed.
pub(crate) struct DepthwiseBackward {
    pub p: Conv2dParams,
    pub need_x: bool,
    pub need_w: bool,
}

impl CustomOp3 for DepthwiseBackward {
    fn name(&self) -> &'static str {
        "castream-depthwise-conv2d-backward"
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
        if !is_depthwise(xl.dims(), wl.dims(), g.groups) || gl.dims() != g.out_shape().dims() {
            bail!("{}: bad shapes {:?}, {:?}, {:?}", self.name(), xl.dims(), wl.dims(), gl.dims())
        }
        let x = f32_slice(xs, xl, self.name())?;
        let w = f32_slice(ws, wl, self.name())?;
        let gy = f32_slice(gs, gl, self.name())?;
        let (hp, wp) = padded(&g);
        let (plane_in, npix, kk) = (g.h * g.w, g.npix(), g.kh * g.kw);
        let nx = x.len();
        let mut out = vec![0f32; nx + w.len()];
        let (gx, gw) = out.split_at_mut(nx);
        if self.need_x {
            if let Some(gt) = transposed(&g) {
                // Stride 1: grad_x is the correlation of the grad, padded by k - 1 - p, with the
                // flipped kernel, i.e. the (register-tiled) forward kernel again.
                let flipped: Vec<f32> = w.chunks(kk).flat_map(|k| k.iter().rev()).copied().collect();
                gx.par_chunks_mut(plane_in).enumerate().for_each_init(
                    || vec![0f32; pad_len(&gt)],
                    |pad, (i, gxp)| {
                        pad_plane(&gy[i * npix..][..npix], &gt, pad);
                        forward_plane(pad, &flipped[(i % g.ci) * kk..][..kk], &gt, gxp);
                    },
                );
            } else {
                gx.par_chunks_mut(plane_in).enumerate().for_each_init(
                    || vec![0f32; hp * wp],
                    |gpad, (i, gxp)| {
                        input_grad_plane(&gy[i * npix..][..npix], &w[(i % g.ci) * kk..][..kk], &g, gpad, gxp);
                    },
                );
            }
        }
        if self.need_w {
            gw.par_chunks_mut(kk).enumerate().for_each_init(
                || vec![0f32; hp * wp],
                |pad, (c, gk)| {
                    for b in 0..g.b {
                        let i = b * g.ci + c;
                        pad_plane(&x[i * plane_in..][..plane_in], &g, pad);
                        weight_grad_plane(pad, &gy[i * npix..][..npix], &g, gk);
                    }
                },
            );
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + w.len())))
    }
}
