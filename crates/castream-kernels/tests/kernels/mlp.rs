//! The MLP layers of ConvNeXt (the linear layer, exact GELU, the layer-scaled residual, the fused block MLP), against candle's ops with
//! candle's autograd, hand-worked values and central finite differences.

use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{convnext_mlp, gelu, layer_scale_residual, linear, linear_gelu, Kernels, MlpParams};
use rand_chacha::ChaCha8Rng;

/// `(y, dx, dW, db)` of `Σ layer(x, W, b) · r`.
fn run_layer(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    layer: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> [Tensor; 4] {
    let (xv, wv, bv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap(), Var::from_tensor(b).unwrap());
    let y = layer(xv.as_tensor(), wv.as_tensor(), bv.as_tensor());
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
    [y, get(&xv), get(&wv), get(&bv)]
}

/// Random `x` of `x_dims`, `W (c_out, in)`, `b`, and the weights `r` of the output.
fn layer_operands(g: &mut ChaCha8Rng, x_dims: &[usize], c_out: usize) -> [Tensor; 4] {
    let c_in = *x_dims.last().unwrap();
    let mut y_dims = x_dims.to_vec();
    *y_dims.last_mut().unwrap() = c_out;
    [uniform(g, x_dims), uniform(g, &[c_out, c_in]), uniform(g, &[c_out]), uniform(g, &y_dims)]
}

/// `(y, dx, dW, db)` of `Σ linear(x) · r` with the chosen kernels.
fn run_linear(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, k: Kernels) -> [Tensor; 4] {
    run_layer(x, w, b, r, |x, w, b| linear(x, w, Some(b), k).unwrap())
}

#[test]
fn linear_matches_candle_ops_and_autograd() {
    let mut g = rng(31);
    // Leading dimensions of any rank; one row; more rows than a thread's block; odd widths.
    for (x_dims, c_out) in
        [(vec![2usize, 3, 5, 7], 11usize), (vec![1, 4], 3), (vec![1031, 9], 6), (vec![2, 64, 16], 64)]
    {
        let [x, w, b, r] = layer_operands(&mut g, &x_dims, c_out);
        let y_dims = r.dims().to_vec();
        let fast = run_linear(&x, &w, &b, &r, Kernels::Fast);
        let candle = run_linear(&x, &w, &b, &r, Kernels::Candle);
        assert_eq!(fast[0].dims(), &y_dims[..]);
        for (i, what) in ["y", "dx", "dW", "db"].iter().enumerate() {
            assert_close(&fast[i], &candle[i], 1e-5, &format!("{what} {x_dims:?} -> {c_out}"));
        }
    }
}

#[test]
fn linear_by_hand_and_by_finite_differences() {
    // x = [[1, 2]], W = [[1, 0], [2, -1], [0, 3]], b = [0.5, 0, -1]: y = [1.5, 0, 5].
    let dev = candle_core::Device::Cpu;
    let x = Tensor::new(&[[1f32, 2.0]], &dev).unwrap();
    let w = Tensor::new(&[[1f32, 0.0], [2.0, -1.0], [0.0, 3.0]], &dev).unwrap();
    let b = Tensor::new(&[0.5f32, 0.0, -1.0], &dev).unwrap();
    assert_eq!(to_vec(&linear(&x, &w, Some(&b), Kernels::Fast).unwrap()), vec![1.5, 0.0, 5.0]);

    let mut g = rng(32);
    let (x, w, b, r) =
        (uniform(&mut g, &[5, 4]), uniform(&mut g, &[3, 4]), uniform(&mut g, &[3]), uniform(&mut g, &[5, 3]));
    let [_, dx, dw, db] = run_linear(&x, &w, &b, &r, Kernels::Fast);
    check_fd(|x| linear(x, &w, Some(&b), Kernels::Fast).unwrap(), &x, &r, &dx, 1e-2, 20, 1e-3, "linear dx");
    check_fd(|w| linear(&x, w, Some(&b), Kernels::Fast).unwrap(), &w, &r, &dw, 1e-2, 12, 1e-3, "linear dW");
    check_fd(|b| linear(&x, &w, Some(b), Kernels::Fast).unwrap(), &b, &r, &db, 1e-2, 3, 1e-3, "linear db");
}

/// `(y, dx, dW, db)` of `Σ linear_gelu(x) · r` with the chosen kernels.
fn run_linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, k: Kernels) -> [Tensor; 4] {
    run_layer(x, w, b, r, |x, w, b| linear_gelu(x, w, b, k).unwrap())
}

