//! Exact GELU, `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2` the standard normal CDF (ConvNeXt's
//! activation, on its widest tensor: the MLP's hidden layer, four times the block's width).
//!
//! candle's backward of `gelu_erf` is nine tensor ops (square, negate, divide, exp, two scalings,
//! erf again, two additions, then the product with the gradient and its accumulation), each a pass
//! over the hidden layer and most a fresh allocation: measured at a third of a ConvNeXt train step.
//! Here each direction is one pass: the backward, `dx = dy · (Φ(x) + x · φ(x))`, recomputes `Φ`
//! and the density `φ` from `x`.
//!
//! `erf` and `exp` are branch-free rational and polynomial forms (below) rather than libm's scalar
//! `erff`/`expf`, which were ~45% of the quick ConvNeXt's evaluation forward: these compile to
//! AVX2/AVX-512 vector code (`simd_dispatch!`). Their errors against double precision are tested
//! on dense grids: erf within 4e-7 absolute (libm's `erff` is within 1 ulp), exp within 3e-7
//! relative.

use crate::cpu::{f32_slice, par_build, same_shape, simd_dispatch, Blank, Filled};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// `erf(x) = x · P(x²) / Q(x²)` on `|x| ≤ 4`, and `±1` beyond (`1 − erf(4)` is 1.5e-8, under
/// half an ulp of 1). `P`, `Q` (degree 5 each, `Q(0) = 1`) minimise the largest absolute error
/// on `[0, 4]` (a linearised least-squares fit with Lawson reweighting, in double precision:
/// 2e-8); evaluated in f32 the error is below 4e-7. `Q` has no root on `[0, 16]` (its
/// coefficients are positive). NaN stays NaN (`clamp` keeps it).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    // P[0] is the fit's, which matches erf'(0) = 2/√π to the digits it was fitted to.
    #[allow(clippy::approx_constant)]
    const P: [f32; 6] = [1.128_379, 0.196_251_23, 0.053_467_44, 0.004_003_62, 0.000_288_020_35, 1.974_569e-6];
    const Q: [f32; 6] = [1.0, 0.507_254_3, 0.116_477_04, 0.015_444_428, 0.001_216_312_6, 3.747_699_5e-5];
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    let p = ((((P[5] * t + P[4]) * t + P[3]) * t + P[2]) * t + P[1]) * t + P[0];
    let q = ((((Q[5] * t + Q[4]) * t + Q[3]) * t + Q[2]) * t + Q[1]) * t + Q[0];
    // The rounded form may exceed 1 by an ulp near the clamp.
    (x * p / q).clamp(-1.0, 1.0)
}

/// `e^y` for `y ≤ 0` (NaN stays NaN): `y = k·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 split in two parts so that
/// `r` is exact), `e^r` by its Taylor polynomial of degree 6 (remainder below `r⁷/7! < 1.3e-7`
/// relative), `2^k` built in the exponent bits. Inputs below -87 give `e^-87` (~1.6e-38, the
/// smallest normal float's order): the density `φ` this serves is 0 to every digit that matters.
#[inline(always)]
pub(crate) fn exp_nonpositive(y: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let y = y.clamp(-87.0, 0.0);
    let k = (y * std::f32::consts::LOG2_E).round_ties_even();
    let r = (y - k * LN2_HI) - k * LN2_LO;
    let p = (((((r * (1.0 / 720.0) + 1.0 / 120.0) * r + 1.0 / 24.0) * r + 1.0 / 6.0) * r + 0.5) * r + 1.0) * r + 1.0;
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// `Φ(x)`, the standard normal CDF.
#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `1/√(2π)`: the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Elements per rayon task: big enough to amortise scheduling, small enough to split a layer.
const CHUNK: usize = 1 << 15;

simd_dispatch! {
    /// `x · Φ(x)`.
    fn gelu_chunk<'a>(x: &[f32], out: Blank<'a>) -> Filled<'a> {
        out.map([x], |[x]| x * cdf(x))
    }
}

