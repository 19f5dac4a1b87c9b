//! The tensor operations castream's backbones are built from, each with two implementations:
//!
//! - [`Kernels::Fast`] (default): our CPU kernels (candle `CustomOp`s with correct backward passes)
//!   for f32 tensors on the CPU. Other devices and dtypes fall back to candle's ops.
//! - [`Kernels::Candle`]: candle's own ops, kept for comparison and benchmarks. Known candle CPU
//!   defects apply there: `max_pool2d`'s backward scales the gradient by 1/k² and is missing when
//!   kernel != stride, `upsample_bilinear2d` has no backward, and `conv2d`'s backward fails with a
//!   shape error when `(H + 2p - k) % s != (W + 2p - k) % s` (it takes the transposed conv's
//!   output padding from the height for both axes).
//!
//! Every backbone layer calls these functions, never candle's conv/pool directly, so the choice is
//! one switch in the model configuration.

mod batchnorm;
mod block;
mod conv;
mod convbn;
mod convpool;
mod cpu;
mod depthwise;
mod direct;
mod fold;
mod gelu;
mod im2col;
mod layer_scale;
mod layernorm;
mod linear;
mod mlp;
mod mlp_train;
mod pool;
mod relu;
mod upsample;

pub use fold::fold_batchnorm;
pub use mlp::MlpParams;

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    #[default]
    Fast,
    Candle,
}

impl Kernels {
    /// Whether our kernels handle these tensors (CPU, f32); otherwise candle's ops run.
    fn fast_for(self, ts: &[&Tensor]) -> bool {
        self == Kernels::Fast && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: 1, padding: 0, groups: 1 }
    }
}

/// 2-d convolution of `x` `(B, C_in, H, W)` with `w` `(C_out, C_in / groups, kh, kw)`, plus an
/// optional bias `(C_out,)`. Dilation is always 1. Depthwise convolutions (`groups == C_in ==
/// C_out`) take a direct kernel, all others im2col + GEMM; both add the bias as they write the
/// output and sum its gradient in their backward.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, k: Kernels) -> Result<Tensor> {
    conv2d_act(x, w, bias, p, false, k)
}

/// `ReLU(conv2d(x, w, bias))`, the ReLU fused into the convolution's epilogue (and its backward).
pub fn conv2d_relu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, k: Kernels) -> Result<Tensor> {
    conv2d_act(x, w, bias, p, true, k)
}

fn conv2d_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
    k: Kernels,
) -> Result<Tensor> {
    let c_out = w.dim(0)?;
    let fast = k.fast_for(&[x, w]) && bias.is_none_or(|b| k.fast_for(&[b]));
    // The GEMM path fuses the ReLU into its epilogue; the others apply it after.
    let (y, relu_applied) = if fast {
        let bias = match bias {
            Some(b) => b.contiguous()?,
            None => Tensor::zeros(c_out, DType::F32, x.device())?,
        };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        if depthwise::is_depthwise(x.dims(), w.dims(), p.groups) {
            (x.apply_op3(&w, &bias, depthwise::DepthwiseConv2d(p))?, false)
        } else {
            (x.apply_op3(&w, &bias, conv::Conv2d { p, relu })?, relu)
        }
    } else {
        let y = x.conv2d(w, p.padding, p.stride, 1, p.groups)?;
        match bias {
            Some(b) => (y.broadcast_add(&b.reshape((1, b.dims1()?, 1, 1))?)?, false),
            None => (y, false),
        }
    };
    let y = if relu && !relu_applied { self::relu(&y, k)? } else { y };
    count_conv(&y, w)?;
    Ok(y)
}

/// Counts the multiply-adds of a convolution with weights `w` that gave output `y`.
fn count_conv(y: &Tensor, w: &Tensor) -> Result<()> {
    let ((b, c_out, h_out, w_out), (_, c_in_group, kh, kw)) = (y.dims4()?, w.dims4()?);
    macs::add(b * c_out * h_out * w_out * c_in_group * kh * kw);
    Ok(())
}

