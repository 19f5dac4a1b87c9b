//! A residual block in training mode as one op: its chain of conv + BatchNorm layers (a ReLU
//! after each but the last), the shortcut (the identity or one more conv + BatchNorm), the sum
//! and the final ReLU.
//!
//! As separate ops, every activation inside the block is a candle tensor, and candle's backward
//! accumulates each one's gradient into a fresh zero tensor (`zeros_like` + `add`, two extra
//! passes per edge); the residual sum's gradient is written out twice, once per branch. Here the
//! block's input is its only gradient edge: the inner gradients go from one layer's backward to
//! the next inside the op, and the sum's gradient (masked by the final ReLU) is computed once and
//! read by both branches.

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept, Normaliser, Planes};
use crate::conv::{self, Geom};
use crate::convbn;
use crate::cpu::{f32_slice, par_build, split_flat};
use crate::{BatchStats, Conv2dParams};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// One conv + BatchNorm layer: weight shape and conv parameters (γ, β travel in the op's
/// parameter input).
pub(crate) struct LayerSpec {
    pub w_shape: [usize; 4],
    pub p: Conv2dParams,
}

/// What one layer's forward keeps.
struct Kept {
    g: Geom,
    z: Vec<f32>,
    norm: Normaliser,
}

struct Saved {
    /// The chain layers, then the shortcut's when it has one.
    layers: Vec<Kept>,
    /// The inputs of chain layers 1.. (layer 0's is the block's input).
    inputs: Vec<Vec<f32>>,
}

/// `(x, [w_0 | w_1 | ..], [γ_0 | β_0 | γ_1 | β_1 | ..]) -> relu(chain(x) + shortcut(x))`, the
/// weights and parameters of the chain layers and then the shortcut's, flattened.
struct BlockTrain {
    /// The chain layers, then the shortcut's when `projection`.
    layers: Vec<LayerSpec>,
    projection: bool,
    eps: f64,
    saved: Arc<OnceLock<Saved>>,
}

/// Applies the block op to `x` with the flattened `weights` and `params` (see [`BlockTrain`]);
/// returns the output and each BatchNorm's statistics (chain order, then the shortcut's).
pub(crate) fn residual_block_train(
    x: &Tensor,
    weights: &Tensor,
    params: &Tensor,
    layers: Vec<LayerSpec>,
    projection: bool,
    eps: f64,
) -> Result<(Tensor, Vec<BatchStats>)> {
    if layers.len() <= projection as usize {
        bail!("residual block: no layers in its chain")
    }
    let saved = Arc::new(OnceLock::new());
    let op = BlockTrain { layers, projection, eps, saved: saved.clone() };
    let y = x.contiguous()?.apply_op3(weights, params, op)?;
    let stats = kept(&saved, "residual_block_train")?
        .layers
        .iter()
        .map(|k| {
            let (mean, var) = k.norm.stats(x.device())?;
            Ok(BatchStats { mean, var, count: k.g.b * k.g.npix() })
        })
        .collect::<Result<_>>()?;
    Ok((y, stats))
}

/// The flat parameter inputs, cut per layer.
struct Parts<'a> {
    w: Vec<&'a [f32]>,
    gamma: Vec<&'a [f32]>,
    beta: Vec<&'a [f32]>,
}

impl BlockTrain {
    fn chain_len(&self) -> usize {
        self.layers.len() - self.projection as usize
    }

    fn parts<'a>(&self, op: &str, w: &'a [f32], params: &'a [f32]) -> Result<Parts<'a>> {
        let (mut parts, mut at_w, mut at_p) = (Parts { w: vec![], gamma: vec![], beta: vec![] }, 0, 0);
        for l in &self.layers {
            let (nw, co) = (l.w_shape.iter().product::<usize>(), l.w_shape[0]);
            if at_w + nw > w.len() || at_p + 2 * co > params.len() {
                bail!(
                    "{op}: {} weights and {} BatchNorm parameters are too few for layers {:?}",
                    w.len(),
                    params.len(),
                    self.shapes()
                )
            }
            parts.w.push(&w[at_w..][..nw]);
            parts.gamma.push(&params[at_p..][..co]);
            parts.beta.push(&params[at_p + co..][..co]);
            (at_w, at_p) = (at_w + nw, at_p + 2 * co);
        }
        if at_w != w.len() || at_p != params.len() {
            bail!("{op}: {} weights and {} BatchNorm parameters for layers {:?}", w.len(), params.len(), self.shapes())
        }
        Ok(parts)
    }

