//! The blurred image insertion starts from (METHOD.md §5): the authors' RISE `gkern` or a
//! closed-form Gaussian, applied per channel with zero padding.

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Side of the insertion blur kernel (the authors' code).
pub const BLUR_SIZE: usize = 5;
/// Standard deviation of the insertion blur kernel, in pixels (the authors' code).
pub const BLUR_SIGMA: f64 = 5.0;

/// The blur of the image insertion starts from: a [`BLUR_SIZE`]² kernel with σ = [`BLUR_SIGMA`],
/// applied per channel with zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InsertionBlur {
    /// RISE's `gkern(5, 5)`, as the authors' code builds it ([`gkern`]): within 0.01% of a uniform
    /// 5x5 box, since σ is as wide as the kernel.
    #[default]
    Gkern,
    /// The closed-form Gaussian `exp(-(x² + y²) / 2σ²)`, normalised ([`gaussian_kernel`]).
    Gaussian,
}

impl InsertionBlur {
    /// The `BLUR_SIZE x BLUR_SIZE` kernel, row-major.
    pub fn kernel(self) -> Vec<f32> {
        match self {
            InsertionBlur::Gkern => gkern(BLUR_SIZE, BLUR_SIGMA),
            InsertionBlur::Gaussian => gaussian_kernel(BLUR_SIZE, BLUR_SIGMA),
        }
    }

    /// How table footers name the blur.
    pub fn describe(self) -> &'static str {
        match self {
            InsertionBlur::Gkern => {
                "RISE's gkern(5, 5) blur (a 5x5 delta smoothed by SciPy's gaussian_filter, σ 5: nearly a box)"
            }
            InsertionBlur::Gaussian => "a closed-form 5x5 Gaussian blur, σ 5",
        }
    }
}

/// RISE's `gkern(size, sigma)`: a `size x size` delta (at `size / 2`) smoothed by SciPy's
/// `ndimage.gaussian_filter(delta, sigma)` with its defaults — separable, the 1-D kernel
/// `exp(-x² / 2σ²)` over `|x| ≤ ⌊4σ + ½⌋` normalised to sum 1, boundary mode `reflect`
/// (`d c b a | a b c d | d c b a`). The result is the outer product of the filtered 1-D delta.
pub fn gkern(size: usize, sigma: f64) -> Vec<f32> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let weights: Vec<f64> = (-radius..=radius).map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp()).collect();
    let z: f64 = weights.iter().sum();
    let n = size as i64;
    let reflect = |j: i64| {
        let m = j.rem_euclid(2 * n);
        if m < n {
            m
        } else {
            2 * n - 1 - m
        }
    };
    // Output i gathers the taps whose reflected source is the delta's position.
    let line: Vec<f64> = (0..n)
        .map(|i| {
            (-radius..=radius).filter(|x| reflect(i + x) == n / 2).map(|x| weights[(x + radius) as usize]).sum::<f64>()
                / z
        })
        .collect();
    line.iter().flat_map(|a| line.iter().map(move |b| (a * b) as f32)).collect()
}

