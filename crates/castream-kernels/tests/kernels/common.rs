use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-1, 1), f32 on the CPU.
pub fn uniform(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// Largest |a - b| relative to the largest |b| (plus a floor for all-zero references).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let (a, b) = (to_vec(a), to_vec(b));
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// `Σ f(x) · r` in f64, the scalar whose gradient the tests check.
pub fn loss(y: &Tensor, r: &Tensor) -> f64 {
    to_vec(y).iter().zip(to_vec(r)).map(|(a, b)| *a as f64 * b as f64).sum()
}

/// Gradients of `Σ f(x, w) · r` with respect to `x` and `w` through candle's autograd.
pub fn grads2(f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>, x: &Tensor, w: &Tensor, r: &Tensor) -> (Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (g.get(xv.as_tensor()).unwrap().clone(), g.get(wv.as_tensor()).unwrap().clone())
}

pub fn grad1(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, r: &Tensor) -> Tensor {
    let xv = Var::from_tensor(x).unwrap();
    let y = f(xv.as_tensor()).unwrap();
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    g.get(xv.as_tensor()).unwrap().clone()
}

/// Checks `grad` against central differences of `Σ f(x) · r` at up to `samples` positions of `x`
/// (all positions when fewer). The functions tested are linear or piecewise linear, so the only
/// error is f32 rounding of the forward, well below `tol`; a wrong factor or index is not.
pub fn check_fd(
    f: impl Fn(&Tensor) -> Tensor,
    x: &Tensor,
    r: &Tensor,
    grad: &Tensor,
    eps: f32,
    samples: usize,
    tol: f64,
    what: &str,
) {
    let xs = to_vec(x);
    let g = to_vec(grad);
    let step = (xs.len() / samples).max(1);
    let gmax = g.iter().fold(1e-3f64, |m, v| m.max(v.abs() as f64));
    for i in (0..xs.len()).step_by(step) {
        let at = |d: f32| {
            let mut v = xs.clone();
            v[i] += d;
            loss(&f(&Tensor::from_vec(v, x.dims(), x.device()).unwrap()), r)
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let err = (fd - g[i] as f64).abs() / gmax;
        assert!(err <= tol, "{what}: d/dx[{i}] analytic {} vs finite difference {fd} (rel {err:e})", g[i]);
    }
}