#[test]
fn linear_gelu_matches_candle_ops_and_autograd() {
    let mut g = rng(35);
    // Leading dimensions of any rank; rows split unevenly between threads; wide and narrow outputs.
    for (x_dims, c_out) in
        [(vec![2usize, 3, 5], 11usize), (vec![1031, 9], 6), (vec![2, 300, 16], 128), (vec![70, 8], 2048)]
    {
        let [x, w, b, r] = layer_operands(&mut g, &x_dims, c_out);
        let y_dims = r.dims().to_vec();
        let fast = run_linear_gelu(&x, &w, &b, &r, Kernels::Fast);
        let candle = run_linear_gelu(&x, &w, &b, &r, Kernels::Candle);
        assert_eq!(fast[0].dims(), &y_dims[..]);
        for (i, what) in ["y", "dx", "dW", "db"].iter().enumerate() {
            assert_close(&fast[i], &candle[i], 1e-5, &format!("{what} {x_dims:?} -> {c_out}"));
        }
        // The untracked forward equals the differentiable one.
        let eval = linear_gelu(&x, &w, &b, Kernels::Fast).unwrap();
        assert_close(&eval, &fast[0], 1e-6, &format!("eval y {x_dims:?} -> {c_out}"));
        // ... and the unfused composition.
        let unfused = gelu(&linear(&x, &w, Some(&b), Kernels::Fast).unwrap(), Kernels::Fast).unwrap();
        assert_close(&eval, &unfused, 1e-6, &format!("unfused y {x_dims:?} -> {c_out}"));
    }
    let (x, w, b) = (uniform(&mut g, &[40, 4]), uniform(&mut g, &[3, 4]), uniform(&mut g, &[3]));
    let r = uniform(&mut g, &[40, 3]);
    let [_, dx, dw, db] = run_linear_gelu(&x, &w, &b, &r, Kernels::Fast);
    check_fd(|x| linear_gelu(x, &w, &b, Kernels::Fast).unwrap(), &x, &r, &dx, 1e-2, 30, 2e-3, "linear_gelu dx");
    check_fd(|w| linear_gelu(&x, w, &b, Kernels::Fast).unwrap(), &w, &r, &dw, 1e-2, 12, 2e-3, "linear_gelu dW");
    check_fd(|b| linear_gelu(&x, &w, b, Kernels::Fast).unwrap(), &b, &r, &db, 1e-2, 3, 2e-3, "linear_gelu db");
}

/// `(y, dx)` of `Σ gelu(x) · r` with the chosen kernels.
fn run_gelu(x: &Tensor, r: &Tensor, k: Kernels) -> [Tensor; 2] {
    let xv = Var::from_tensor(x).unwrap();
    let y = gelu(xv.as_tensor(), k).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    [y, g.get(xv.as_tensor()).unwrap().clone()]
}

#[test]
fn gelu_matches_candle_and_its_derivative() {
    let mut g = rng(33);
    let dims = [3, 5, 7, 11];
    // Values in [-6, 6): both tails and the curved middle.
    let x = (uniform(&mut g, &dims) * 6.0).unwrap();
    let r = uniform(&mut g, &dims);
    let (fast, candle) = (run_gelu(&x, &r, Kernels::Fast), run_gelu(&x, &r, Kernels::Candle));
    assert_close(&fast[0], &candle[0], 1e-6, "gelu y");
    // candle's backward rounds 1/√(2π) to 0.398942.
    assert_close(&fast[1], &candle[1], 1e-5, "gelu dx");
    check_fd(|x| gelu(x, Kernels::Fast).unwrap(), &x, &r, &fast[1], 1e-2, 60, 2e-3, "gelu dx");
    // Without a gradient to track, the forward keeps nothing and gives the same values.
    assert_eq!(to_vec(&gelu(&x, Kernels::Fast).unwrap()), to_vec(&fast[0]));
}

#[test]
fn gelu_by_hand() {
    // GELU(0) = 0, GELU(1) = Φ(1) = 0.841344746, GELU(-1) = -(1 − Φ(1)), GELU(3) = 3 · 0.998650102;
    // its derivative at 0 is 1/2, at 1 Φ(1) + φ(1) = 0.841344746 + 0.241970725.
    let x = Tensor::new(&[0f32, 1.0, -1.0, 3.0], &candle_core::Device::Cpu).unwrap();
    let expected = [0.0, 0.841_344_746, -0.158_655_254, 3.0 * 0.998_650_102];
    let y = to_vec(&gelu(&x, Kernels::Fast).unwrap());
    assert!(y.iter().zip(expected).all(|(a, b)| (*a as f64 - b).abs() < 1e-6), "{y:?} vs {expected:?}");
    let dx = to_vec(&run_gelu(&x, &Tensor::ones(4, candle_core::DType::F32, x.device()).unwrap(), Kernels::Fast)[1]);
    assert!((dx[0] - 0.5).abs() < 1e-6 && (dx[1] as f64 - 1.083_315_471).abs() < 1e-6, "{dx:?}");
}

