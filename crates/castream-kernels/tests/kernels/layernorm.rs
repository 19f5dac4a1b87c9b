use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{layer_norm, Kernels};

const EPS: f64 = 1e-6;

/// `(y, dx, dγ, dβ)` of `Σ LN(x) · r` over dimension `dim` with the chosen kernels.
fn run(x: &Tensor, gamma: &Tensor, beta: &Tensor, r: &Tensor, dim: usize, k: Kernels) -> [Tensor; 4] {
    let (xv, gv, bv) =
        (Var::from_tensor(x).unwrap(), Var::from_tensor(gamma).unwrap(), Var::from_tensor(beta).unwrap());
    let y = layer_norm(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), dim, EPS, k).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
    [y, get(&xv), get(&gv), get(&bv)]
}

#[test]
fn layer_norm_matches_candle_ops_and_autograd_channels_first_and_last() {
    let mut rng = rng(21);
    // (shape, normalised dimension): NCHW over channels, NHWC over the last, odd sizes, one block.
    for (dims, dim) in
        [(vec![2usize, 5, 3, 7], 1usize), (vec![3, 4, 5, 6], 3), (vec![1, 7, 1, 1], 1), (vec![700, 3], 1)]
    {
        let x = (uniform(&mut rng, &dims) * 2.0).unwrap().affine(1.0, -1.5).unwrap();
        let (gamma, beta) = (uniform(&mut rng, &[dims[dim]]), uniform(&mut rng, &[dims[dim]]));
        let r = uniform(&mut rng, &dims);
        let fast = run(&x, &gamma, &beta, &r, dim, Kernels::Fast);
        let candle = run(&x, &gamma, &beta, &r, dim, Kernels::Candle);
        for (i, what) in ["y", "dx", "dgamma", "dbeta"].iter().enumerate() {
            assert_close(&fast[i], &candle[i], 5e-5, &format!("{what} {dims:?} dim {dim}"));
        }
    }
}

#[test]
fn layer_norm_by_hand_and_by_finite_differences() {
    // Two positions of three channels, channels first: columns (1, 2, 6) and (0, 0, 3).
    let x = Tensor::from_slice(&[1f32, 0.0, 2.0, 0.0, 6.0, 3.0], (1, 3, 1, 2), &candle_core::Device::Cpu).unwrap();
    let ones = Tensor::ones(3, candle_core::DType::F32, x.device()).unwrap();
    let y = to_vec(&layer_norm(&x, &ones, &ones.zeros_like().unwrap(), 1, EPS, Kernels::Fast).unwrap());
    // Column (1, 2, 6): mean 3, variance 14/3; column (0, 0, 3): mean 1, variance 2.
    let (s1, s2) = ((14.0f64 / 3.0 + EPS).sqrt(), (2.0 + EPS).sqrt());
    let expected =
        [(1.0 - 3.0) / s1, (0.0 - 1.0) / s2, (2.0 - 3.0) / s1, (0.0 - 1.0) / s2, (6.0 - 3.0) / s1, (3.0 - 1.0) / s2];
    assert!(y.iter().zip(expected).all(|(a, b)| (*a as f64 - b).abs() < 1e-6), "{y:?} vs {expected:?}");

    let mut rng = rng(22);
    let dims = [2, 6, 3, 4];
    let x = uniform(&mut rng, &dims);
    let (gamma, beta, r) = (uniform(&mut rng, &[6]), uniform(&mut rng, &[6]), uniform(&mut rng, &dims));
    let [_, dx, _, _] = run(&x, &gamma, &beta, &r, 1, Kernels::Fast);
    let f = |x: &Tensor| layer_norm(x, &gamma, &beta, 1, EPS, Kernels::Fast).unwrap();
    check_fd(f, &x, &r, &dx, 1e-2, 40, 2e-3, "layer norm dx");
}