/// `max_pool2d(conv2d_relu(x, w, bias))` (pool `kernel`, `stride`, `padding`) as one op: each
/// image is pooled while its convolution output is in cache, which is never written out whole
/// (the ResNet stem in evaluation mode).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_relu_max_pool2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    kernel: usize,
    stride: usize,
    padding: usize,
    k: Kernels,
) -> Result<Tensor> {
    let fast = k.fast_for(&[x, w]) && bias.is_none_or(|b| k.fast_for(&[b]));
    if !fast || depthwise::is_depthwise(x.dims(), w.dims(), p.groups) {
        return max_pool2d(&conv2d_relu(x, w, bias, p, k)?, kernel, stride, padding, k);
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(w.dim(0)?, DType::F32, x.device())?,
    };
    let pool = pool::MaxPool2d { kernel, stride, padding };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &bias, convpool::ConvReluPool { conv: p, pool })?;
    let conv_out = conv::Geom::new(x.dims(), w.dims(), p)?;
    macs::add(conv_out.b * conv_out.co * conv_out.npix() * conv_out.kdim());
    Ok(y)
}

/// `max(x, 0)`, with a one-pass backward.
pub fn relu(x: &Tensor, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[x]) {
        return x.contiguous()?.apply_op1(relu::Relu);
    }
    x.relu()
}

/// `max(a + b, 0)` (a residual connection and its ReLU) in one pass each way.
pub fn add_relu(a: &Tensor, b: &Tensor, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[a, b]) {
        return a.contiguous()?.apply_op2(&b.contiguous()?, relu::AddRelu);
    }
    (a + b)?.relu()
}

/// Exact GELU, `x · Φ(x)` (`Φ` the standard normal CDF, through erf), as candle's `gelu_erf`;
/// the fast kernel's backward is one pass (see `gelu.rs`).
pub fn gelu(x: &Tensor, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[x]) {
        return x.contiguous()?.apply_op1(gelu::Gelu);
    }
    x.gelu_erf()
}

/// ConvNeXt's block output as timm composes it, `x + γ ⊙ h` with `x` channels first
/// `(B, C, H, W)` and the residual branch `h` channels last `(B, H, W, C)`; one op each way with
/// the fast kernels (see `layer_scale.rs`). castream's ConvNeXt runs [`convnext_mlp`] instead.
pub fn layer_scale_residual(x: &Tensor, h: &Tensor, gamma: &Tensor, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[x, h, gamma]) {
        let op = layer_scale::LayerScaleResidual;
        return x.contiguous()?.apply_op3(&h.contiguous()?, &gamma.contiguous()?, op);
    }
    x + h.broadcast_mul(gamma)?.permute((0, 3, 1, 2))?
}

/// A linear layer on the last dimension of `x` (any leading dimensions): `x W^T + b` with `w`
/// `(out, in)`, one op each way with the fast kernels (see `linear.rs`). Through the facade so
/// that its multiply-adds are counted with the convolutions'.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, k: Kernels) -> Result<Tensor> {
    linear_then(x, w, bias, false, k)
}

/// `gelu(linear(x, w, b))` (a ConvNeXt MLP's first layer as timm composes it): the same values,
/// and with the fast kernels one op each way (see `linear.rs`). castream's ConvNeXt runs
/// [`convnext_mlp`] instead.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor, k: Kernels) -> Result<Tensor> {
    linear_then(x, w, Some(b), true, k)
}

fn linear_then(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gelu: bool, k: Kernels) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let c_in = dims.pop().unwrap_or(0);
    let (c_out, _) = w.dims2()?;
    let rows = x.elem_count() / c_in.max(1);
    let x = x.reshape((rows, c_in))?;
    let (y, fused) = match bias {
        Some(b) if k.fast_for(&[&x, w, b]) => {
            let epilogue = match gelu {
                false => linear::Epilogue::None,
                true => {
                    let tracked = x.track_op() || w.track_op() || b.track_op();
                    linear::Epilogue::Gelu { pre_activation: tracked.then(|| Arc::new(OnceLock::new())) }
                }
            };
            (x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, linear::Linear(epilogue))?, true)
        }
        Some(b) => (x.matmul(&w.t()?)?.broadcast_add(b)?, false),
        None => (x.matmul(&w.t()?)?, false),
    };
    let y = if gelu && !fused { y.gelu_erf()? } else { y };
    macs::add(rows * c_in * c_out);
    dims.push(c_out);
    y.reshape(dims)
}

