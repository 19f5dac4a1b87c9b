//! Folding an eval-mode BatchNorm into the preceding convolution, so inference runs one conv
//! (with bias) instead of conv + four broadcast elementwise passes.

use candle_core::{Result, Tensor};

/// Returns `(w', b')` with `conv(x, w') + b' == BN(conv(x, w) + b)` for BatchNorm in eval mode:
/// `w' = w · γ/√(var + ε)` per output channel and `b' = (b − mean) · γ/√(var + ε) + β`
/// (`b = 0` when absent). All BN tensors are `(C_out,)`.
pub fn fold_batchnorm(
    w: &Tensor,
    b: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let c_out = w.dim(0)?;
    let scale = gamma.broadcast_div(&(running_var + eps)?.sqrt()?)?;
    let w = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
    let centred = match b {
        Some(b) => (b - running_mean)?,
        None => running_mean.neg()?,
    };
    let b = centred.mul(&scale)?.add(beta)?;
    Ok((w, b))
}
