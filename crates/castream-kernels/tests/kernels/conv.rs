use crate::common::*;
use candle_core::{DType, Device, Tensor, Var};
use castream_kernels::{conv2d, Conv2dParams, Kernels};

/// (batch, c_in, h, w, c_out, kernel, stride, padding, groups)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    (2, 3, 7, 9, 5, 3, 1, 1, 1),   // 3x3, odd sizes
    (3, 4, 11, 8, 6, 3, 2, 1, 1),  // 3x3 stride 2
    (2, 6, 9, 9, 4, 1, 1, 0, 1),   // pointwise: plain GEMM, no im2col
    (3, 5, 8, 7, 3, 1, 2, 0, 1),   // 1x1 stride 2 (ResNet downsample)
    (2, 3, 11, 10, 4, 3, 3, 1, 1), // stride 3: the generic strided gather
    (2, 4, 10, 9, 6, 3, 1, 3, 2),  // grouped, padding 3
    (2, 3, 13, 13, 8, 7, 2, 3, 1), // ResNet stem-like 7x7/2
    (1, 5, 9, 11, 7, 5, 1, 0, 1),  // batch 1 (gemm-level parallelism), 5x5 unpadded
    (3, 8, 12, 11, 8, 7, 1, 3, 8), // depthwise 7x7 pad 3 (ConvNeXt)
    (2, 6, 9, 10, 6, 3, 2, 1, 6),  // depthwise stride 2
    (2, 5, 7, 6, 5, 3, 1, 0, 5),   // depthwise unpadded
    (2, 4, 19, 37, 4, 7, 1, 3, 4), // depthwise: full 4x16 register tiles plus ragged edges
    (1, 6, 9, 17, 6, 3, 1, 1, 6),  // depthwise 3x3, one column tile
    (2, 3, 8, 21, 3, 5, 1, 2, 3),  // depthwise 5x5
    (2, 3, 9, 8, 3, 4, 1, 1, 3),   // depthwise even kernel: generic weight-gradient loop
    (2, 5, 7, 16, 7, 3, 1, 1, 1),  // 3x3 "same", 16 wide: direct backward, channel tiles 6 + 1, odd pairs
    (2, 3, 5, 40, 13, 3, 1, 1, 1), // direct backward: 16 + 16 + 8 pixel tiles, channels 6 + 6 + 1
    (1, 3, 5, 40, 13, 3, 1, 1, 1), // the same for one image: GEMMs over all threads instead
    (3, 8, 3, 24, 4, 3, 1, 1, 1),  // direct backward: 16 + 8 pixel tiles, three rows
];

/// The first case of `CASES` whose backward runs the direct kernels.
const DIRECT: usize = 15;

struct Setup {
    x: Tensor,
    w: Tensor,
    /// Random projection of the output: the tests differentiate `Σ conv(x, w) · r`.
    r: Tensor,
    p: Conv2dParams,
}

fn setup(&(b, ci, h, w, co, k, stride, padding, groups): &Case, seed: u64) -> Setup {
    let mut g = rng(seed);
    let x = uniform(&mut g, &[b, ci, h, w]);
    let wt = uniform(&mut g, &[co, ci / groups, k, k]);
    let p = Conv2dParams { stride, padding, groups };
    let y = x.conv2d(&wt, padding, stride, 1, groups).unwrap();
    let r = uniform(&mut g, y.dims());
    Setup { x, w: wt, r, p }
}

fn conv(k: Kernels, p: Conv2dParams) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> {
    move |x, w| conv2d(x, w, None, p, k)
}

#[test]
fn conv_forward_matches_candle() {
    for (i, c) in CASES.iter().enumerate() {
        let s = setup(c, i as u64);
        let mut g = rng(100 + i as u64);
        let bias = uniform(&mut g, &[c.4]);
        let fast = conv2d(&s.x, &s.w, Some(&bias), s.p, Kernels::Fast).unwrap();
        let reference = conv2d(&s.x, &s.w, Some(&bias), s.p, Kernels::Candle).unwrap();
        assert_close(&fast, &reference, 1e-5, &format!("forward {c:?}"));
    }
}