    fn shapes(&self) -> Vec<[usize; 4]> {
        self.layers.iter().map(|l| l.w_shape).collect()
    }
}

/// Plane `plane` of the block's output before its ReLU is `residual` of the returned rows: the
/// last chain layer's conv output and the shortcut's (or `x` itself), with their BatchNorm maps.
/// The forward and the backward's ReLU mask both come from here, so they agree exactly.
fn residual_rows<'a>(saved: &'a Saved, chain: usize, x: &'a [f32], plane: usize) -> ([&'a [f32]; 2], [f32; 4]) {
    let last = &saved.layers[chain - 1];
    let (hw, ch) = (last.g.npix(), plane % last.g.co);
    let (scale, shift) = last.norm.affine(ch);
    let (short, s_scale, s_shift) = match saved.layers.get(chain) {
        Some(s) => {
            let (a, b) = s.norm.affine(ch);
            (&s.z[..], a, b)
        }
        None => (x, 1.0, 0.0),
    };
    ([&last.z[plane * hw..][..hw], &short[plane * hw..][..hw]], [scale, shift, s_scale, s_shift])
}

#[inline(always)]
fn residual(main: f32, short: f32, [a, b, c, d]: [f32; 4]) -> f32 {
    (main * a + b) + (short * c + d)
}

impl CustomOp3 for BlockTrain {
    fn name(&self) -> &'static str {
        "castream-residual-block-train"
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
        let name = self.name();
        let x = f32_slice(xs, xl, name)?;
        let parts = self.parts(name, f32_slice(ws, wl, name)?, f32_slice(ps, pl, name)?)?;
        let chain = self.chain_len();
        let (mut layers, mut inputs) =
            (Vec::with_capacity(self.layers.len()), Vec::<Vec<f32>>::with_capacity(chain - 1));
        let mut dims = xl.dims().to_vec();
        for (i, l) in self.layers.iter().enumerate() {
            let input = match inputs.last() {
                Some(a) if i < chain => a.as_slice(),
                _ => x,
            };
            let relu = i + 1 < chain;
            let in_dims = if i < chain { &dims[..] } else { xl.dims() };
            let g = Geom::new(in_dims, &l.w_shape, l.p)?;
            let z = conv::forward(&g, input, parts.w[i], None, false);
            let out = g.out_shape();
            let norm = Normaliser::new(
                &z,
                Planes::of(out.dims(), name)?,
                parts.gamma[i],
                parts.beta[i],
                self.eps,
                relu,
                name,
            )?;
            if relu {
                inputs.push(norm.apply(&z));
            }
            if i < chain {
                dims = out.dims().to_vec();
            } else if out.dims() != dims {
                bail!("{name}: the shortcut's output {:?} does not match the chain's {dims:?}", out.dims())
            }
            layers.push(Kept { g, z, norm });
        }
        if !self.projection && dims != xl.dims() {
            bail!("{name}: an identity shortcut needs the chain's output {dims:?} to match its input {:?}", xl.dims())
        }
        let saved = Saved { layers, inputs };
        let hw = dims[2] * dims[3];
        let y = par_build(dims.iter().product(), hw, |plane, blank| {
            let ([main, short], m) = residual_rows(&saved, chain, x, plane);
            blank.map([main, short], |[a, b]| residual(a, b, m).max(0.0))
        });
        keep(&self.saved, saved, name)?;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_x, need_w) = (x.track_op(), weights.track_op());
        let op = BlockBackward { chain: self.chain_len(), need_x, need_w, saved: self.saved.clone() };
        let all = x.apply_op3_no_bwd(weights, &grad.contiguous()?, &op)?;
        let [gx, gw, gp] = split_flat(&all, [x.shape(), weights.shape(), params.shape()])?;
        Ok((need_x.then_some(gx), need_w.then_some(gw), params.track_op().then_some(gp)))
    }
}