/// The MLP half of a ConvNeXt block: `x + γ ⊙ (W₂ · GELU(W₁ · y + b₁) + b₂)` at every pixel of
/// `x` (the block's input) and `y` (its normalised depthwise conv), both `(B, C, H, W)`. The fast
/// kernels run it channels first as one op: without a backward when no gradient is tracked (see
/// `mlp.rs`), keeping what its backward needs otherwise (`mlp_train.rs`). With candle's kernels it
/// is timm's composition: channels-last permute, [`linear_gelu`], [`linear`] and
/// [`layer_scale_residual`].
pub fn convnext_mlp(x: &Tensor, y: &Tensor, p: &MlpParams, k: Kernels) -> Result<Tensor> {
    let all = [x, y, p.w1, p.b1, p.w2, p.b2, p.gamma];
    if k.fast_for(&all) {
        let (b, c, h, w) = x.dims4()?;
        macs::add(2 * b * h * w * c * p.w1.dims2()?.0);
        return match all.iter().any(|t| t.track_op()) {
            false => mlp::forward(x, y, p),
            true => mlp_train::forward(x, y, p),
        };
    }
    let hidden = linear_gelu(&y.permute((0, 2, 3, 1))?, p.w1, p.b1, k)?;
    layer_scale_residual(x, &linear(&hidden, p.w2, Some(p.b2), k)?, p.gamma, k)
}

/// BatchNorm in training mode on `(B, C, H, W)`: `(x − mean) / sqrt(var + eps) · γ + β` with the
/// batch's per-channel mean and biased variance, followed by a ReLU when `relu` (fused, one pass).
/// Also returns that `(mean, var)`, `(C,)` each and detached, for the running statistics.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    k: Kernels,
) -> Result<(Tensor, Tensor, Tensor)> {
    if k.fast_for(&[x, gamma, beta]) {
        let saved = Arc::new(OnceLock::new());
        let op = batchnorm::BatchNormTrain { eps, relu, saved: saved.clone() };
        let y = x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
        let (mean, var) = batchnorm::kept(&saved, "batch_norm_train")?.stats(x.device())?;
        return Ok((y, mean, var));
    }
    let per_channel = |t: &Tensor| t.reshape((1, t.elem_count(), 1, 1));
    let mean = x.mean_keepdim((0, 2, 3))?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&per_channel(gamma)?)?
        .broadcast_add(&per_channel(beta)?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

/// `conv2d(x, w)` without bias (the BatchNorm's shift takes its place) followed by
/// [`batch_norm_train`], as one op with one backward: the convolution's output and its gradient
/// never become candle tensors. Returns `(y, mean, var)` as [`batch_norm_train`] does.
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    k: Kernels,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !fused_conv_bn(x, w, p, gamma, beta, k) {
        return batch_norm_train(&conv2d(x, w, None, p, k)?, gamma, beta, eps, relu, k);
    }
    let (y, stats) = conv_bn_op(x, w, p, gamma, beta, eps, relu, None)?;
    Ok((y, stats.mean, stats.var))
}

/// [`conv_batch_norm_train`] with a ReLU, then a max-pool (`kernel`, `stride`, `padding`), as one
/// op (the ResNet stem in training mode): each normalised plane is pooled while it is in cache,
/// and the forward keeps each window's argmax for the backward. Returns the pooled output and
/// the BatchNorm's statistics.
#[allow(clippy::too_many_arguments)]
pub fn conv_batch_norm_relu_max_pool_train(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    (kernel, stride, padding): (usize, usize, usize),
    k: Kernels,
) -> Result<(Tensor, BatchStats)> {
    if !fused_conv_bn(x, w, p, gamma, beta, k) {
        let (y, mean, var) = conv_batch_norm_train(x, w, p, gamma, beta, eps, true, k)?;
        let (b, _, h, wd) = y.dims4()?;
        return Ok((max_pool2d(&y, kernel, stride, padding, k)?, BatchStats { mean, var, count: b * h * wd }));
    }
    conv_bn_op(x, w, p, gamma, beta, eps, true, Some(pool::MaxPool2d { kernel, stride, padding }))
}

fn fused_conv_bn(x: &Tensor, w: &Tensor, p: Conv2dParams, gamma: &Tensor, beta: &Tensor, k: Kernels) -> bool {
    k.fast_for(&[x, w, gamma, beta]) && !depthwise::is_depthwise(x.dims(), w.dims(), p.groups)
}

#[allow(clippy::too_many_arguments)]
fn conv_bn_op(
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    pool: Option<pool::MaxPool2d>,
) -> Result<(Tensor, BatchStats)> {
    let saved = Arc::new(OnceLock::new());
    let params = Tensor::cat(&[gamma, beta], 0)?;
    let op = convbn::ConvBnTrain { p, eps, relu, pool, saved: saved.clone() };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &params, op)?;
    let g = conv::Geom::new(x.dims(), w.dims(), p)?;
    let count = g.b * g.npix();
    macs::add(count * w.elem_count());
    let (mean, var) = batchnorm::kept(&saved, "conv_batch_norm_train")?.norm.stats(x.device())?;
    Ok((y, BatchStats { mean, var, count }))
}

