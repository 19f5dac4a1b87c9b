//! Residual blocks in training mode as one op: per block, its chain of conv + BatchNorm layers (a
//! ReLU after each but the last), the shortcut (the identity or one more conv + BatchNorm), the
//! sum and the final ReLU; then the next block on its output.
//!
//! As separate ops, every activation inside a block is a candle tensor, and candle's backward
//! accumulates each one's gradient into a fresh zero tensor (`zeros_like` + `add`, two extra
//! passes per edge); the residual sum's gradient is written out twice, once per branch. Here the
//! op's input is its only gradient edge: the inner gradients go from one layer's backward to the
//! next, and from one block's to the one before, inside the op; each block's sum gradient
//! (masked by the final ReLU) is computed once and read by both branches.

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept, Normaliser, PlaneSums, Planes};
use crate::conv::{self, Geom};
use crate::convbn;
use crate::cpu::{f32_slice, par_build, split_flat};
use crate::{BatchStats, Conv2dParams};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// One conv + BatchNorm layer: weight shape and conv parameters (γ, β travel in the op's
/// parameter input).
pub(crate) struct LayerSpec {
    pub w_shape: [usize; 4],
    pub p: Conv2dParams,
}

/// One block: its chain layers, then the shortcut's when `projection`.
pub(crate) struct BlockSpec {
    pub layers: Vec<LayerSpec>,
    pub projection: bool,
}

impl BlockSpec {
    fn chain_len(&self) -> usize {
        self.layers.len() - self.projection as usize
    }
}

/// What one layer's forward keeps.
struct Kept {
    g: Geom,
    z: Vec<f32>,
    norm: Normaliser,
}

/// What one block's forward keeps.
struct Saved {
    /// The chain layers, then the shortcut's when it has one.
    layers: Vec<Kept>,
    /// The inputs of chain layers 1.. (layer 0's is the block's input).
    inputs: Vec<Vec<f32>>,
    /// The block's input (the previous block's output); empty for the first block, whose input
    /// is the op's.
    input: Vec<f32>,
}

/// `(x, [w_0 | w_1 | ..], [γ_0 | β_0 | γ_1 | β_1 | ..]) -> blocks(x)`, the weights and
/// parameters of every block's layers in order (each block's chain, then its shortcut), flattened.
struct BlocksTrain {
    blocks: Vec<BlockSpec>,
    eps: f64,
    saved: Arc<OnceLock<Vec<Saved>>>,
}