/// `(x, weights, dy) -> [dx | dweights | dparams]` flattened.
struct BlockBackward {
    chain: usize,
    need_x: bool,
    need_w: bool,
    saved: Arc<OnceLock<Saved>>,
}

impl BlockBackward {
    /// One layer's backward for its output gradient `dy`: `[dx | dw]` and `[dγ | dβ]`.
    fn layer(&self, k: &Kept, input: &[f32], w: &[f32], dy: &[f32], need_x: bool) -> (Vec<f32>, Vec<f32>) {
        let mut out = convbn::backward(&k.g, input, w, &k.z, &k.norm, dy, need_x, self.need_w);
        let params = out.split_off(out.len() - 2 * k.g.co);
        (out, params)
    }
}

impl CustomOp3 for BlockBackward {
    fn name(&self) -> &'static str {
        "castream-residual-block-train-backward"
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
        let name = self.name();
        let saved = kept(&self.saved, name)?;
        let (x, w, gy) = (f32_slice(xs, xl, name)?, f32_slice(ws, wl, name)?, f32_slice(ds, dl, name)?);
        let last = &saved.layers[self.chain - 1].g;
        if dl.dims() != last.out_shape().dims() {
            bail!("{name}: gradient {:?} does not match the block's output {:?}", dl.dims(), last.out_shape())
        }
        // The sum's gradient through the final ReLU, shared by both branches.
        let hw = last.npix();
        let gs = par_build(gy.len(), hw, |plane, blank| {
            let ([main, short], m) = residual_rows(saved, self.chain, x, plane);
            blank.map([main, short, &gy[plane * hw..]], |[a, b, g]| if residual(a, b, m) > 0.0 { g } else { 0.0 })
        });
        let mut offsets = Vec::with_capacity(saved.layers.len());
        let mut at = 0;
        for k in &saved.layers {
            offsets.push(at);
            at += k.g.co * k.g.kdim();
        }
        let weights = |i: usize| {
            let k = &saved.layers[i].g;
            &w[offsets[i]..][..k.co * k.kdim()]
        };
        let nx = x.len();
        let (mut dw, mut dp) = (vec![Vec::new(); saved.layers.len()], vec![Vec::new(); saved.layers.len()]);
        // The chain, last layer first; each layer's input gradient is the previous one's `dy`.
        let mut dy = None;
        for i in (0..self.chain).rev() {
            let input = if i == 0 { x } else { &saved.inputs[i - 1] };
            let out_dy: &[f32] = dy.as_deref().unwrap_or(&gs);
            let need_x = i > 0 || self.need_x;
            let (mut out, params) = self.layer(&saved.layers[i], input, weights(i), out_dy, need_x);
            let in_len = saved.layers[i].g.b * saved.layers[i].g.x_len();
            dw[i] = out.split_off(in_len);
            dp[i] = params;
            dy = Some(out);
        }
        let mut dx = dy.unwrap_or_default();
        match saved.layers.get(self.chain) {
            Some(k) => {
                let (out, params) = self.layer(k, x, weights(self.chain), &gs, self.need_x);
                if self.need_x {
                    add_into(&mut dx, &out[..nx]);
                }
                dw[self.chain] = out[nx..].to_vec();
                dp[self.chain] = params;
            }
            None if self.need_x => add_into(&mut dx, &gs),
            None => {}
        }
        let dp: Vec<f32> = dp.into_iter().flatten().collect();
        let mut all = dx;
        all.extend(dw.into_iter().flatten());
        all.extend(dp);
        let n = all.len();
        Ok((CpuStorage::F32(all), Shape::from(n)))
    }
}

/// `a += b`, in parallel chunks.
fn add_into(a: &mut [f32], b: &[f32]) {
    use rayon::prelude::*;
    a.par_chunks_mut(1 << 15).zip(b.par_chunks(1 << 15)).for_each(|(a, b)| {
        for (a, b) in a.iter_mut().zip(b) {
            *a += b;
        }
    });
}
