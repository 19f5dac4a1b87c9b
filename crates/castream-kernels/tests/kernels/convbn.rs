//! Convolution + training-mode BatchNorm (+ ReLU) as one op, against the convolution and the
//! BatchNorm built from candle's ops with candle's autograd, and against finite differences.

use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{conv2d, conv_batch_norm_train, Conv2dParams, Kernels};

const EPS: f64 = 1e-5;

/// (batch, c_in, h, w, c_out, kernel, stride, padding, groups): 3x3, strided, pointwise,
/// strided pointwise, grouped, odd sizes.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    (2, 3, 7, 9, 5, 3, 1, 1, 1),
    (3, 4, 11, 9, 6, 3, 2, 1, 1),
    (3, 6, 5, 7, 4, 1, 1, 0, 1),
    (3, 4, 7, 7, 8, 1, 2, 0, 1),
    (3, 4, 6, 5, 6, 3, 1, 1, 2),
];

/// `(y, mean, var, dx, dw, dγ, dβ)` of `Σ act(BN(conv(x, w))) · r`; `dx` only when `track_x`
/// (otherwise zeros, as the op then skips it).
fn run(
    x: &Tensor,
    w: &Tensor,
    gb: [&Tensor; 2],
    r: &Tensor,
    p: Conv2dParams,
    relu: bool,
    track_x: bool,
    k: Kernels,
) -> [Tensor; 7] {
    let vars = [x, w, gb[0], gb[1]].map(|t| Var::from_tensor(t).unwrap());
    let xin = if track_x { vars[0].as_tensor().clone() } else { x.clone() };
    let (y, mean, var) =
        conv_batch_norm_train(&xin, vars[1].as_tensor(), p, vars[2].as_tensor(), vars[3].as_tensor(), EPS, relu, k)
            .unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let get = |v: &Var| g.get(v.as_tensor()).cloned().unwrap_or_else(|| v.zeros_like().unwrap());
    [y, mean, var, get(&vars[0]), get(&vars[1]), get(&vars[2]), get(&vars[3])]
}

#[test]
fn conv_batch_norm_train_matches_candle_ops_and_autograd() {
    for (i, &(b, ci, h, w, co, k, stride, padding, groups)) in CASES.iter().enumerate() {
        let mut g = rng(400 + i as u64);
        // Statistics far from (0, 1): an input offset and scaled weights.
        let x = uniform(&mut g, &[b, ci, h, w]).affine(2.0, 1.5).unwrap();
        let wt = uniform(&mut g, &[co, ci / groups, k, k]);
        let (gamma, beta) = (uniform(&mut g, &[co]), uniform(&mut g, &[co]));
        let p = Conv2dParams { stride, padding, groups };
        let r = uniform(&mut g, conv2d(&x, &wt, None, p, Kernels::Candle).unwrap().dims());
        for (relu, track_x) in [(false, true), (true, true), (true, false)] {
            let fast = run(&x, &wt, [&gamma, &beta], &r, p, relu, track_x, Kernels::Fast);
            let reference = run(&x, &wt, [&gamma, &beta], &r, p, relu, track_x, Kernels::Candle);
            for (j, what) in ["y", "mean", "var", "dx", "dw", "dgamma", "dbeta"].iter().enumerate() {
                assert_close(&fast[j], &reference[j], 5e-5, &format!("{what} case {i} relu {relu} track x {track_x}"));
            }
        }
    }
}

/// The weight gradient through the batch statistics, against central differences.
#[test]
fn conv_batch_norm_weight_gradient_matches_finite_differences() {
    let mut g = rng(410);
    let (x, wt) = (uniform(&mut g, &[3, 3, 6, 5]), uniform(&mut g, &[4, 3, 3, 3]));
    let (gamma, beta) = (uniform(&mut g, &[4]), uniform(&mut g, &[4]));
    let p = Conv2dParams { stride: 2, padding: 1, groups: 1 };
    let r = uniform(&mut g, conv2d(&x, &wt, None, p, Kernels::Fast).unwrap().dims());
    let [.., dw, _, _] = run(&x, &wt, [&gamma, &beta], &r, p, false, true, Kernels::Fast);
    let f = |w: &Tensor| conv_batch_norm_train(&x, w, p, &gamma, &beta, EPS, false, Kernels::Fast).unwrap().0;
    check_fd(f, &wt, &r, &dw, 1e-2, 30, 3e-3, "conv + batch norm dw");
}
