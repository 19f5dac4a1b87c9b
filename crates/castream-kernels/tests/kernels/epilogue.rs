//! The fused epilogues: conv + bias (+ ReLU), ReLU and residual add + ReLU, against candle's
//! separate ops and their autograd, and the bias gradient against finite differences.

use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{add_relu, conv2d, conv2d_relu, relu, Conv2dParams, Kernels};

/// (batch, c_in, h, w, c_out, kernel, stride, padding, groups).
type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

/// 3x3, strided, pointwise, grouped; depthwise 7x7 (ConvNeXt) and strided depthwise, whose op
/// adds the bias too.
const CASES: &[Case] = &[
    (2, 3, 7, 9, 5, 3, 1, 1, 1),
    (3, 4, 11, 11, 6, 3, 2, 1, 1),
    (2, 6, 9, 9, 4, 1, 1, 0, 1),
    (2, 4, 10, 9, 6, 3, 1, 1, 2),
    (2, 6, 9, 11, 6, 7, 1, 3, 6),
    (3, 4, 9, 11, 4, 3, 2, 1, 4),
];

/// `(y, dx, dw, db)` of `Σ act(conv(x, w) + b) · r`.
fn conv_run(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, p: Conv2dParams, act: bool, k: Kernels) -> [Tensor; 4] {
    let (xv, wv, bv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap(), Var::from_tensor(b).unwrap());
    let f = if act { conv2d_relu } else { conv2d };
    let y = f(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor()), p, k).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
    [y, get(&xv), get(&wv), get(&bv)]
}

#[test]
fn conv_with_bias_and_relu_matches_candle_ops_and_autograd() {
    for (i, &(b, ci, h, w, co, k, stride, padding, groups)) in CASES.iter().enumerate() {
        let mut g = rng(300 + i as u64);
        let (x, wt, bias) =
            (uniform(&mut g, &[b, ci, h, w]), uniform(&mut g, &[co, ci / groups, k, k]), uniform(&mut g, &[co]));
        let p = Conv2dParams { stride, padding, groups };
        let r = uniform(&mut g, conv2d(&x, &wt, None, p, Kernels::Candle).unwrap().dims());
        for act in [false, true] {
            let fast = conv_run(&x, &wt, &bias, &r, p, act, Kernels::Fast);
            let reference = conv_run(&x, &wt, &bias, &r, p, act, Kernels::Candle);
            for (j, what) in ["y", "dx", "dw", "dbias"].iter().enumerate() {
                assert_close(&fast[j], &reference[j], 1e-5, &format!("{what} case {i} relu {act}"));
            }
        }
    }
}

#[test]
fn conv_bias_gradient_matches_finite_differences() {
    let mut g = rng(310);
    let (x, wt, bias) = (uniform(&mut g, &[2, 3, 6, 5]), uniform(&mut g, &[4, 3, 3, 3]), uniform(&mut g, &[4]));
    let p = Conv2dParams { stride: 2, padding: 1, groups: 1 };
    let r = uniform(&mut g, conv2d(&x, &wt, None, p, Kernels::Fast).unwrap().dims());
    let [_, _, _, db] = conv_run(&x, &wt, &bias, &r, p, false, Kernels::Fast);
    let f = |b: &Tensor| conv2d(&x, &wt, Some(b), p, Kernels::Fast).unwrap();
    check_fd(f, &bias, &r, &db, 1e-2, 4, 1e-3, "conv bias gradient");
}

/// A bias-free conv keeps working (the op then adds an untracked zero bias).
#[test]
fn conv_relu_without_bias_is_relu_of_conv() {
    let mut g = rng(320);
    let (x, wt) = (uniform(&mut g, &[2, 3, 7, 7]), uniform(&mut g, &[5, 3, 3, 3]));
    let p = Conv2dParams { stride: 1, padding: 1, groups: 1 };
    let fused = conv2d_relu(&x, &wt, None, p, Kernels::Fast).unwrap();
    let separate = conv2d(&x, &wt, None, p, Kernels::Candle).unwrap().relu().unwrap();
    assert_close(&fused, &separate, 1e-5, "conv2d_relu without bias");
}