/// `(y, dx, dh, dγ)` of `Σ layer_scale_residual(x, h, γ) · r` with the chosen kernels.
fn run_layer_scale(x: &Tensor, h: &Tensor, gamma: &Tensor, r: &Tensor, k: Kernels) -> [Tensor; 4] {
    let vars = [x, h, gamma].map(|t| Var::from_tensor(t).unwrap());
    let y = layer_scale_residual(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), k).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let [dx, dh, dgamma] = vars.map(|v| g.get(v.as_tensor()).unwrap().clone());
    [y, dx, dh, dgamma]
}

#[test]
fn layer_scale_residual_matches_candle_ops_and_autograd() {
    let mut g = rng(34);
    for [b, c, h, w] in [[2usize, 5, 3, 7], [1, 1, 1, 1], [3, 16, 4, 4]] {
        let (x, branch) = (uniform(&mut g, &[b, c, h, w]), uniform(&mut g, &[b, h, w, c]));
        let (gamma, r) = (uniform(&mut g, &[c]), uniform(&mut g, &[b, c, h, w]));
        let fast = run_layer_scale(&x, &branch, &gamma, &r, Kernels::Fast);
        let candle = run_layer_scale(&x, &branch, &gamma, &r, Kernels::Candle);
        for (i, what) in ["y", "dx", "dh", "dgamma"].iter().enumerate() {
            assert_close(&fast[i], &candle[i], 1e-6, &format!("{what} {:?}", [b, c, h, w]));
        }
    }
    // A branch whose layout does not match the input is refused, naming both shapes.
    let err = layer_scale_residual(
        &uniform(&mut g, &[1, 2, 3, 4]),
        &uniform(&mut g, &[1, 2, 3, 4]),
        &uniform(&mut g, &[2]),
        Kernels::Fast,
    );
    assert!(err.unwrap_err().to_string().contains("[1, 2, 3, 4]"));
}

#[test]
fn convnext_mlp_matches_timms_composition_of_candle_ops() {
    let mut g = rng(36);
    // Blocks of 32K hidden floats, at least 64 pixels: several with a ragged end (33x31, 256 per
    // block); maps smaller than a block gathered several images at a time (3x3; 7x7 with a wide
    // hidden layer; 4x4 with 1024 hidden in groups of 4 images, the last of 2); one image alone
    // (2x2, batch 1).
    let cases = [[2usize, 5, 3, 3, 20], [3, 4, 33, 31, 128], [1, 8, 2, 2, 32], [2, 16, 7, 7, 3072], [6, 3, 4, 4, 1024]];
    for [b, c, h, w, hidden] in cases {
        let (x, y) = (uniform(&mut g, &[b, c, h, w]), uniform(&mut g, &[b, c, h, w]));
        let (w1, b1) = (uniform(&mut g, &[hidden, c]), uniform(&mut g, &[hidden]));
        let (w2, b2, gamma) = (uniform(&mut g, &[c, hidden]), uniform(&mut g, &[c]), uniform(&mut g, &[c]));
        let p = MlpParams { w1: &w1, b1: &b1, w2: &w2, b2: &b2, gamma: &gamma };
        let fused = convnext_mlp(&x, &y, &p, Kernels::Fast).unwrap();
        // timm's order with candle's own ops: permute, linear, exact GELU, linear, scale, add.
        let t = y.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let t = t.broadcast_matmul(&w1.t().unwrap()).unwrap().broadcast_add(&b1).unwrap().gelu_erf().unwrap();
        let t = t.broadcast_matmul(&w2.t().unwrap()).unwrap().broadcast_add(&b2).unwrap();
        let expected = (&x + t.broadcast_mul(&gamma).unwrap().permute((0, 3, 1, 2)).unwrap()).unwrap();
        assert_eq!(fused.dims(), &[b, c, h, w]);
        assert_close(&fused, &expected, 1e-5, &format!("convnext_mlp {:?}", [b, c, h, w, hidden]));
        assert_close(&convnext_mlp(&x, &y, &p, Kernels::Candle).unwrap(), &expected, 1e-5, "candle kernels");
    }
}

#[test]
fn convnext_mlp_passes_gradients_when_tracked() {
    // A tracked input takes the differentiable composition: its gradient matches finite differences.
    let mut g = rng(37);
    let (x, y, r) = (uniform(&mut g, &[1, 3, 2, 3]), uniform(&mut g, &[1, 3, 2, 3]), uniform(&mut g, &[1, 3, 2, 3]));
    let (w1, b1, w2) = (uniform(&mut g, &[8, 3]), uniform(&mut g, &[8]), uniform(&mut g, &[3, 8]));
    let (b2, gamma) = (uniform(&mut g, &[3]), uniform(&mut g, &[3]));
    let p = MlpParams { w1: &w1, b1: &b1, w2: &w2, b2: &b2, gamma: &gamma };
    let yv = Var::from_tensor(&y).unwrap();
    let out = convnext_mlp(&x, yv.as_tensor(), &p, Kernels::Fast).unwrap();
    assert!(out.track_op());
    let grad = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap().get(yv.as_tensor()).unwrap().clone();
    check_fd(|y| convnext_mlp(&x, y, &p, Kernels::Fast).unwrap(), &y, &r, &grad, 1e-2, 18, 2e-3, "convnext_mlp dy");
}

