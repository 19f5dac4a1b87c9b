//! Exact GELU, `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2` the standard normal CDF (ConvNeXt's
//! activation, on its widest tensor: the MLP's hidden layer, four times the block's width).
//!
//! candle's backward of `gelu_erf` is nine tensor ops (square, negate, divide, exp, two scalings,
//! erf again, two additions, then the product with the gradient and its accumulation), each a pass
//! over the hidden layer and most a fresh allocation: measured at a third of a ConvNeXt train step.
//! Here the forward keeps `Φ(x)` when a gradient will be needed, and the backward is one pass,
//! `dx = dy · (Φ(x) + x · φ(x))`, with one exponential per value for the density `φ`.

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept};
use crate::cpu::{f32_slice, map1, map2, par_build, same_shape};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// `Φ(x)`, with libm's `erff` as candle's `gelu_erf` uses.
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `1/√(2π)`: the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x · Φ(x)`; with `saved`, the forward also keeps `Φ(x)` for the backward.
pub(crate) struct Gelu {
    pub saved: Option<Arc<OnceLock<Vec<f32>>>>,
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "castream-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let y = match &self.saved {
            None => map1(x, |x| x * cdf(x)),
            Some(saved) => {
                let phi = map1(x, cdf);
                let y = map2(x, &phi, |x, p| x * p);
                keep(saved, phi, self.name())?;
                y
            }
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(saved) = &self.saved else { bail!("{}: backward of a forward that kept no Φ(x)", self.name()) };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward { saved: saved.clone() })?))
    }
}

/// `(x, dy) -> dy · (Φ(x) + x · φ(x))`, `Φ(x)` kept by the forward.
struct GeluBackward {
    saved: Arc<OnceLock<Vec<f32>>>,
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "castream-gelu-backward"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), xl, gl)?;
        let phi = kept(&self.saved, self.name())?;
        let (x, g) = (f32_slice(xs, xl, self.name())?, f32_slice(gs, gl, self.name())?);
        const CHUNK: usize = 1 << 15;
        let dx = par_build(x.len(), CHUNK, |i, blank| {
            let at = i * CHUNK;
            blank
                .map([&x[at..], &phi[at..], &g[at..]], |[x, p, g]| g * (p + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()))
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}