/// A normalised 2-D Gaussian kernel `exp(-(x² + y²) / (2σ²)) / Z`, row-major `size x size`, centred.
pub fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f32> {
    let centre = (size as f64 - 1.0) / 2.0;
    let raw: Vec<f64> = (0..size * size)
        .map(|i| {
            let (dy, dx) = ((i / size) as f64 - centre, (i % size) as f64 - centre);
            (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let z: f64 = raw.iter().sum();
    raw.iter().map(|v| (v / z) as f32).collect()
}

/// Blurs each channel of an NCHW batch with a `size x size` (odd) kernel and zero padding
/// `size / 2`, as the authors' torch `conv2d(padding=2)` does (cross-correlation): borders fade
/// towards zero, i.e. towards the mean colour in normalised space. Computed on the host, a plane
/// per task, one shifted row slice per tap (vectorised): candle's grouped convolution took a
/// quarter of the time of a 64 px insertion curve.
pub fn blur(x: &Tensor, kernel: &[f32], size: usize) -> Result<Tensor> {
    ensure!(
        size % 2 == 1 && kernel.len() == size * size,
        "blur: a {size}x{size} kernel with an odd side, got {} values",
        kernel.len()
    );
    let (b, c, h, w) = x.dims4().context("blur: the input must be (B, C, H, W)")?;
    let pixels: Vec<f32> = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0.0f32; pixels.len()];
    if h * w > 0 {
        out.par_chunks_mut(h * w)
            .zip(pixels.par_chunks(h * w))
            .for_each(|(dst, src)| blur_plane(src, dst, (h, w), kernel, size));
    }
    Ok(Tensor::from_vec(out, (b, c, h, w), x.device())?.to_dtype(x.dtype())?)
}

/// `dst += kernel ⋆ src` on one `h x w` plane, zero outside it.
fn blur_plane(src: &[f32], dst: &mut [f32], (h, w): (usize, usize), kernel: &[f32], size: usize) {
    let r = (size / 2) as isize;
    for (tap, &k) in kernel.iter().enumerate() {
        let (dy, dx) = ((tap / size) as isize - r, (tap % size) as isize - r);
        // Output columns whose input column x + dx lies inside the plane.
        let (x0, x1) = ((-dx).max(0) as usize, (w as isize - dx).min(w as isize).max(0) as usize);
        if x0 >= x1 {
            continue;
        }
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            let from = &src[sy as usize * w..][(x0 as isize + dx) as usize..(x1 as isize + dx) as usize];
            for (d, &v) in dst[y * w..][x0..x1].iter_mut().zip(from) {
                *d += k * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gaussian_kernel_matches_the_closed_form() {
        let k = gaussian_kernel(5, 5.0);
        let g = |d: f64| (-d * d / 50.0).exp();
        let z1: f64 = (-2..=2).map(|d| g(d as f64)).sum();
        let z = z1 * z1;
        // (row, col) -> offsets (row - 2, col - 2).
        for (i, (dy, dx)) in [(0, (-2.0, -2.0)), (1, (-2.0, -1.0)), (12, (0.0, 0.0)), (23, (2.0, 1.0))] {
            let want = (-(dx * dx + dy * dy) / 50.0f64).exp() / z;
            assert!((k[i] as f64 - want).abs() < 1e-7, "entry {i}: {} vs {want}", k[i]);
        }
        assert!((k.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        let k3 = gaussian_kernel(3, 1.0);
        let (e, c) = ((-1.0f64).exp(), (-0.5f64).exp());
        let z3 = 1.0 + 4.0 * c + 4.0 * e;
        assert!((k3[4] as f64 - 1.0 / z3).abs() < 1e-7 && (k3[0] as f64 - e / z3).abs() < 1e-7);
    }

    /// Zero-padded depthwise blur by direct summation.
    fn naive_blur(x: &[f32], (c, h, w): (usize, usize, usize), k: &[f32], size: usize) -> Vec<f32> {
        let r = (size / 2) as isize;
        let mut out = vec![0.0; x.len()];
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = 0.0f64;
                    for ky in 0..size {
                        for kx in 0..size {
                            let (sy, sx) = (y as isize + ky as isize - r, xx as isize + kx as isize - r);
                            if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                                acc += k[ky * size + kx] as f64 * x[ch * h * w + sy as usize * w + sx as usize] as f64;
                            }
                        }
                    }
                    out[ch * h * w + y * w + xx] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn blur_keeps_constant_interiors_darkens_corners_and_matches_a_loop() {
        let (h, w) = (8, 9);
        let x = Tensor::full(0.7f32, (1, 3, h, w), &cpu()).unwrap();
        let k = gaussian_kernel(5, 5.0);
        let out: Vec<f32> = blur(&x, &k, 5).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for ch in 0..3 {
            for (y, xx) in (2..h - 2).flat_map(|y| (2..w - 2).map(move |x| (y, x))) {
                assert!((out[ch * h * w + y * w + xx] - 0.7).abs() < 1e-6);
            }
            // Top-left corner: only kernel rows and columns 2..5 fall inside the image.
            let mass: f32 = (2..5).flat_map(|r| (2..5).map(move |c| (r, c))).map(|(r, c)| k[r * 5 + c]).sum();
            assert!((out[ch * h * w] - 0.7 * mass).abs() < 1e-6 && mass < 0.5);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let data: Vec<f32> = (0..2 * 3 * h * w).map(|_| rng.random_range(-2.0..2.0)).collect();
        let t = Tensor::from_vec(data.clone(), (2, 3, h, w), &cpu()).unwrap();
        let got: Vec<f32> = blur(&t, &k, 5).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = data.chunks_exact(3 * h * w).flat_map(|img| naive_blur(img, (3, h, w), &k, 5)).collect();
        got.iter().zip(&want).for_each(|(g, w)| assert!((g - w).abs() < 1e-5, "{g} vs {w}"));
        // candle's grouped convolution, as the authors' torch conv2d (an asymmetric kernel, so a
        // flip would show).
        let k: Vec<f32> = (0..25).map(|i| i as f32 / 300.0).collect();
        let weights = Tensor::from_vec(k.clone(), (1, 1, 5, 5), &cpu()).unwrap().repeat((3, 1, 1, 1)).unwrap();
        let conv: Vec<f32> = t.conv2d(&weights, 2, 1, 1, 3).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<f32> = blur(&t, &k, 5).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        got.iter().zip(&conv).for_each(|(g, c)| assert!((g - c).abs() < 1e-5, "{g} vs {c}"));
        assert!(blur(&t, &gaussian_kernel(4, 5.0), 4).is_err());
    }

    /// SciPy 1.17's `gaussian_filter(delta, 5)` of a 5x5 delta: the middle row of the kernel and
    /// the 1-D filtered delta it is the product of (printed with 17 digits).
    const SCIPY_GKERN_ROW: [f64; 5] =
        [0.04000167659476941, 0.04000055152546363, 0.04000297091891522, 0.04000055152546363, 0.04000167659476941];
    const SCIPY_LINE: [f64; 5] =
        [0.20000095577897217, 0.19999533064133718, 0.2000074271593813, 0.19999533064133718, 0.20000095577897217];

    /// The same filter as a brute-force 2-D loop: every tap of the truncated 2-D Gaussian, each
    /// axis reflected on its own by folding at the edges until the index falls inside.
    fn gkern_loop(size: usize, sigma: f64) -> Vec<f64> {
        let r = (4.0 * sigma + 0.5) as i64;
        let n = size as i64;
        let reflect = |mut j: i64| {
            while !(0..n).contains(&j) {
                j = if j < 0 { -1 - j } else { 2 * n - 1 - j };
            }
            j
        };
        let g = |x: i64| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp();
        let z: f64 = (-r..=r).map(g).sum::<f64>().powi(2);
        let mut out = vec![0f64; size * size];
        for (i, j) in (0..n).flat_map(|i| (0..n).map(move |j| (i, j))) {
            for (dy, dx) in (-r..=r).flat_map(|dy| (-r..=r).map(move |dx| (dy, dx))) {
                if reflect(i + dy) == n / 2 && reflect(j + dx) == n / 2 {
                    out[(i * n + j) as usize] += g(dy) * g(dx) / z;
                }
            }
        }
        out
    }

    #[test]
    fn gkern_matches_scipy_and_a_brute_force_loop() {
        let k = gkern(5, 5.0);
        for (c, want) in SCIPY_GKERN_ROW.iter().enumerate() {
            assert!((k[2 * 5 + c] as f64 - want).abs() < 1e-8, "{k:?}");
        }
        for (r, want) in SCIPY_LINE.iter().enumerate() {
            assert!((k[r * 5] as f64 - want * SCIPY_LINE[0]).abs() < 1e-8, "{k:?}");
        }
        for (size, sigma) in [(5, 5.0), (7, 1.0), (3, 0.8), (11, 5.0)] {
            let (got, want) = (gkern(size, sigma), gkern_loop(size, sigma));
            assert!(
                got.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() < 1e-7),
                "{size} {sigma}: {got:?} vs {want:?}"
            );
            // Reflection keeps the delta's mass.
            assert!((got.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        }
        // σ 5 over 5 pixels is nearly a box; the closed form is not.
        let box_gap = |k: &[f32]| k.iter().map(|v| (v - 0.04).abs()).fold(0f32, f32::max);
        assert!(box_gap(&k) < 1e-5 && box_gap(&gaussian_kernel(5, 5.0)) > 1e-3);
    }
}
