//! ConvNeXt's block output as timm composes it, `x + γ ⊙ h` with `h` the MLP's channels-last
//! output `(B, H, W, C)` and `x` the block's channels-first input `(B, C, H, W)`, as one op each
//! way (castream's ConvNeXt runs the whole block MLP as one op instead: `mlp_train.rs`).
//!
//! With candle's ops it is a broadcast product, a permute and an addition: the addition reads
//! the permuted product with strides, and the backward reduces `dy ⊙ h` over batch and positions
//! for `dγ` (a strided reduction over three dimensions: measured at 8% of a ConvNeXt train step)
//! and allocates and accumulates every intermediate gradient. Here each image's `h` is
//! transposed (and scaled) in cache and added to `x`; the backward transposes `dy` back into
//! `dh` and takes `dγ`'s per-image sums in the same pass.

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept, PlaneSums};
use crate::cpu::{f32_slice, par_build, with_scratch};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `(B, C, H, W)` of `x`, checked against `h` and `γ`.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    hw: usize,
}

impl Dims {
    fn of(op: &str, x: &[usize], h: &[usize], gamma: usize) -> Result<Dims> {
        let (&[b, c, hh, w], &[hb, hh2, w2, hc]) = (x, h) else {
            bail!("{op}: expected a 4-d input and a 4-d channels-last branch, got {x:?} and {h:?}")
        };
        if (b, hh, w, c) != (hb, hh2, w2, hc) || gamma != c {
            bail!("{op}: input {x:?}, channels-last branch {h:?} and {gamma} scales do not match")
        }
        Ok(Dims { b, c, hw: hh * w })
    }

    fn image(&self) -> usize {
        self.c * self.hw
    }
}

/// `(x, h, γ) -> x + γ ⊙ permute(h)`.
pub(crate) struct LayerScaleResidual;

impl CustomOp3 for LayerScaleResidual {
    fn name(&self) -> &'static str {
        "castream-layer-scale-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        hs: &CpuStorage,
        hl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, h, gamma) = (f32_slice(xs, xl, name)?, f32_slice(hs, hl, name)?, f32_slice(gs, gl, name)?);
        let d = Dims::of(name, xl.dims(), hl.dims(), gamma.len())?;
        let n = d.image();
        let y = par_build(d.b * n, n, |i, blank| {
            with_scratch(n, |t| {
                // γ ⊙ h of image `i`, channels first.
                for (p, row) in h[i * n..][..n].chunks(d.c).enumerate() {
                    for ((ch, &v), &g) in row.iter().enumerate().zip(gamma) {
                        t[ch * d.hw + p] = g * v;
                    }
                }
                blank.map([&x[i * n..], t], |[x, t]| x + t)
            })
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        h: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let sums = Arc::new(OnceLock::new());
        let dh = h.apply_op2_no_bwd(&grad, &LayerScaleBackward { gamma: gamma.clone(), sums: sums.clone() })?;
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let sums: &PlaneSums = kept(&sums, "layer_scale_residual")?;
        // dγ per channel: the images' sums added in f64, in batch order.
        let dgamma = (0..c).map(|ch| (0..b).map(|i| sums.get(i * c + ch).0 as f64).sum::<f64>() as f32);
        let dgamma = Tensor::from_iter(dgamma, x.device())?;
        Ok((x.track_op().then_some(grad), h.track_op().then_some(dh), gamma.track_op().then_some(dgamma)))
    }
}

/// `(h, dy) -> dh = permute(γ ⊙ dy)`; records each image's per-channel `Σ dy ⊙ permute(h)` in
/// `sums`.
struct LayerScaleBackward {
    gamma: Tensor,
    sums: Arc<OnceLock<PlaneSums>>,
}

impl CustomOp2 for LayerScaleBackward {
    fn name(&self) -> &'static str {
        "castream-layer-scale-residual-backward"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (h, dy) = (f32_slice(hs, hl, name)?, f32_slice(ds, dl, name)?);
        let gamma = self.gamma.to_vec1::<f32>()?;
        let d = Dims::of(name, dl.dims(), hl.dims(), gamma.len())?;
        let n = d.image();
        let sums = PlaneSums::new(d.b * d.c);
        let dh = par_build(d.b * n, n, |i, blank| {
            let (hi, di) = (&h[i * n..][..n], &dy[i * n..][..n]);
            for ch in 0..d.c {
                let s: f64 =
                    di[ch * d.hw..][..d.hw].iter().enumerate().map(|(p, &g)| g as f64 * hi[p * d.c + ch] as f64).sum();
                sums.record(i * d.c + ch, (s as f32, 0.0));
            }
            // Channels last again: position `p`, channel `ch` is `γ_ch · dy[ch, p]`.
            with_scratch(n, |t| {
                for (ch, row) in di.chunks(d.hw).enumerate() {
                    row.iter().enumerate().for_each(|(p, &g)| t[p * d.c + ch] = gamma[ch] * g);
                }
                blank.map([t], |[v]| v)
            })
        });
        keep(&self.sums, sums, name)?;
        Ok((CpuStorage::F32(dh), hl.shape().clone()))
    }
}
