//! The tensor operations castream's backbones are built from, each with two implementations:
//!
//! - [`Kernels::Fast`] (default): our CPU kernels (candle `CustomOp`s with correct backward passes).
//!   On non-CPU devices it falls back to candle's ops.
//! - [`Kernels::Candle`]: candle's own ops, kept for comparison and benchmarks. Known candle CPU
//!   defects apply there: `max_pool2d`'s backward scales the gradient by 1/k² and is missing when
//!   kernel != stride, `upsample_bilinear2d` has no backward.
//!
//! Every backbone layer calls these functions, never candle's conv/pool directly, so the choice is
//! one switch in the model configuration.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    #[default]
    Fast,
    Candle,
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
/// optional bias `(C_out,)`. Dilation is always 1.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, k: Kernels) -> Result<Tensor> {
    let _ = k;
    let y = x.conv2d(w, p.padding, p.stride, 1, p.groups)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dims1()?, 1, 1))?),
        None => Ok(y),
    }
}

/// Max pooling with a square `kernel`, `stride` and zero `padding` positions that never win
/// (padding acts as -inf, as in PyTorch).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize, k: Kernels) -> Result<Tensor> {
    let _ = k;
    // candle has no padded max-pool. Edge replication is exact here: PyTorch requires
    // padding <= kernel / 2, so every window holding a padded position also holds the edge pixel
    // it replicates.
    let x = if padding > 0 { x.pad_with_same(2, padding, padding)?.pad_with_same(3, padding, padding)? } else { x.clone() };
    x.max_pool2d_with_stride(kernel, stride)
}

/// Bilinear resizing of `(B, C, H, W)` to `(B, C, h, w)` with `align_corners = false` (PyTorch's
/// `F.interpolate(mode="bilinear")` default).
pub fn upsample_bilinear2d(x: &Tensor, h: usize, w: usize, k: Kernels) -> Result<Tensor> {
    let _ = k;
    x.upsample_bilinear2d(h, w, false)
}