simd_dispatch! {
    /// `y ← y · Φ(y)`: the epilogue of a linear layer whose output block is still in cache.
    pub(crate) fn gelu_in_place(y: &mut [f32]) {
        for v in y {
            *v *= cdf(*v);
        }
    }
}

/// `GELU'(x) = Φ(x) + x · φ(x)`.
#[inline(always)]
fn derivative(x: f32) -> f32 {
    cdf(x) + x * FRAC_1_SQRT_2PI * exp_nonpositive(-0.5 * x * x)
}

simd_dispatch! {
    /// `dy · GELU'(x)`.
    fn grad_chunk<'a>(x: &[f32], dy: &[f32], out: Blank<'a>) -> Filled<'a> {
        out.map([x, dy], |[x, g]| g * derivative(x))
    }
}

simd_dispatch! {
    /// `dy ← dy · GELU'(x)`: the backward of a GELU whose block is still in cache.
    pub(crate) fn gelu_grad_in_place(x: &[f32], dy: &mut [f32]) {
        for (g, &x) in dy.iter_mut().zip(x) {
            *g *= derivative(x);
        }
    }
}

/// `x · Φ(x)`. Nothing is kept for the backward: it recomputes `Φ(x)` from `x`, which costs less
/// than writing and reading it back.
pub(crate) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "castream-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(gelu_of(f32_slice(s, l, self.name())?)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?))
    }
}

/// `x · Φ(x)` over a whole buffer.
pub(crate) fn gelu_of(x: &[f32]) -> Vec<f32> {
    par_build(x.len(), CHUNK, |i, out| gelu_chunk(&x[i * CHUNK..], out))
}

/// `dy · (Φ(x) + x · φ(x))` over whole buffers.
pub(crate) fn gelu_grad(x: &[f32], dy: &[f32]) -> Vec<f32> {
    par_build(x.len(), CHUNK, |i, out| grad_chunk(&x[i * CHUNK..], &dy[i * CHUNK..], out))
}

/// `(x, dy) -> dy · (Φ(x) + x · φ(x))`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "castream-gelu-backward"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), xl, gl)?;
        let (x, g) = (f32_slice(xs, xl, self.name())?, f32_slice(gs, gl, self.name())?);
        Ok((CpuStorage::F32(gelu_grad(x, g)), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every float on a grid of step 2⁻¹² over `[-10, 10]` and the edges: within 4e-7 of libm's
    /// double-precision `erf` (an independent implementation), exactly odd, and ±1 in the tails.
    #[test]
    fn erf_within_4e7_of_double_precision() {
        let mut worst = (0f64, 0f32);
        for i in -40_960..=40_960 {
            let x = i as f32 / 4096.0;
            let e = (erf(x) as f64 - libm::erf(x as f64)).abs();
            if e > worst.0 {
                worst = (e, x);
            }
            assert_eq!(erf(-x), -erf(x), "erf is odd at {x}");
        }
        assert!(worst.0 < 4e-7, "largest error {:e} at x = {}", worst.0, worst.1);
        assert_eq!((erf(4.5), erf(-1e30), erf(0.0)), (1.0, -1.0, 0.0));
        // Near 0, erf(x) ≈ 2x/√π: the relative error stays small where the absolute one says nothing.
        for x in [1e-30f32, 1e-10, 1e-4] {
            let r = erf(x) as f64 / libm::erf(x as f64);
            assert!((r - 1.0).abs() < 3e-7, "erf({x}) relative error {}", r - 1.0);
        }
        assert!(erf(f32::NAN).is_nan());
    }

    /// `exp_nonpositive` against double-precision `exp` on `[-87, 0]`, relative error.
    #[test]
    fn exp_within_3e7_relative() {
        let mut worst = (0f64, 0f32);
        for i in 0..=870_000 {
            let y = -(i as f32) / 10_000.0;
            let e = (exp_nonpositive(y) as f64 / (y as f64).exp() - 1.0).abs();
            if e > worst.0 {
                worst = (e, y);
            }
        }
        assert!(worst.0 < 3e-7, "largest relative error {:e} at y = {}", worst.0, worst.1);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37 && exp_nonpositive(-1000.0) >= 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }
}
