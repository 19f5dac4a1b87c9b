use crate::common::*;
use candle_core::Tensor;
use castream_kernels::{conv2d, fold_batchnorm, Conv2dParams, Kernels};

/// Eval-mode BatchNorm2d, written out: `(y − mean) / √(var + ε) · γ + β` per channel.
fn batchnorm(y: &Tensor, gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> Tensor {
    let c = |t: &Tensor| t.reshape((1, t.elem_count(), 1, 1)).unwrap();
    let norm = y.broadcast_sub(&c(mean)).unwrap().broadcast_div(&c(&(var + eps).unwrap().sqrt().unwrap())).unwrap();
    norm.broadcast_mul(&c(gamma)).unwrap().broadcast_add(&c(beta)).unwrap()
}

#[test]
fn fold_batchnorm_matches_conv_then_batchnorm() {
    let mut g = rng(3);
    let (ci, co) = (5, 6);
    let x = uniform(&mut g, &[2, ci, 9, 7]);
    let w = uniform(&mut g, &[co, ci, 3, 3]);
    let bias = uniform(&mut g, &[co]);
    let gamma = uniform(&mut g, &[co]);
    let beta = uniform(&mut g, &[co]);
    let mean = uniform(&mut g, &[co]);
    let var = (uniform(&mut g, &[co]).abs().unwrap() + 0.1).unwrap();
    let eps = 1e-5;
    let p = Conv2dParams { stride: 2, padding: 1, groups: 1 };
    for b in [None, Some(&bias)] {
        let reference = batchnorm(&conv2d(&x, &w, b, p, Kernels::Fast).unwrap(), &gamma, &beta, &mean, &var, eps);
        let (wf, bf) = fold_batchnorm(&w, b, &gamma, &beta, &mean, &var, eps).unwrap();
        assert_eq!((wf.dims(), bf.dims()), (w.dims(), bias.dims()));
        let folded = conv2d(&x, &wf, Some(&bf), p, Kernels::Fast).unwrap();
        assert_close(&folded, &reference, 1e-5, &format!("bias {}", b.is_some()));
    }
}