/// candle's conv2d backward derives the transposed conv's output padding from the height alone and
/// applies it to both axes, so its input gradient has the wrong width (an error) when
/// `(H + 2p - k) % s != (W + 2p - k) % s`. Only the other cases can use it as a reference; the
/// finite-difference test covers all of them.
fn candle_backward_ok(&(_, _, h, w, _, k, s, p, _): &Case) -> bool {
    (h + 2 * p - k) % s == (w + 2 * p - k) % s
}

#[test]
fn conv_gradients_match_candle_autograd() {
    for (i, c) in CASES.iter().enumerate().filter(|(_, c)| candle_backward_ok(c)) {
        let s = setup(c, i as u64);
        let (gx, gw) = grads2(conv(Kernels::Fast, s.p), &s.x, &s.w, &s.r);
        let (rx, rw) = grads2(conv(Kernels::Candle, s.p), &s.x, &s.w, &s.r);
        assert_close(&gx, &rx, 1e-5, &format!("input gradient {c:?}"));
        assert_close(&gw, &rw, 1e-5, &format!("weight gradient {c:?}"));
    }
}

#[test]
fn conv_gradients_match_finite_differences() {
    for (i, c) in CASES.iter().enumerate() {
        let s = setup(c, i as u64);
        let (gx, gw) = grads2(conv(Kernels::Fast, s.p), &s.x, &s.w, &s.r);
        let fwd = conv(Kernels::Fast, s.p);
        check_fd(|x| fwd(x, &s.w).unwrap(), &s.x, &s.r, &gx, 1e-2, 40, 2e-3, &format!("input {c:?}"));
        check_fd(|w| fwd(&s.x, w).unwrap(), &s.w, &s.r, &gw, 1e-2, 40, 2e-3, &format!("weights {c:?}"));
    }
}

/// Frozen inputs (an image batch, a frozen layer) get no gradient, and the other one is still right.
#[test]
fn conv_gradient_for_one_argument_only() {
    for c in [&CASES[0], &CASES[7], &CASES[DIRECT]] {
        let s = setup(c, 7);
        let (rx, rw) = grads2(conv(Kernels::Candle, s.p), &s.x, &s.w, &s.r);

        let w = Var::from_tensor(&s.w).unwrap();
        let y = conv2d(&s.x, w.as_tensor(), None, s.p, Kernels::Fast).unwrap();
        let g = (y * &s.r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&s.x).is_none());
        assert_close(g.get(w.as_tensor()).unwrap(), &rw, 1e-5, &format!("weight-only gradient {c:?}"));

        let x = Var::from_tensor(&s.x).unwrap();
        let y = conv2d(x.as_tensor(), &s.w, None, s.p, Kernels::Fast).unwrap();
        let g = (y * &s.r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&s.w).is_none());
        assert_close(g.get(x.as_tensor()).unwrap(), &rx, 1e-5, &format!("input-only gradient {c:?}"));
    }
}

/// Non-contiguous inputs are made contiguous by the facade, with gradients flowing back through.
#[test]
fn conv_accepts_strided_inputs() {
    let case = (3, 4, 11, 9, 6, 3, 2, 1, 1);
    let s = setup(&case, 3);
    let xt = s.x.transpose(2, 3).unwrap();
    let f = |k| move |x: &Tensor, w: &Tensor| conv2d(&x.transpose(2, 3)?, w, None, s.p, k);
    let (gx, gw) = grads2(f(Kernels::Fast), &xt, &s.w, &s.r);
    let (rx, rw) = grads2(f(Kernels::Candle), &xt, &s.w, &s.r);
    assert_close(&gx, &rx, 1e-5, "strided input gradient");
    assert_close(&gw, &rw, 1e-5, "strided weight gradient");
}

