//! A convolution followed by training-mode BatchNorm (and a ReLU) as one op.
//!
//! As two ops, the convolution's output and its gradient are candle tensors: candle's backward
//! allocates a zero tensor plus an addition for every gradient it accumulates, and the
//! BatchNorm's input gradient is written out whole before the convolution's backward reads it
//! back. Here the convolution's output stays inside the op (kept for the backward with the batch
//! statistics), and the backward computes each image's BatchNorm input gradient just before that
//! image's GEMMs, while it is in cache.

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept, Normaliser, Planes};
use crate::conv::{self, ConvArgs};
use crate::cpu::split_flat;
use crate::Conv2dParams;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// What the forward keeps: the convolution's output and its normalisation.
pub(crate) struct Saved {
    z: Vec<f32>,
    pub norm: Normaliser,
}

/// `(x, w, [γ | β]) -> act(BatchNorm(conv(x, w)))` with the batch statistics.
pub(crate) struct ConvBnTrain {
    pub p: Conv2dParams,
    pub eps: f64,
    pub relu: bool,
    pub saved: Arc<OnceLock<Saved>>,
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "castream-conv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.p, (xs, xl), (ws, wl))?;
        let params = g.per_channel(self.name(), (ps, pl), 2, "BatchNorm parameters (expected γ and β)")?;
        let z = conv::forward(&g, x, w, None, false);
        let (gamma, beta) = params.split_at(g.co);
        let planes = Planes::of(g.out_shape().dims(), self.name())?;
        let norm = Normaliser::new(&z, planes, gamma, beta, self.eps, self.relu, self.name())?;
        let y = norm.apply(&z);
        keep(&self.saved, Saved { z, norm }, self.name())?;
        Ok((CpuStorage::F32(y), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_x, need_w) = (x.track_op(), w.track_op());
        let op = ConvBnBackward { p: self.p, need_x, need_w, saved: self.saved.clone() };
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let [gx, gw, gp] = split_flat(&all, [x.shape(), w.shape(), params.shape()])?;
        Ok((need_x.then_some(gx), need_w.then_some(gw), Some(gp)))
    }
}

/// `(x, w, dy) -> [dx | dw | dγ | dβ]` flattened.
struct ConvBnBackward {
    p: Conv2dParams,
    need_x: bool,
    need_w: bool,
    saved: Arc<OnceLock<Saved>>,
}

impl CustomOp3 for ConvBnBackward {
    fn name(&self) -> &'static str {
        "castream-conv-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Saved { z, norm } = kept(&self.saved, self.name())?;
        let ConvArgs { g, x, w } = ConvArgs::new(self.name(), self.p, (xs, xl), (ws, wl))?;
        let dy = g.output_grad(self.name(), (ds, dl))?;
        let grad = norm.backward(z, dy);
        let (npix, ylen) = (g.npix(), g.y_len());
        let mut out = conv::backward(&g, x, w, self.need_x, self.need_w, grad.params.len(), |i, ch, dz| {
            let at = i * ylen + ch * npix;
            norm.dx_row(&grad, ch, &z[at..][..npix], &dy[at..][..npix], dz);
        });
        let n = out.len();
        out[n - grad.params.len()..].copy_from_slice(&grad.params);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