/// One conv + BatchNorm layer of a residual block: the conv has no bias (the BatchNorm's β takes
/// its place).
pub struct ConvBnLayer<'a> {
    pub w: &'a Tensor,
    pub p: Conv2dParams,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// One BatchNorm's batch statistics in training mode: per-channel mean and biased variance
/// (detached), taken over `count` values per channel.
pub struct BatchStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub count: usize,
}

/// A residual block, `relu(chain(x) + shortcut(x))`: `chain` is its conv + BatchNorm layers in
/// order with a ReLU after each but the last, `shortcut` the identity or one more layer.
pub struct ResidualBlock<'a> {
    pub chain: Vec<ConvBnLayer<'a>>,
    pub shortcut: Option<ConvBnLayer<'a>>,
}

impl<'a> ResidualBlock<'a> {
    /// The chain's layers, then the shortcut's.
    fn layers(&self) -> impl Iterator<Item = &ConvBnLayer<'a>> {
        self.chain.iter().chain(&self.shortcut)
    }
}

/// Residual blocks applied one after the other in training mode (a ResNet stage, or several).
/// Returns the output and, per block, each BatchNorm's statistics, the chain's in order and then
/// the shortcut's. One op with one backward (see `block.rs`); composed of
/// [`conv_batch_norm_train`] and [`add_relu`] on candle's kernels or for grouped convolutions.
pub fn residual_blocks_train(
    x: &Tensor,
    blocks: &[ResidualBlock],
    eps: f64,
    k: Kernels,
) -> Result<(Tensor, Vec<Vec<BatchStats>>)> {
    let all: Vec<&ConvBnLayer> = blocks.iter().flat_map(ResidualBlock::layers).collect();
    let fused = k.fast_for(&[x])
        && !blocks.is_empty()
        && blocks.iter().all(|b| !b.chain.is_empty())
        && all.iter().all(|l| k.fast_for(&[l.w, l.gamma, l.beta]) && l.p.groups == 1);
    if !fused {
        let mut stats = Vec::with_capacity(blocks.len());
        let mut y = x.clone();
        for b in blocks {
            let (out, s) = composed_block(&y, b, eps, k)?;
            stats.push(s);
            y = out;
        }
        return Ok((y, stats));
    }
    let flat = |ts: Vec<&Tensor>| -> Result<Tensor> {
        Tensor::cat(&ts.into_iter().map(|t| t.flatten_all()).collect::<Result<Vec<_>>>()?, 0)
    };
    let weights = flat(all.iter().map(|l| l.w).collect())?;
    let params = flat(all.iter().flat_map(|l| [l.gamma, l.beta]).collect())?;
    let specs = blocks
        .iter()
        .map(|b| {
            let layers = b
                .layers()
                .map(|l| {
                    let (co, ci, kh, kw) = l.w.dims4()?;
                    Ok(block::LayerSpec { w_shape: [co, ci, kh, kw], p: l.p })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(block::BlockSpec { layers, projection: b.shortcut.is_some() })
        })
        .collect::<Result<Vec<_>>>()?;
    let (y, stats) = block::residual_blocks_train(x, &weights, &params, specs, eps)?;
    for (l, s) in all.iter().zip(stats.iter().flatten()) {
        macs::add(s.count * l.w.elem_count());
    }
    Ok((y, stats))
}

/// One residual block of separate ops: [`conv_batch_norm_train`] per layer, then [`add_relu`].
fn composed_block(x: &Tensor, b: &ResidualBlock, eps: f64, k: Kernels) -> Result<(Tensor, Vec<BatchStats>)> {
    let mut stats = Vec::with_capacity(b.chain.len() + 1);
    let mut layer = |x: &Tensor, l: &ConvBnLayer, relu: bool| -> Result<Tensor> {
        let (y, mean, var) = conv_batch_norm_train(x, l.w, l.p, l.gamma, l.beta, eps, relu, k)?;
        let (b, _, h, w) = y.dims4()?;
        stats.push(BatchStats { mean, var, count: b * h * w });
        Ok(y)
    };
    let mut y = x.clone();
    for (i, l) in b.chain.iter().enumerate() {
        y = layer(&y, l, i + 1 < b.chain.len())?;
    }
    let short = match &b.shortcut {
        Some(l) => layer(x, l, false)?,
        None => x.clone(),
    };
    Ok((add_relu(&y, &short, k)?, stats))
}

/// LayerNorm over dimension `dim` of `x` with an affine map: `(x − mean) / sqrt(var + eps) · γ + β`,
/// `γ` and `β` of length `x.dim(dim)` (ConvNeXt: dimension 1 of NCHW, or the last of NHWC).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, dim: usize, eps: f64, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[x, gamma, beta]) {
        return x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, layernorm::LayerNorm { dim, eps });
    }
    let mean = x.mean_keepdim(dim)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(dim)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    let mut shape = vec![1; x.rank()];
    shape[dim] = gamma.elem_count();
    normed.broadcast_mul(&gamma.reshape(shape.as_slice())?)?.broadcast_add(&beta.reshape(shape.as_slice())?)
}

