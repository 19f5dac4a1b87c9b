use crate::common::*;
use candle_core::{Device, Tensor, Var};
use castream_kernels::{max_pool2d, Kernels};
use rand::seq::SliceRandom;

fn t(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &Device::Cpu).unwrap()
}

/// Gradient of `Σ max_pool(x) · gy`.
fn pool_grad(x: &Tensor, gy: &Tensor, k: usize, s: usize, p: usize) -> Tensor {
    grad1(|x| max_pool2d(x, k, s, p, Kernels::Fast), x, gy)
}

/// PyTorch's rule written as plainly as possible: scan the clipped window in row-major order,
/// replace on strictly greater, route the gradient to the winner.
fn reference(
    x: &[f32],
    gy: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let (mut y, mut gx) = (vec![0f32; planes * oh * ow], vec![0f32; x.len()]);
    for pl in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(usize, f32)> = None;
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let i = pl * h * w + iy as usize * w + ix as usize;
                        if best.is_none_or(|(_, m)| x[i] > m) {
                            best = Some((i, x[i]));
                        }
                    }
                }
                let (i, m) = best.unwrap();
                let o = pl * oh * ow + oy * ow + ox;
                y[o] = m;
                gx[i] += gy[o];
            }
        }
    }
    (y, gx)
}

/// ResNet stem pool (3x3, stride 2, padding 1) on a 4x4 all-negative plane: a zero-padded pool
/// would output 0 at every border window; PyTorch's (and ours) never picks a padded position.
/// Windows (rows x cols, clipped): (0,0) = 0..2 x 0..2, (0,1) = 0..2 x 1..4, (1,0) = 1..4 x 0..2,
/// (1,1) = 1..4 x 1..4. Both lower windows pick x[2][1] = -1, which accumulates 3 + 4.
#[test]
fn max_pool_hand_worked_4x4_with_padding() {
    let x = t(&[-5., -3., -8., -1., -2., -9., -4., -7., -6., -1., -3., -2., -4., -8., -5., -9.], &[1, 1, 4, 4]);
    let y = max_pool2d(&x, 3, 2, 1, Kernels::Fast).unwrap();
    assert_eq!(to_vec(&y), [-2., -1., -1., -1.]);
    let gx = pool_grad(&x, &t(&[1., 2., 3., 4.], &[1, 1, 2, 2]), 3, 2, 1);
    #[rustfmt::skip]
    let expected = [
        0., 0., 0., 2.,
        1., 0., 0., 0.,
        0., 7., 0., 0.,
        0., 0., 0., 0.,
    ];
    assert_eq!(to_vec(&gx), expected);
}

/// Ties go to the first position of the window in row-major order, as in PyTorch.
#[test]
fn max_pool_ties_go_to_first_in_window() {
    let x = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let gx = pool_grad(&x, &Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(), 2, 1, 0);
    assert_eq!(to_vec(&gx), [1., 1., 0., 1., 1., 0., 0., 0., 0.]);
}

/// Distinct values spaced 1e-2 apart: a 1e-3 perturbation never changes a window's argmax.
fn distinct(seed: u64, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 1e-2 - n as f32 * 5e-3).collect();
    v.shuffle(&mut rng(seed));
    t(&v, dims)
}

#[test]
fn max_pool_gradients_match_finite_differences() {
    // (dims, kernel, stride, padding): overlapping, kernel != stride, non-overlapping, uneven.
    let cases: &[(&[usize], usize, usize, usize)] =
        &[(&[2, 3, 9, 7], 3, 2, 1), (&[1, 2, 8, 8], 3, 1, 1), (&[2, 2, 8, 6], 2, 2, 0), (&[1, 3, 11, 10], 5, 3, 2)];
    for (i, &(dims, k, s, p)) in cases.iter().enumerate() {
        let x = distinct(i as u64, dims);
        let y = max_pool2d(&x, k, s, p, Kernels::Fast).unwrap();
        let gy = uniform(&mut rng(50 + i as u64), y.dims());
        let gx = pool_grad(&x, &gy, k, s, p);
        let f = |x: &Tensor| max_pool2d(x, k, s, p, Kernels::Fast).unwrap();
        check_fd(f, &x, &gy, &gx, 1e-3, usize::MAX, 2e-3, &format!("max_pool {dims:?} k{k} s{s} p{p}"));
    }
}