/// `x`, `y` `(B, C, H, W)`, `W₁`, `b₁`, `W₂`, `b₂`, `γ` and the output weights `r`.
fn mlp_operands(g: &mut ChaCha8Rng, [b, c, h, w, hidden]: [usize; 5]) -> [Tensor; 8] {
    let image = [b, c, h, w];
    let (x, y) = (uniform(g, &image), uniform(g, &image));
    let (w1, b1, w2) = (uniform(g, &[hidden, c]), uniform(g, &[hidden]), uniform(g, &[c, hidden]));
    [x, y, w1, b1, w2, uniform(g, &[c]), uniform(g, &[c]), uniform(g, &image)]
}

/// The output of `convnext_mlp` and the gradients of `Σ out · r` with respect to those of `x`,
/// `y`, `W₁`, `b₁`, `W₂`, `b₂`, `γ` that `tracked` selects (the others enter as constants).
fn run_mlp(ops: &[Tensor; 8], tracked: [bool; 7], k: Kernels) -> Vec<Option<Tensor>> {
    let vars: Vec<Option<Var>> =
        ops[..7].iter().zip(tracked).map(|(t, on)| on.then(|| Var::from_tensor(t).unwrap())).collect();
    let t: Vec<&Tensor> = ops[..7].iter().zip(&vars).map(|(t, v)| v.as_ref().map_or(t, |v| v.as_tensor())).collect();
    let p = MlpParams { w1: t[2], b1: t[3], w2: t[4], b2: t[5], gamma: t[6] };
    let out = convnext_mlp(t[0], t[1], &p, k).unwrap();
    let g = (&out * &ops[7]).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars.iter().map(|v| v.as_ref().map(|v| g.get(v.as_tensor()).unwrap().clone()));
    std::iter::once(Some(out.detach())).chain(grads).collect()
}

#[test]
fn convnext_mlp_trains_like_timms_composition_of_candle_ops() {
    // Tracked operands take the training op: its output and all seven gradients against timm's
    // composition of candle's ops and autograd, for one image (gemm's own threads), several images
    // over the threads, odd sizes, 1x1 maps and a wide hidden layer; then, as in a frozen network
    // explained by a CAM method, with only x and y tracked.
    let mut g = rng(38);
    let what = ["out", "dx", "dy", "dW1", "db1", "dW2", "db2", "dgamma"];
    for (sizes, tracked) in [
        ([1usize, 3, 2, 3, 8], [true; 7]),
        ([5, 4, 5, 3, 16], [true; 7]),
        ([2, 16, 7, 7, 64], [true; 7]),
        ([3, 8, 1, 1, 32], [true; 7]),
        ([3, 4, 3, 5, 16], [true, true, false, false, false, false, false]),
    ] {
        let ops = mlp_operands(&mut g, sizes);
        let fast = run_mlp(&ops, tracked, Kernels::Fast);
        let candle = run_mlp(&ops, tracked, Kernels::Candle);
        for (i, (f, c)) in fast.iter().zip(&candle).enumerate() {
            match (f, c) {
                (Some(f), Some(c)) => assert_close(f, c, 1e-5, &format!("{} {sizes:?}", what[i])),
                (None, None) => {}
                _ => panic!("{} {sizes:?}: a gradient on one side only", what[i]),
            }
        }
    }
}

#[test]
fn convnext_mlp_parameter_gradients_match_finite_differences() {
    // The training op's parameter gradients against central differences of the evaluation op.
    let ops = mlp_operands(&mut rng(39), [2, 3, 2, 3, 8]);
    let grads = run_mlp(&ops, [true; 7], Kernels::Fast);
    let [x, y, w1, b1, w2, b2, gamma, r] = &ops;
    let with = |i: usize, t: &Tensor| {
        let mut p = [w1, b1, w2, b2, gamma];
        p[i - 2] = t;
        let p = MlpParams { w1: p[0], b1: p[1], w2: p[2], b2: p[3], gamma: p[4] };
        convnext_mlp(x, y, &p, Kernels::Fast).unwrap()
    };
    for (i, what) in [(2, "dW1"), (3, "db1"), (4, "dW2"), (5, "db2"), (6, "dgamma")] {
        let grad = grads[i + 1].as_ref().unwrap();
        check_fd(|t| with(i, t), &ops[i], r, grad, 1e-2, 24, 2e-3, what);
    }
}