pub use macs::count_macs;

/// Multiply-accumulate counting for FLOP figures (tables, benchmarks): a per-thread counter that
/// [`conv2d`] and [`linear`] add to while a [`count_macs`] call is active on that thread.
mod macs {
    use std::cell::Cell;

    thread_local! {
        static COUNTER: Cell<Option<u64>> = const { Cell::new(None) };
    }

    pub(crate) fn add(n: usize) {
        COUNTER.with(|c| c.set(c.get().map(|v| v + n as u64)));
    }

    /// Runs `f` and returns its result with the multiply-accumulates of the convolutions and
    /// linear layers it ran on this thread.
    pub fn count_macs<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let outer = COUNTER.with(|c| c.replace(Some(0)));
        let r = f();
        let counted = COUNTER.with(|c| c.replace(outer)).unwrap_or(0);
        if let Some(o) = outer {
            COUNTER.with(|c| c.set(Some(o + counted)));
        }
        (r, counted)
    }
}

pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[x]) {
        return x.contiguous()?.apply_op1(pool::MaxPool2d { kernel, stride, padding });
    }
    if !x.device().is_cpu() && x.track_op() {
        // candle's max-pool backward fails when kernel != stride (the ResNet stem's 3/2) and is
        // scaled by 1/k² otherwise, on every device: off the CPU, where our kernel cannot run, a
        // pool that needs a gradient is composed of differentiable ops instead.
        return max_pool2d_composed(x, kernel, stride, padding);
    }
    // candle has no padded max-pool. Edge replication is exact here: PyTorch requires
    // padding <= kernel / 2, so every window holding a padded position also holds the edge pixel
    // it replicates.
    let x =
        if padding > 0 { x.pad_with_same(2, padding, padding)?.pad_with_same(3, padding, padding)? } else { x.clone() };
    x.max_pool2d_with_stride(kernel, stride)
}

/// [`max_pool2d`] from `index_select` and `maximum`, which have correct backward passes on every
/// device: the gradient goes to each window's maximum (tied maxima share it as candle's pairwise
/// `maximum` splits it, not evenly: of three ties, ¼, ¼ and ½). Padding is -inf, which never
/// wins (PyTorch requires padding <= kernel / 2). Public for the tests,
/// which check it against our kernel on the CPU.
#[doc(hidden)]
pub fn max_pool2d_composed(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if kernel == 0 || stride == 0 || padding > kernel / 2 || h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!(
            "max_pool2d: kernel {kernel}, stride {stride}, padding {padding} do not fit a {h}x{w} input"
        );
    }
    let pad = |x: &Tensor, dim: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = padding;
        let edge = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
        Tensor::cat(&[&edge, x, &edge], dim)
    };
    let x = if padding > 0 { pad(&pad(x, 2)?, 3)? } else { x.clone() };
    let (oh, ow) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
    // Row (column) `start + i·stride` for output row (column) i.
    let taps = |start: usize, n: usize| -> Result<Tensor> {
        Tensor::from_vec((0..n).map(|i| (start + i * stride) as u32).collect::<Vec<_>>(), n, x.device())
    };
    let mut y: Option<Tensor> = None;
    for i in 0..kernel {
        let rows = x.index_select(&taps(i, oh)?, 2)?;
        for j in 0..kernel {
            let tap = rows.index_select(&taps(j, ow)?, 3)?;
            y = Some(match y {
                None => tap,
                Some(y) => y.maximum(&tap)?,
            });
        }
    }
    Ok(y.expect("kernel > 0"))
}

/// Bilinear resizing of `(B, C, H, W)` to `(B, C, h, w)` with `align_corners = false` (PyTorch's
/// `F.interpolate(mode="bilinear")` default).
pub fn upsample_bilinear2d(x: &Tensor, h: usize, w: usize, k: Kernels) -> Result<Tensor> {
    if k.fast_for(&[x]) {
        return x.contiguous()?.apply_op1(upsample::UpsampleBilinear2d { h, w });
    }
    x.upsample_bilinear2d(h, w, false)
}
