use crate::common::*;
use candle_core::{Device, Tensor};
use castream_kernels::{upsample_bilinear2d, Kernels};

fn t(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &Device::Cpu).unwrap()
}

fn up(x: &Tensor, h: usize, w: usize) -> Vec<f32> {
    to_vec(&upsample_bilinear2d(x, h, w, Kernels::Fast).unwrap())
}

fn assert_all_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5, "element {i}: {x} vs {y}");
    }
}

/// `F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4), mode="bilinear")`.
#[test]
fn bilinear_2x2_to_4x4_matches_pytorch() {
    #[rustfmt::skip]
    let expected = [
        1.00, 1.25, 1.75, 2.00,
        1.50, 1.75, 2.25, 2.50,
        2.50, 2.75, 3.25, 3.50,
        3.00, 3.25, 3.75, 4.00,
    ];
    assert_all_close(&up(&t(&[1., 2., 3., 4.], &[1, 1, 2, 2]), 4, 4), &expected);
}

/// Non-integer ratios, worked by hand from PyTorch's formula `src = max((o + 0.5) · in/out − 0.5, 0)`:
/// - 3 -> 5 (scale 0.6): src = 0 (clamped from −0.2), 0.4, 1.0, 1.6, 2.2; the last has no upper
///   neighbour and takes x[2] with weight 1 — so [0, 4, 10, 16, 20] for x = [0, 10, 20].
/// - 4 -> 3 (scale 4/3): src = 1/6, 1.5, 17/6 — so [1/6, 1.5, 17/6] for x = [0, 1, 2, 3].
/// - height 1 -> 1 and 2 -> 1 (src = 0.5): the rows are averaged.
#[test]
fn bilinear_non_integer_ratios_match_pytorch() {
    assert_all_close(&up(&t(&[0., 10., 20.], &[1, 1, 1, 3]), 1, 5), &[0., 4., 10., 16., 20.]);
    assert_all_close(&up(&t(&[0., 1., 2., 3.], &[1, 1, 1, 4]), 1, 3), &[1. / 6., 1.5, 17. / 6.]);
    assert_all_close(
        &up(&t(&[0., 1., 2., 3., 4., 5., 6., 7.], &[1, 1, 2, 4]), 1, 3),
        &[2. + 1. / 6., 3.5, 4. + 5. / 6.],
    );
    // Two planes (batch 2) stay independent.
    assert_all_close(
        &up(&t(&[0., 10., 20., 1., 1., 1.], &[2, 1, 1, 3]), 1, 5),
        &[0., 4., 10., 16., 20., 1., 1., 1., 1., 1.],
    );
}

/// candle's forward implements the same semantics; only its backward is missing.
#[test]
fn bilinear_forward_matches_candle() {
    let x = uniform(&mut rng(1), &[2, 3, 7, 5]);
    for (h, w) in [(14, 10), (16, 13), (3, 2), (7, 5)] {
        let fast = upsample_bilinear2d(&x, h, w, Kernels::Fast).unwrap();
        let reference = upsample_bilinear2d(&x, h, w, Kernels::Candle).unwrap();
        assert_close(&fast, &reference, 1e-6, &format!("7x5 -> {h}x{w}"));
    }
}

#[test]
fn bilinear_gradient_matches_finite_differences() {
    for (i, (dims, h, w)) in
        [([2, 3, 5, 4], 11, 9), ([1, 2, 9, 8], 4, 5), ([2, 1, 6, 7], 6, 12)].into_iter().enumerate()
    {
        let x = uniform(&mut rng(i as u64), &dims);
        let gy = uniform(&mut rng(20 + i as u64), &[dims[0], dims[1], h, w]);
        let gx = grad1(|x| upsample_bilinear2d(x, h, w, Kernels::Fast), &x, &gy);
        let f = |x: &Tensor| upsample_bilinear2d(x, h, w, Kernels::Fast).unwrap();
        check_fd(f, &x, &gy, &gx, 1e-2, usize::MAX, 2e-3, &format!("{dims:?} -> {h}x{w}"));
    }
}