/// f64 (and any non-f32 dtype) falls back to candle's conv.
#[test]
fn conv_falls_back_for_f64() {
    let s = setup(&CASES[0], 1);
    let (x, w) = (s.x.to_dtype(DType::F64).unwrap(), s.w.to_dtype(DType::F64).unwrap());
    let y = conv2d(&x, &w, None, s.p, Kernels::Fast).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    assert_close(&y, &conv2d(&s.x, &s.w, None, s.p, Kernels::Fast).unwrap(), 1e-5, "f64 fallback");
    assert!(y.device().same_device(&Device::Cpu));
}

/// Small output maps put several images side by side in one GEMM, how many depending on the
/// images each thread holds: the same results with 1 thread (all five images in one GEMM) and 3
/// (two, two and one), forward and both gradients.
#[test]
fn conv_with_images_side_by_side_matches_candle_at_any_thread_count() {
    let cases: &[Case] = &[
        (5, 6, 4, 4, 8, 3, 1, 1, 1),   // late-stage 3x3 on a 4x4 map: fixed-width patch rows
        (5, 5, 8, 8, 7, 3, 1, 1, 1),   // the same on an 8x8 map
        (4, 3, 6, 4, 5, 3, 1, 1, 1),   // 4 wide but 6 high
        (5, 4, 3, 5, 6, 1, 1, 0, 1),   // pointwise
        (5, 4, 8, 8, 6, 1, 2, 0, 1),   // 1x1 stride 2
        (5, 4, 5, 5, 6, 3, 2, 1, 2),   // grouped, strided
        (3, 4, 16, 17, 9, 1, 1, 0, 1), // pointwise, expanding: one image per GEMM, the weight gradient accumulated over them
    ];
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for (i, c) in cases.iter().enumerate() {
                let s = setup(c, 500 + i as u64);
                let what = format!("{c:?} on {threads} threads");
                let bias = uniform(&mut rng(510 + i as u64), &[c.4]);
                let fast = conv2d(&s.x, &s.w, Some(&bias), s.p, Kernels::Fast).unwrap();
                assert_close(&fast, &conv2d(&s.x, &s.w, Some(&bias), s.p, Kernels::Candle).unwrap(), 1e-5, &what);
                let (gx, gw) = grads2(conv(Kernels::Fast, s.p), &s.x, &s.w, &s.r);
                let (rx, rw) = grads2(conv(Kernels::Candle, s.p), &s.x, &s.w, &s.r);
                assert_close(&gx, &rx, 1e-5, &format!("input gradient {what}"));
                assert_close(&gw, &rw, 1e-5, &format!("weight gradient {what}"));
            }
        });
    }
}

/// Large maps build their patch matrix in bands of output rows (so that it stays in cache):
/// here two or three bands per image, with a ragged last band, stride 1 and 2, and bands of an
/// 8-wide map (fixed-width patch rows starting below the first output row).
#[test]
fn conv_in_row_bands_matches_candle() {
    let cases: &[Case] = &[
        (1, 8, 40, 37, 6, 3, 1, 1, 1),
        (2, 8, 81, 81, 4, 3, 2, 1, 1),
        (1, 20, 30, 30, 5, 3, 1, 1, 1),
        (1, 130, 20, 8, 3, 3, 1, 1, 1),
    ];
    for (i, c) in cases.iter().enumerate() {
        let s = setup(c, 600 + i as u64);
        let fast = conv2d(&s.x, &s.w, None, s.p, Kernels::Fast).unwrap();
        assert_close(&fast, &conv2d(&s.x, &s.w, None, s.p, Kernels::Candle).unwrap(), 1e-5, &format!("forward {c:?}"));
        let (gx, gw) = grads2(conv(Kernels::Fast, s.p), &s.x, &s.w, &s.r);
        let (rx, rw) = grads2(conv(Kernels::Candle, s.p), &s.x, &s.w, &s.r);
        assert_close(&gx, &rx, 1e-5, &format!("input gradient {c:?}"));
        assert_close(&gw, &rw, 1e-5, &format!("weight gradient {c:?}"));
    }
}
