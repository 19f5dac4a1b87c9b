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

/// Conv + BatchNorm + ReLU + max-pool as one op (the ResNet stem in training mode), which keeps
/// each window's argmax in the forward, against the two ops (conv + BatchNorm + ReLU, then the
/// max-pool, whose backward recomputes the argmax): output, statistics and every gradient. The
/// quick stem (3x3, pool 3/2/1), the ImageNet stem (7x7/2, pool 3/2/1), a pool whose windows
/// do not overlap, and batch 1.
#[test]
fn conv_batch_norm_relu_max_pool_matches_the_separate_ops() {
    use castream_kernels::{conv_batch_norm_relu_max_pool_train, max_pool2d};
    // (x dims, c_out, [kernel, stride, padding], pool (kernel, stride, padding))
    type Case = ([usize; 4], usize, [usize; 3], (usize, usize, usize));
    /// `(x, w, γ, β) -> (y, mean, var)`.
    type Op<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> (Tensor, Tensor, Tensor);
    let cases: &[Case] = &[
        ([3, 3, 9, 8], 5, [3, 1, 1], (3, 2, 1)),
        ([2, 3, 19, 17], 4, [7, 2, 3], (3, 2, 1)),
        ([2, 2, 8, 9], 3, [3, 1, 1], (2, 2, 0)),
        ([1, 3, 7, 7], 4, [3, 1, 1], (3, 2, 1)),
    ];
    for (i, &(xd, co, [k, stride, padding], pool)) in cases.iter().enumerate() {
        let mut g = rng(420 + i as u64);
        let x = uniform(&mut g, &xd).affine(2.0, 0.5).unwrap();
        let wt = uniform(&mut g, &[co, xd[1], k, k]);
        let (gamma, beta) = (uniform(&mut g, &[co]).affine(0.5, 1.0).unwrap(), uniform(&mut g, &[co]));
        let p = Conv2dParams { stride, padding, groups: 1 };
        let separate = |x: &Tensor, w: &Tensor, gm: &Tensor, bt: &Tensor| {
            let (y, mean, var) = conv_batch_norm_train(x, w, p, gm, bt, EPS, true, Kernels::Fast).unwrap();
            (max_pool2d(&y, pool.0, pool.1, pool.2, Kernels::Fast).unwrap(), mean, var)
        };
        let fused = |x: &Tensor, w: &Tensor, gm: &Tensor, bt: &Tensor| {
            let (y, s) = conv_batch_norm_relu_max_pool_train(x, w, p, gm, bt, EPS, pool, Kernels::Fast).unwrap();
            (y, s.mean, s.var)
        };
        let r = uniform(&mut g, separate(&x, &wt, &gamma, &beta).0.dims());
        for track_x in [true, false] {
            let run = |f: Op| {
                let vars = [&x, &wt, &gamma, &beta].map(|t| Var::from_tensor(t).unwrap());
                let xin = if track_x { vars[0].as_tensor().clone() } else { x.clone() };
                let (y, mean, var) = f(&xin, vars[1].as_tensor(), vars[2].as_tensor(), vars[3].as_tensor());
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let get = |v: &Var| grads.get(v.as_tensor()).cloned().unwrap_or_else(|| v.zeros_like().unwrap());
                [y, mean, var, get(&vars[0]), get(&vars[1]), get(&vars[2]), get(&vars[3])]
            };
            let (a, b) = (run(&fused), run(&separate));
            for (j, what) in ["y", "mean", "var", "dx", "dw", "dgamma", "dbeta"].iter().enumerate() {
                assert_close(&a[j], &b[j], 1e-5, &format!("{what} case {i} track x {track_x}"));
            }
        }
    }
}