/// Applies the blocks op to `x` with the flattened `weights` and `params` (see [`BlocksTrain`]);
/// returns the output and, per block, each BatchNorm's statistics (chain order, then the
/// shortcut's).
pub(crate) fn residual_blocks_train(
    x: &Tensor,
    weights: &Tensor,
    params: &Tensor,
    blocks: Vec<BlockSpec>,
    eps: f64,
) -> Result<(Tensor, Vec<Vec<BatchStats>>)> {
    if blocks.iter().any(|b| b.layers.len() <= b.projection as usize) {
        bail!("residual blocks: a block without layers in its chain")
    }
    let saved = Arc::new(OnceLock::new());
    let op = BlocksTrain { blocks, eps, saved: saved.clone() };
    let y = x.contiguous()?.apply_op3(weights, params, op)?;
    let stats = kept(&saved, "residual_blocks_train")?
        .iter()
        .map(|block| {
            block
                .layers
                .iter()
                .map(|k| {
                    let (mean, var) = k.norm.stats(x.device())?;
                    Ok(BatchStats { mean, var, count: k.g.b * k.g.npix() })
                })
                .collect::<Result<Vec<_>>>()
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

impl BlocksTrain {
    fn layers(&self) -> impl Iterator<Item = &LayerSpec> {
        self.blocks.iter().flat_map(|b| &b.layers)
    }

    fn parts<'a>(&self, op: &str, w: &'a [f32], params: &'a [f32]) -> Result<Parts<'a>> {
        let (mut parts, mut at_w, mut at_p) = (Parts { w: vec![], gamma: vec![], beta: vec![] }, 0, 0);
        for l in self.layers() {
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
        self.layers().map(|l| l.w_shape).collect()
    }
}

/// Plane `plane` of a block's output before its ReLU is `residual` of the returned rows: the
/// last chain layer's conv output and the shortcut's (or the block's input `x` itself), with
/// their BatchNorm maps. The forward and the backward's ReLU mask both come from here, so they
/// agree exactly.
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

/// One block's forward on `x` of shape `dims`, its layers `parts` from number `first` on: what it
/// keeps (without its input), its output and the output's shape.
fn forward_block(
    spec: &BlockSpec,
    parts: &Parts,
    first: usize,
    x: &[f32],
    dims: &[usize],
    eps: f64,
    name: &str,
) -> Result<(Saved, Vec<f32>, Vec<usize>)> {
    let chain = spec.chain_len();
    let (mut layers, mut inputs) = (Vec::with_capacity(spec.layers.len()), Vec::<Vec<f32>>::with_capacity(chain - 1));
    let mut out_dims = dims.to_vec();
    for (i, l) in spec.layers.iter().enumerate() {
        let input = match inputs.last() {
            Some(a) if i < chain => a.as_slice(),
            _ => x,
        };
        let relu = i + 1 < chain;
        let in_dims = if i < chain { &out_dims[..] } else { dims };
        let g = Geom::new(in_dims, &l.w_shape, l.p)?;
        let (z, stats) = conv::forward_with_stats(&g, input, parts.w[first + i]);
        let out = g.out_shape();
        let (gamma, beta) = (parts.gamma[first + i], parts.beta[first + i]);
        let norm = Normaliser::from_planes(&stats, Planes::of(out.dims(), name)?, gamma, beta, eps, relu, name)?;
        if relu {
            inputs.push(norm.apply(&z));
        }
        if i < chain {
            out_dims = out.dims().to_vec();
        } else if out.dims() != out_dims {
            bail!("{name}: the shortcut's output {:?} does not match the chain's {out_dims:?}", out.dims())
        }
        layers.push(Kept { g, z, norm });
    }
    if !spec.projection && out_dims != dims {
        bail!("{name}: an identity shortcut needs the chain's output {out_dims:?} to match its input {dims:?}")
    }
    let saved = Saved { layers, inputs, input: Vec::new() };
    let hw = out_dims[2] * out_dims[3];
    let y = par_build(out_dims.iter().product(), hw, |plane, blank| {
        let ([main, short], m) = residual_rows(&saved, chain, x, plane);
        blank.map([main, short], |[a, b]| residual(a, b, m).max(0.0))
    });
    Ok((saved, y, out_dims))
}

impl CustomOp3 for BlocksTrain {
    fn name(&self) -> &'static str {
        "castream-residual-blocks-train"
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
        let mut saved = Vec::with_capacity(self.blocks.len());
        // The previous block's output and its shape.
        let mut prev: Option<(Vec<f32>, Vec<usize>)> = None;
        let mut first = 0;
        for spec in &self.blocks {
            let (input, dims) = prev.as_ref().map_or((x, xl.dims()), |(y, d)| (&y[..], &d[..]));
            let (mut block, y, dims) = forward_block(spec, &parts, first, input, dims, self.eps, name)?;
            if let Some((input, _)) = prev.replace((y, dims)) {
                block.input = input;
            }
            saved.push(block);
            first += spec.layers.len();
        }
        let Some((y, dims)) = prev else { bail!("{name}: no blocks") };
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
        let chains = self.blocks.iter().map(BlockSpec::chain_len).collect();
        let op = BlocksBackward { chains, need_x, need_w, saved: self.saved.clone() };
        let all = x.apply_op3_no_bwd(weights, &grad.contiguous()?, &op)?;
        let [gx, gw, gp] = split_flat(&all, [x.shape(), weights.shape(), params.shape()])?;
        Ok((need_x.then_some(gx), need_w.then_some(gw), params.track_op().then_some(gp)))
    }
}

/// `(x, weights, dy) -> [dx | dweights | dparams]` flattened.
struct BlocksBackward {
    /// Each block's chain length.
    chains: Vec<usize>,
    need_x: bool,
    need_w: bool,
    saved: Arc<OnceLock<Vec<Saved>>>,
}

/// One block's gradients: its input's, and per layer `dw` and `[dγ | dβ]`.
struct BlockGrads {
    dx: Vec<f32>,
    dw: Vec<Vec<f32>>,
    dp: Vec<Vec<f32>>,
}

impl BlocksBackward {
    /// The gradients of one block (chain length `chain`, input `x`, each layer's weights
    /// `weights`) for its output gradient `gy`.
    fn block(
        &self,
        chain: usize,
        saved: &Saved,
        x: &[f32],
        weights: &[&[f32]],
        gy: &[f32],
        need_x: bool,
    ) -> BlockGrads {
        let n = saved.layers.len();
        // Each BatchNorm's backward sums, recorded by the pass that produces its output gradient.
        let sums: Vec<PlaneSums> = saved.layers.iter().map(|k| PlaneSums::new(k.norm.planes())).collect();
        let record = |i: usize, plane: usize, dy: &[f32]| {
            let k = &saved.layers[i];
            let hw = k.g.npix();
            sums[i].record(plane, k.norm.plane_grad_sums(plane, &k.z[plane * hw..][..hw], dy));
        };
        // The sum's gradient through the final ReLU, shared by both branches: the output gradient
        // of the last chain layer and of the shortcut.
        let hw = saved.layers[chain - 1].g.npix();
        let gs = par_build(gy.len(), hw, |plane, blank| {
            let ([main, short], m) = residual_rows(saved, chain, x, plane);
            let gs =
                blank.map([main, short, &gy[plane * hw..]], |[a, b, g]| if residual(a, b, m) > 0.0 { g } else { 0.0 });
            (chain - 1..n).for_each(|i| record(i, plane, &gs));
            gs
        });
        // Layer `i`'s gradients; `residual` is added to its input gradient image by image, while
        // in cache.
        let layer = |i: usize, input: &[f32], dy: &[f32], need_x: bool, residual: Option<&[f32]>| {
            let k = &saved.layers[i];
            let grad = k.norm.gradient(&sums[i]);
            let done = |image: usize, dx: &mut [f32]| {
                // Inside the chain, this layer's input gradient is the previous one's output
                // gradient.
                if (1..chain).contains(&i) {
                    let (c, hw) = (k.g.ci, k.g.h * k.g.w);
                    (0..c).for_each(|ch| record(i - 1, image * c + ch, &dx[ch * hw..][..hw]));
                }
                if let Some(r) = residual {
                    let r = &r[image * dx.len()..][..dx.len()];
                    dx.iter_mut().zip(r).for_each(|(d, &r)| *d += r);
                }
            };
            let mut out =
                convbn::backward(&k.g, (input, weights[i]), (&k.z, &k.norm, &grad), dy, need_x, self.need_w, done);
            let dp = out.split_off(out.len() - 2 * k.g.co);
            let dw = out.split_off(k.g.b * k.g.x_len());
            (out, dw, dp)
        };
        let mut grads = BlockGrads { dx: Vec::new(), dw: vec![Vec::new(); n], dp: vec![Vec::new(); n] };
        // The shortcut first: its input gradient (for the identity, the sum's gradient itself) is
        // added to the chain's as the first layer completes it.
        let short = (chain < n).then(|| {
            let (dx, dw, dp) = layer(chain, x, &gs, need_x, None);
            (grads.dw[chain], grads.dp[chain]) = (dw, dp);
            dx
        });
        let residual = need_x.then(|| short.as_deref().unwrap_or(&gs));
        // The chain, last layer first; each layer's input gradient is the previous one's `dy`.
        for i in (0..chain).rev() {
            let input = if i == 0 { x } else { &saved.inputs[i - 1] };
            let dy: &[f32] = if i + 1 == chain { &gs } else { &grads.dx };
            let residual = if i == 0 { residual } else { None };
            (grads.dx, grads.dw[i], grads.dp[i]) = layer(i, input, dy, i > 0 || need_x, residual);
        }
        grads
    }
}

impl CustomOp3 for BlocksBackward {
    fn name(&self) -> &'static str {
        "castream-residual-blocks-train-backward"
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
        let (Some(last), Some(&chain)) = (saved.last(), self.chains.last()) else { bail!("{name}: no blocks") };
        let out = last.layers[chain - 1].g.out_shape();
        if dl.dims() != out.dims() {
            bail!("{name}: gradient {:?} does not match the blocks' output {out:?}", dl.dims())
        }
        // Each layer's weights: the flat input cut in layer order.
        let sizes: Vec<usize> = saved.iter().flat_map(|b| &b.layers).map(|k| k.g.co * k.g.kdim()).collect();
        if sizes.iter().sum::<usize>() != w.len() {
            bail!("{name}: {} weights for layers of {} in all", w.len(), sizes.iter().sum::<usize>())
        }
        let mut rest = w;
        let weights: Vec<&[f32]> = sizes
            .into_iter()
            .map(|n| {
                let (layer, tail) = rest.split_at(n);
                rest = tail;
                layer
            })
            .collect();
        let (mut dw, mut dp) = (Vec::new(), Vec::new());
        // The last block first; each block's input gradient is the output gradient of the one
        // before.
        let (mut g, mut end): (Vec<f32>, usize) = (Vec::new(), weights.len());
        for (b, (saved, &chain)) in saved.iter().zip(&self.chains).enumerate().rev() {
            let (input, need_x) = if b == 0 { (x, self.need_x) } else { (&saved.input[..], true) };
            let first = end - saved.layers.len();
            let gy = if b + 1 == self.chains.len() { gy } else { &g[..] };
            let grads = self.block(chain, saved, input, &weights[first..end], gy, need_x);
            end = first;
            g = grads.dx;
            dw.push(grads.dw);
            dp.push(grads.dp);
        }
        // One allocation for the flat output, filled by slices (extending `g` would reallocate and
        // copy it, element-wise iterators would copy a ResNet-50's 100 MB of weight gradients
        // float by float, on this thread while the pool waits).
        let pieces: Vec<Vec<f32>> = dw.into_iter().rev().flatten().chain(dp.into_iter().rev().flatten()).collect();
        let mut all = Vec::with_capacity(g.len() + pieces.iter().map(Vec::len).sum::<usize>());
        all.par_extend(g.par_iter().copied());
        pieces.iter().for_each(|p| all.extend_from_slice(p));
        let n = all.len();
        Ok((CpuStorage::F32(all), Shape::from(n)))
    }
}