#[test]
fn relu_and_add_relu_match_candle_ops_and_autograd() {
    let mut g = rng(330);
    let dims = [3, 4, 5, 7];
    let (a, b, r) = (uniform(&mut g, &dims), uniform(&mut g, &dims), uniform(&mut g, &dims));
    assert_close(&relu(&a, Kernels::Fast).unwrap(), &a.relu().unwrap(), 0.0, "relu");
    let dr = grad1(|x| relu(x, Kernels::Fast), &a, &r);
    let expected: Vec<f32> = to_vec(&a).iter().zip(to_vec(&r)).map(|(&x, r)| if x > 0.0 { r } else { 0.0 }).collect();
    assert_eq!(to_vec(&dr), expected, "relu gradient: r where x > 0");
    let fast = add_relu(&a, &b, Kernels::Fast).unwrap();
    assert_close(&fast, &(&a + &b).unwrap().relu().unwrap(), 1e-7, "add_relu");
    let (ga, gb) = grads2(|a, b| add_relu(a, b, Kernels::Fast), &a, &b, &r);
    let (ra, rb) = grads2(|a, b| add_relu(a, b, Kernels::Candle), &a, &b, &r);
    assert_close(&ga, &ra, 0.0, "add_relu da");
    assert_close(&gb, &rb, 0.0, "add_relu db");
    assert!(add_relu(&a, &r.narrow(3, 0, 6).unwrap(), Kernels::Fast).is_err(), "mismatched shapes are refused");
}

/// Conv + bias + ReLU + max-pool as one op (the ResNet stem in evaluation mode) against the two
/// ops, forward and the x, w and bias gradients: the quick stem (3x3, pool 3/2/1), the ImageNet
/// stem (7x7/2, pool 3/2/1), a pool whose windows do not overlap, batch 1, and a 16-wide map.
#[test]
fn conv_relu_max_pool_matches_the_separate_ops() {
    use castream_kernels::{conv2d_relu_max_pool2d, max_pool2d};
    let cases: &[(Case, (usize, usize, usize))] = &[
        ((3, 3, 11, 9, 5, 3, 1, 1, 1), (3, 2, 1)),
        ((2, 3, 19, 17, 4, 7, 2, 3, 1), (3, 2, 1)),
        ((2, 4, 8, 8, 3, 3, 1, 1, 1), (2, 2, 0)),
        ((1, 3, 10, 10, 4, 3, 1, 1, 1), (3, 2, 1)),
        ((2, 3, 6, 16, 7, 3, 1, 1, 1), (3, 2, 1)), // 16 wide: the conv runs on the direct tiles where they apply
    ];
    for (i, &((b, ci, h, w, co, k, stride, padding, groups), (pk, ps, pp))) in cases.iter().enumerate() {
        let mut g = rng(340 + i as u64);
        let (x, wt, bias) = (uniform(&mut g, &[b, ci, h, w]), uniform(&mut g, &[co, ci, k, k]), uniform(&mut g, &[co]));
        let p = Conv2dParams { stride, padding, groups };
        let separate = |x: &Tensor, w: &Tensor, bias: &Tensor| {
            max_pool2d(&conv2d_relu(x, w, Some(bias), p, Kernels::Fast)?, pk, ps, pp, Kernels::Fast)
        };
        let fused = |x: &Tensor, w: &Tensor, bias: &Tensor| {
            conv2d_relu_max_pool2d(x, w, Some(bias), p, pk, ps, pp, Kernels::Fast)
        };
        let reference = separate(&x, &wt, &bias).unwrap();
        let r = uniform(&mut g, reference.dims());
        let what = format!("case {i}");
        assert_close(&fused(&x, &wt, &bias).unwrap(), &reference, 1e-6, &what);
        let grads = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>| {
            let vars = [&x, &wt, &bias].map(|t| Var::from_tensor(t).unwrap());
            let y = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap();
            let gs = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            vars.map(|v| gs.get(v.as_tensor()).unwrap().clone())
        };
        let (gf, gr) = (grads(&fused), grads(&separate));
        for (j, arg) in ["dx", "dw", "dbias"].iter().enumerate() {
            assert_close(&gf[j], &gr[j], 1e-6, &format!("{arg} {what}"));
        }
    }
}
