//! A residual block in training mode as one op, against the same block composed of candle's
//! ops (convolution, BatchNorm from reductions, add, ReLU) with candle's autograd: output,
//! batch statistics and every gradient, for the block shapes ResNets use.

use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{count_macs, residual_block_train, BatchStats, Conv2dParams, ConvBnLayer, Kernels};

const EPS: f64 = 1e-5;

/// One layer: `(c_out, c_in, kernel, stride)`, padding `kernel / 2`.
type Layer = (usize, usize, usize, usize);

struct Case {
    what: &'static str,
    x: [usize; 4],
    chain: &'static [Layer],
    shortcut: Option<Layer>,
}

const CASES: &[Case] = &[
    Case { what: "basic, identity", x: [3, 4, 7, 6], chain: &[(4, 4, 3, 1), (4, 4, 3, 1)], shortcut: None },
    Case {
        what: "basic, stride 2",
        x: [2, 3, 9, 7],
        chain: &[(5, 3, 3, 2), (5, 5, 3, 1)],
        shortcut: Some((5, 3, 1, 2)),
    },
    Case {
        what: "bottleneck, stride 2",
        x: [2, 6, 7, 7],
        chain: &[(3, 6, 1, 1), (3, 3, 3, 2), (8, 3, 1, 1)],
        shortcut: Some((8, 6, 1, 2)),
    },
    Case {
        what: "bottleneck, identity",
        x: [2, 8, 5, 5],
        chain: &[(3, 8, 1, 1), (3, 3, 3, 1), (8, 3, 1, 1)],
        shortcut: None,
    },
];

/// Each layer's `(w, γ, β)`, random, with γ away from zero.
fn params(g: &mut rand_chacha::ChaCha8Rng, layers: &[Layer]) -> Vec<[Tensor; 3]> {
    layers
        .iter()
        .map(|&(co, ci, k, _)| {
            let gamma = uniform(g, &[co]).affine(0.5, 1.0).unwrap();
            [uniform(g, &[co, ci, k, k]), gamma, uniform(g, &[co])]
        })
        .collect()
}

/// The output, statistics and gradients of `Σ block(x) · r`: `[y, dx, then per layer dw, dγ, dβ,
/// mean, var]`, and the statistics' counts and the multiply-adds counted.
fn run(case: &Case, x: &Tensor, ps: &[[Tensor; 3]], r: &Tensor, k: Kernels) -> (Vec<Tensor>, Vec<usize>, u64) {
    let xv = Var::from_tensor(x).unwrap();
    let vars: Vec<[Var; 3]> = ps.iter().map(|p| p.clone().map(|t| Var::from_tensor(&t).unwrap())).collect();
    let specs: Vec<Layer> = case.chain.iter().copied().chain(case.shortcut).collect();
    let layers: Vec<ConvBnLayer> = vars
        .iter()
        .zip(&specs)
        .map(|(v, &(_, _, kk, stride))| ConvBnLayer {
            w: v[0].as_tensor(),
            p: Conv2dParams { stride, padding: kk / 2, groups: 1 },
            gamma: v[1].as_tensor(),
            beta: v[2].as_tensor(),
        })
        .collect();
    let n = case.chain.len();
    let (block, macs) = count_macs(|| residual_block_train(xv.as_tensor(), &layers[..n], layers.get(n), EPS, k));
    let (y, stats) = block.unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![y.clone(), grads.get(xv.as_tensor()).unwrap().clone()];
    for (v, BatchStats { mean, var, .. }) in vars.iter().zip(&stats) {
        out.extend(v.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()));
        out.extend([mean.clone(), var.clone()]);
    }
    (out, stats.iter().map(|s| s.count).collect(), macs)
}

#[test]
fn residual_block_matches_candle_ops_and_autograd() {
    for (i, case) in CASES.iter().enumerate() {
        let mut g = rng(700 + i as u64);
        // Statistics far from (0, 1): an input offset.
        let x = uniform(&mut g, &case.x).affine(2.0, 0.5).unwrap();
        let layers: Vec<Layer> = case.chain.iter().copied().chain(case.shortcut).collect();
        let ps = params(&mut g, &layers);
        let stride: usize = case.chain.iter().map(|l| l.3).product();
        let out_dims =
            [case.x[0], case.chain.last().unwrap().0, case.x[2].div_ceil(stride), case.x[3].div_ceil(stride)];
        let r = uniform(&mut g, &out_dims);
        let (fast, fast_counts, fast_macs) = run(case, &x, &ps, &r, Kernels::Fast);
        let (reference, counts, macs) = run(case, &x, &ps, &r, Kernels::Candle);
        assert_eq!((fast_counts, fast_macs), (counts, macs), "{}", case.what);
        assert_eq!(fast[0].dims(), &out_dims, "{}", case.what);
        let mut names = vec!["y".to_string(), "dx".to_string()];
        for l in 0..layers.len() {
            names.extend(["dw", "dgamma", "dbeta", "mean", "var"].map(|n| format!("layer {l} {n}")));
        }
        for ((a, b), name) in fast.iter().zip(&reference).zip(&names) {
            assert_close(a, b, 1e-4, &format!("{}: {name}", case.what));
        }
    }
}
