//! Convolution + bias + ReLU + max-pool as one op: the ResNet stem in evaluation mode. Its
//! full-resolution output (at the quick size four times the pooled one: 16 MB for a batch of 64)
//! is never written out; each image is pooled while its convolution output is in cache. The
//! backward recomputes that output and runs the two ops' backward passes.

use crate::conv::{Conv2d, ConvArgs, ImageKernels};
use crate::cpu::{par_build, split, with_scratch};
use crate::pool::{forward_plane, MaxPool2d, MaxPool2dBackward};
use crate::Conv2dParams;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `(x, w, bias) -> max_pool(ReLU(conv(x, w) + bias))`.
pub(crate) struct ConvReluPool {
    pub conv: Conv2dParams,
    pub pool: MaxPool2d,
}

impl CustomOp3 for ConvReluPool {
    fn name(&self) -> &'static str {
        "castream-conv2d-relu-max-pool2d"
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
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.conv, (xs, xl), (ws, wl))?;
        let bias = g.per_channel(self.name(), (bs, bl), 1, "bias values")?;
        let pg = self.pool.geom(&[g.b, g.co, g.oh, g.ow])?;
        let (pooled, npix) = (pg.oh * pg.ow, g.npix());
        let (_, par) = split(g.b);
        let kernels = ImageKernels::of(&g, w, 1, par);
        let conv_len = kernels.scratch_len(&g, 1);
        let y = par_build(g.b * g.co * pooled, g.co * pooled, |i, blank| {
            with_scratch(conv_len + g.y_len() + 2 * g.ow, |scratch| {
                let (conv_scratch, rest) = scratch.split_at_mut(conv_len);
                let (z, pool_scratch) = rest.split_at_mut(g.y_len());
                for (plane, &b) in z.chunks_mut(npix).zip(bias) {
                    plane.fill(b);
                }
                kernels.accumulate_image(&g, &x[i * g.x_len()..][..g.x_len()], conv_scratch, z, par);
                z.iter_mut().for_each(|v| *v = v.max(0.0));
                let mut y = blank.fill(f32::NEG_INFINITY);
                for (zp, yp) in z.chunks(npix).zip(y.chunks_mut(pooled)) {
                    forward_plane(&self.pool, &pg, zp, pool_scratch, yp);
                }
                y
            })
        });
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.co, pg.oh, pg.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let conv = Conv2d { p: self.conv, relu: true };
        let z = x.apply_op3_no_bwd(w, bias, &conv)?;
        let gz = z.apply_op2_no_bwd(&grad.contiguous()?, &MaxPool2dBackward(self.pool))?;
        conv.bwd(x, w, bias, &z, &gz)
    }
}
