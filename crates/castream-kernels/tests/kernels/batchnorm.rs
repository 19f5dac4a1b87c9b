use crate::common::*;
use candle_core::{Tensor, Var};
use castream_kernels::{batch_norm_train, Kernels};

const EPS: f64 = 1e-5;

/// `(y, dx, dγ, dβ)` of `Σ BN(x) · r` (`Σ ReLU(BN(x)) · r` with `relu`) with the chosen kernels.
fn run(x: &Tensor, gamma: &Tensor, beta: &Tensor, r: &Tensor, relu: bool, k: Kernels) -> [Tensor; 4] {
    let (xv, gv, bv) =
        (Var::from_tensor(x).unwrap(), Var::from_tensor(gamma).unwrap(), Var::from_tensor(beta).unwrap());
    let (y, _, _) = batch_norm_train(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), EPS, relu, k).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
    [y, get(&xv), get(&gv), get(&bv)]
}

#[test]
fn batch_norm_train_matches_candle_ops_and_autograd_on_odd_shapes() {
    let mut rng = rng(11);
    for dims in [[2usize, 3, 5, 7], [1, 4, 3, 3], [5, 2, 1, 1], [3, 16, 8, 8]] {
        // An offset and scale per tensor so the statistics are far from (0, 1).
        let x = (uniform(&mut rng, &dims) * 3.0).unwrap().affine(1.0, 2.5).unwrap();
        let (gamma, beta) = (uniform(&mut rng, &[dims[1]]), uniform(&mut rng, &[dims[1]]));
        let r = uniform(&mut rng, &dims);
        for relu in [false, true] {
            let fast = run(&x, &gamma, &beta, &r, relu, Kernels::Fast);
            let candle = run(&x, &gamma, &beta, &r, relu, Kernels::Candle);
            for (i, what) in ["y", "dx", "dgamma", "dbeta"].iter().enumerate() {
                assert_close(&fast[i], &candle[i], 2e-5, &format!("{what} {dims:?} relu {relu}"));
            }
            if relu {
                assert!(to_vec(&fast[0]).iter().all(|&v| v >= 0.0) && to_vec(&fast[0]).contains(&0.0));
            }
        }
    }
}

#[test]
fn batch_norm_statistics_and_input_gradient_by_hand_and_finite_differences() {
    // One channel, four values: mean 2.5, biased variance 1.25.
    let x = Tensor::from_slice(&[1f32, 2.0, 3.0, 4.0], (2, 1, 1, 2), &candle_core::Device::Cpu).unwrap();
    let (gamma, beta) = (Tensor::new(&[2f32], x.device()).unwrap(), Tensor::new(&[0.5f32], x.device()).unwrap());
    let (y, mean, var) = batch_norm_train(&x, &gamma, &beta, EPS, false, Kernels::Fast).unwrap();
    assert_eq!((to_vec(&mean), to_vec(&var)), (vec![2.5], vec![1.25]));
    let s = (1.25f64 + EPS).sqrt();
    let expected: Vec<f32> = [1.0, 2.0, 3.0, 4.0].iter().map(|v| (2.0 * (v - 2.5) / s + 0.5) as f32).collect();
    assert!(to_vec(&y).iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{:?} vs {expected:?}", to_vec(&y));

    let mut rng = rng(12);
    let dims = [3, 2, 4, 5];
    let x = uniform(&mut rng, &dims);
    let (gamma, beta, r) = (uniform(&mut rng, &[2]), uniform(&mut rng, &[2]), uniform(&mut rng, &dims));
    let [_, dx, _, _] = run(&x, &gamma, &beta, &r, false, Kernels::Fast);
    let f = |x: &Tensor| batch_norm_train(x, &gamma, &beta, EPS, false, Kernels::Fast).unwrap().0;
    check_fd(f, &x, &r, &dx, 1e-2, 40, 2e-3, "batch norm dx");
}

/// A large offset with a small spread (mean ~1000, standard deviation ~0.006): the variance
/// (per plane about the plane's own mean, combined in f64) against a brute-force f64 two-pass of
/// the same values. A one-pass `E[x²] − E[x]²` in f32 gets it wrong by orders of magnitude.
#[test]
fn batch_norm_statistics_of_a_large_offset_match_f64() {
    let mut rng = rng(13);
    let dims = [4, 3, 9, 11];
    let x = uniform(&mut rng, &dims).affine(0.01, 1000.0).unwrap();
    let (gamma, beta) = (uniform(&mut rng, &[3]), uniform(&mut rng, &[3]));
    let (_, mean, var) = batch_norm_train(&x, &gamma, &beta, EPS, false, Kernels::Fast).unwrap();
    let v = to_vec(&x);
    let hw = dims[2] * dims[3];
    for ch in 0..dims[1] {
        let values: Vec<f64> =
            (0..dims[0]).flat_map(|i| &v[(i * dims[1] + ch) * hw..][..hw]).map(|&x| x as f64).collect();
        let m = values.iter().sum::<f64>() / values.len() as f64;
        let var_ref = values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / values.len() as f64;
        let (got_m, got_v) = (to_vec(&mean)[ch] as f64, to_vec(&var)[ch] as f64);
        assert!((got_m - m).abs() < 1e-4, "channel {ch}: mean {got_m} vs {m}");
        assert!((got_v - var_ref).abs() < 1e-3 * var_ref, "channel {ch}: variance {got_v:e} vs {var_ref:e}");
    }
}

#[test]
fn batch_norm_refuses_a_single_value_per_channel() {
    let x = Tensor::ones((1, 3, 1, 1), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let g = Tensor::ones(3, candle_core::DType::F32, x.device()).unwrap();
    let err = batch_norm_train(&x, &g, &g, EPS, false, Kernels::Fast).unwrap_err().to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
}
