//! Residual blocks in training mode as one op, against the same blocks composed of candle's ops
//! (convolution, BatchNorm from reductions, add, ReLU) with candle's autograd: output, batch
//! statistics and every gradient, for the block shapes ResNets use, alone and in sequence.

use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{
    count_macs, residual_blocks_train, BatchStats, Conv2dParams, ConvBnLayer, Kernels, ResidualBlock,
};

const EPS: f64 = 1e-5;

/// One layer: `(c_out, c_in, kernel, stride)`, padding `kernel / 2`.
type Layer = (usize, usize, usize, usize);

/// One block: its chain and its shortcut (the identity when `None`).
type Block = (&'static [Layer], Option<Layer>);

const BASIC_DOWN: Block = (&[(5, 3, 3, 2), (5, 5, 3, 1)], Some((5, 3, 1, 2)));
const BASIC: Block = (&[(5, 5, 3, 1), (5, 5, 3, 1)], None);
const BOTTLENECK_DOWN: Block = (&[(3, 6, 1, 1), (3, 3, 3, 2), (8, 3, 1, 1)], Some((8, 6, 1, 2)));
const BOTTLENECK: Block = (&[(3, 8, 1, 1), (3, 3, 3, 1), (8, 3, 1, 1)], None);

struct Case {
    what: &'static str,
    x: [usize; 4],
    blocks: &'static [Block],
}

const CASES: &[Case] = &[
    Case { what: "basic, identity", x: [3, 4, 7, 6], blocks: &[(&[(4, 4, 3, 1), (4, 4, 3, 1)], None)] },
    Case { what: "basic, stride 2", x: [2, 3, 9, 7], blocks: &[BASIC_DOWN] },
    Case { what: "bottleneck, stride 2", x: [2, 6, 7, 7], blocks: &[BOTTLENECK_DOWN] },
    Case { what: "bottleneck, identity", x: [2, 8, 5, 5], blocks: &[BOTTLENECK] },
    Case { what: "basic stage of three", x: [2, 3, 9, 7], blocks: &[BASIC_DOWN, BASIC, BASIC] },
    Case { what: "bottleneck stage of two", x: [2, 6, 7, 7], blocks: &[BOTTLENECK_DOWN, BOTTLENECK] },
];

impl Case {
    /// Every block's layers in order, chain then shortcut.
    fn layers(&self) -> Vec<Layer> {
        self.blocks.iter().flat_map(|(chain, short)| chain.iter().copied().chain(*short)).collect()
    }
}

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
    let mut layers = vars.iter().zip(case.layers()).map(|(v, (_, _, kk, stride))| ConvBnLayer {
        w: v[0].as_tensor(),
        p: Conv2dParams { stride, padding: kk / 2, groups: 1 },
        gamma: v[1].as_tensor(),
        beta: v[2].as_tensor(),
    });
    let blocks: Vec<ResidualBlock> = case
        .blocks
        .iter()
        .map(|(chain, short)| ResidualBlock {
            chain: layers.by_ref().take(chain.len()).collect(),
            shortcut: short.and_then(|_| layers.next()),
        })
        .collect();
    let (out, macs) = count_macs(|| residual_blocks_train(xv.as_tensor(), &blocks, EPS, k));
    let (y, stats) = out.unwrap();
    let stats: Vec<BatchStats> = stats.into_iter().flatten().collect();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![y.clone(), grads.get(xv.as_tensor()).unwrap().clone()];
    for (v, BatchStats { mean, var, .. }) in vars.iter().zip(&stats) {
        out.extend(v.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()));
        out.extend([mean.clone(), var.clone()]);
    }
    (out, stats.iter().map(|s| s.count).collect(), macs)
}

#[test]
fn residual_blocks_match_candle_ops_and_autograd() {
    for (i, case) in CASES.iter().enumerate() {
        let mut g = rng(700 + i as u64);
        // Statistics far from (0, 1): an input offset.
        let x = uniform(&mut g, &case.x).affine(2.0, 0.5).unwrap();
        let layers = case.layers();
        let ps = params(&mut g, &layers);
        let chains = case.blocks.iter().flat_map(|(chain, _)| chain.iter());
        let stride: usize = chains.clone().map(|l| l.3).product();
        let c_out = chains.last().unwrap().0;
        let out_dims = [case.x[0], c_out, case.x[2].div_ceil(stride), case.x[3].div_ceil(stride)];
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