/// The ResNet stem's pool at its real resolution (112x112 -> 56x56), exactly equal to the plain
/// reference, with ties present (values quantised to 1/8). The forward also equals candle's
/// edge-replicating emulation. candle's own backward is not a reference: for this pool
/// (kernel 3 != stride 2) it is unsupported, and where it exists (kernel == stride) it divides
/// the gradient by k², e.g. k = s = 2 routes 0.25 instead of 1 to each window's maximum.
#[test]
fn max_pool_resnet_stem_shape() {
    let dims = [2, 4, 112, 112];
    let mut g = rng(9);
    let x = uniform(&mut g, &dims);
    let x = (x * 8.0).unwrap().round().unwrap().affine(0.125, 0.0).unwrap();
    let y = max_pool2d(&x, 3, 2, 1, Kernels::Fast).unwrap();
    assert_eq!(y.dims(), [2, 4, 56, 56]);
    assert_eq!(to_vec(&y), to_vec(&max_pool2d(&x, 3, 2, 1, Kernels::Candle).unwrap()));
    let gy = uniform(&mut g, y.dims());
    let xv = Var::from_tensor(&x).unwrap();
    let grads = (max_pool2d(xv.as_tensor(), 3, 2, 1, Kernels::Fast).unwrap() * &gy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (ry, rgx) = reference(&to_vec(&x), &to_vec(&gy), 8, 112, 112, 3, 2, 1);
    assert_eq!(to_vec(&y), ry);
    let gx = to_vec(grads.get(xv.as_tensor()).unwrap());
    let max_diff = gx.iter().zip(&rgx).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff <= 1e-6, "stem pool gradient differs from the reference by {max_diff}");
}

/// Output rows wider than one block of the forward's horizontal pass (64 columns): two blocks,
/// the second ragged, for strides 2 and 1 and an unpadded pool, against the plain loop.
#[test]
fn max_pool_wide_rows_match_the_reference() {
    for (i, (w, k, s, p)) in [(150, 3, 2, 1), (70, 3, 1, 1), (133, 2, 2, 0)].into_iter().enumerate() {
        let dims = [1, 2, 5, w];
        let x = distinct(30 + i as u64, &dims);
        let y = max_pool2d(&x, k, s, p, Kernels::Fast).unwrap();
        let (ry, _) = reference(&to_vec(&x), &vec![0.0; y.elem_count()], 2, 5, w, k, s, p);
        assert_eq!(to_vec(&y), ry, "{w} wide, kernel {k}, stride {s}, padding {p}");
    }
}

/// A NaN wins its windows (PyTorch propagates it): one NaN in a 5x5 plane under a 3x3/2 pool
/// with padding 1 makes exactly the windows holding it NaN, and no other.
#[test]
fn max_pool_propagates_nan() {
    let mut v: Vec<f32> = (0..25).map(|i| i as f32).collect();
    v[2 * 5 + 3] = f32::NAN; // row 2, column 3
    let y = to_vec(&max_pool2d(&t(&v, &[1, 1, 5, 5]), 3, 2, 1, Kernels::Fast).unwrap());
    // Output (oy, ox) covers rows 2oy-1..=2oy+1 and columns 2ox-1..=2ox+1: row 2 lies only in
    // oy = 1's window, column 3 in ox = 1's and ox = 2's.
    let holds = |oy: usize, ox: usize| oy == 1 && (ox == 1 || ox == 2);
    for oy in 0..3 {
        for ox in 0..3 {
            assert_eq!(y[oy * 3 + ox].is_nan(), holds(oy, ox), "output ({oy}, {ox}) = {}", y[oy * 3 + ox]);
        }
    }
}

/// The composed max-pool (what runs off the CPU when a gradient is needed: candle's own pool has
/// no backward for kernel != stride) agrees with our kernel, forward and backward, with padding
/// and overlapping windows.
#[test]
fn composed_max_pool_matches_the_kernel_forward_and_backward() {
    // Distinct values (no ties), so each window's gradient has one recipient.
    let v: Vec<f32> = (0..2 * 3 * 9 * 8).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1).collect();
    let x = t(&v, &[2, 3, 9, 8]);
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)] {
        let fast = max_pool2d(&x, k, s, p, Kernels::Fast).unwrap();
        let composed = castream_kernels::max_pool2d_composed(&x, k, s, p).unwrap();
        assert_eq!(to_vec(&fast), to_vec(&composed), "forward {k}/{s}/{p}");
        let gy = Tensor::arange(0f32, fast.elem_count() as f32, fast.device()).unwrap().reshape(fast.dims()).unwrap();
        let via_composed = grad1(|x| castream_kernels::max_pool2d_composed(x, k, s, p), &x, &gy);
        assert_eq!(to_vec(&pool_grad(&x, &gy, k, s, p)), to_vec(&via_composed), "backward {k}/{s}/{p}");
    }
}
