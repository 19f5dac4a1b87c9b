//! 3x3 stride-1 "same" convolutions computed directly from zero-padded planes, with no patch
//! matrix (AVX2 + FMA): the forward, input and weight gradients of ResNet's 3x3 convs on maps at
//! least 16 wide.
//!
//! Through GEMM, each direction first builds a patch matrix (9x its input) and gemm then copies
//! (packs) an operand again; here the register tiles read the padded planes in place. The forward
//! convolves the input with the kernel, the input gradient `grad_y` with the flipped, transposed
//! kernel (`conv::Transposed`), both by [`conv`]: tiles of 16 output pixels (two AVX vectors along
//! a row) by 6 channels, two loads and six broadcasts per twelve FMAs, as gemm's own micro-kernel,
//! added onto the output (the bias, or zeros). The weight gradient
//! `grad_w[o, i, ky, kx] = Σ_p grad_y[o, p] · x[i, p + (ky, kx)]` keeps 2 x 2 channel pairs x the
//! three `kx` offsets of one `ky` in twelve vector accumulators while it runs along the rows of a
//! group of images, and sums their lanes at the end. Both sum in a fixed order: deterministic.

use crate::conv::Geom;

/// Output channels per tile of [`conv`].
const OC: usize = 6;

/// Whether the direct kernels run this convolution, forward and backward: a 3x3 stride-1 conv with padding 1
/// (output as large as the input) and one group, on maps whose width is a multiple of 8 and at
/// least 16 (narrower ones put several images side by side in one GEMM instead: on 8x8 maps,
/// one vector per tile row, both tiles ran at ~50 GFLOP/s per core against gemm's ~70), on a CPU
/// with AVX2 and FMA but not AVX-512, where gemm's micro-kernels are 512 bits wide and these
/// 256-bit tiles have not been measured against them.
pub(crate) fn applies(g: &Geom) -> bool {
    let shape = (g.kh, g.kw, g.stride, g.pad, g.groups) == (3, 3, 1, 1, 1) && g.w.is_multiple_of(8) && g.w >= 16;
    shape && has_avx2_fma() && !has_avx512()
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[allow(unreachable_code)]
    false
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[allow(unreachable_code)]
    false
}

/// Floats of `c` zero-padded `h x w` planes ([`pad`]).
pub(crate) fn padded_len(c: usize, h: usize, w: usize) -> usize {
    c * (h + 2) * (w + 2)
}

/// Writes `c` planes of `h x w` into `out` with a border of one zero: planes of `(h + 2) x (w + 2)`.
pub(crate) fn pad(x: &[f32], c: usize, h: usize, w: usize, out: &mut [f32]) {
    let wp = w + 2;
    for (src, dst) in x[..c * h * w].chunks_exact(h * w).zip(out.chunks_exact_mut((h + 2) * wp)) {
        dst[..wp + 1].fill(0.0);
        for (y, row) in src.chunks_exact(w).enumerate() {
            let at = (y + 1) * wp + 1;
            dst[at..at + w].copy_from_slice(row);
            // The right border of this row and the left border of the next.
            dst[at + w..at + w + 2].fill(0.0);
        }
        dst[(h + 1) * wp + 1..].fill(0.0);
    }
}

/// Kernels `k(o, i, t)` (`t = ky * 3 + kx`) of a conv from `n_in` to `n_out` channels in [`conv`]'s
/// order: blocks of [`OC`] output channels, each `[i][t][OC]`, the last block zero-filled.
pub(crate) fn pack(n_out: usize, n_in: usize, k: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
    let mut p = vec![0f32; n_out.div_ceil(OC) * n_in * 9 * OC];
    for (r, v) in p.iter_mut().enumerate() {
        let (blk, i, t, j) = (r / (n_in * 9 * OC), r / (9 * OC) % n_in, r / OC % 9, r % OC);
        let o = blk * OC + j;
        if o < n_out {
            *v = k(o, i, t);
        }
    }
    p
}

/// `y += conv3x3(x, w)` for one image (`y`: `n_out` planes of `h x w`, e.g. the bias, or zeros):
/// `xp` holds the `n_in` input planes [`pad`]ded, `packed` the kernels ([`pack`]). Only where
/// [`applies`].
pub(crate) fn conv(xp: &[f32], packed: &[f32], n_in: usize, n_out: usize, (h, w): (usize, usize), y: &mut [f32]) {
    assert!(w.is_multiple_of(8) && has_avx2_fma(), "direct::conv: width {w} not a multiple of 8, or no AVX2/FMA");
    assert!(xp.len() >= padded_len(n_in, h, w) && packed.len() >= n_out.div_ceil(OC) * n_in * 9 * OC);
    assert!(y.len() >= n_out * h * w);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted); every tile reads `xp` rows `oy..oy + 3`, columns
    // `ox..ox + 18` of padded planes and writes `y` inside its planes, all within the lengths
    // asserted above (widths are multiples of the 8- or 16-pixel tiles).
    unsafe {
        avx2::conv(xp.as_ptr(), packed.as_ptr(), n_in, n_out, (h, w), y.as_mut_ptr())
    }
}

/// `gw[o, i, t] += Σ_{n, p} gy[n, o, p] · x[n, i, p + offset(t)]` over `images` images: `gy`
/// their `n_out` output gradient planes of `h x w` each, `xp` their `n_in` input planes each
/// [`pad`]ded, `gw` in OIHW order. Only where [`applies`].
pub(crate) fn weight_grad(
    gy: &[f32],
    xp: &[f32],
    (n_out, n_in, images): (usize, usize, usize),
    (h, w): (usize, usize),
    gw: &mut [f32],
) {
    assert!(
        w.is_multiple_of(8) && has_avx2_fma(),
        "direct::weight_grad: width {w} not a multiple of 8, or no AVX2/FMA"
    );
    assert!(gy.len() >= images * n_out * h * w && xp.len() >= images * padded_len(n_in, h, w));
    assert!(gw.len() >= n_out * n_in * 9);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted); the loads stay inside the images' `gy` planes
    // and padded `xp` planes (rows `oy + ky`, columns up to `w + 1`), the sums go to `gw`'s
    // `n_out x n_in x 9` floats, all asserted above.
    unsafe {
        avx2::weight_grad(gy.as_ptr(), xp.as_ptr(), (n_out, n_in, images), (h, w), gw.as_mut_ptr())
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::OC;
    use std::arch::x86_64::*;

    /// See [`super::conv`]; the caller guarantees the bounds and the CPU features.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv(
        xp: *const f32,
        packed: *const f32,
        n_in: usize,
        n_out: usize,
        (h, w): (usize, usize),
        y: *mut f32,
    ) {
        let (wp, plane, blocks) = (w + 2, (h + 2) * (w + 2), n_out.div_ceil(OC));
        let tile = |oy: usize, ox: usize, blk: usize| Tile {
            src: unsafe { xp.add(oy * wp + ox) },
            wb: unsafe { packed.add(blk * n_in * 9 * OC) },
            n_in,
            plane,
            wp,
            out: unsafe { y.add((blk * OC * h + oy) * w + ox) },
            out_plane: h * w,
        };
        // Rows outside, channel blocks inside: each block reads the same three input rows of
        // every plane, which then stay in cache (a 56x56 map of 64 padded planes is 860 KB).
        for oy in 0..h {
            let mut ox = 0;
            // Two vectors (16 pixels) by one block of channels while they fit: two loads and six
            // broadcasts per twelve FMAs.
            while ox + 16 <= w {
                for blk in 0..blocks {
                    unsafe { tile(oy, ox, blk).wide((n_out - blk * OC).min(OC)) };
                }
                ox += 16;
            }
            // Then one vector by two blocks: one load and twelve broadcasts per twelve FMAs.
            if ox < w {
                for blk in (0..blocks).step_by(2) {
                    unsafe { tile(oy, ox, blk).narrow((n_out - blk * OC).min(2 * OC)) };
                }
            }
        }
    }

    /// One register tile of [`conv`]: `8·V` pixels of one output row from `src` (the top-left
    /// input of the first pixel), output channels from the packed block `wb` on (`N` of them, up
    /// to two blocks), added onto `out`.
    struct Tile {
        src: *const f32,
        wb: *const f32,
        n_in: usize,
        plane: usize,
        wp: usize,
        out: *mut f32,
        out_plane: usize,
    }

    impl Tile {
        /// Two vectors by `n` (1 to 6) channels.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide(&self, n: usize) {
            unsafe {
                match n {
                    6 => self.run::<2, 6>(),
                    5 => self.run::<2, 5>(),
                    4 => self.run::<2, 4>(),
                    3 => self.run::<2, 3>(),
                    2 => self.run::<2, 2>(),
                    _ => self.run::<2, 1>(),
                }
            }
        }

        /// One vector by `n` (1 to 12) channels.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow(&self, n: usize) {
            unsafe {
                match n {
                    12 => self.run::<1, 12>(),
                    11 => self.run::<1, 11>(),
                    10 => self.run::<1, 10>(),
                    9 => self.run::<1, 9>(),
                    8 => self.run::<1, 8>(),
                    7 => self.run::<1, 7>(),
                    6 => self.run::<1, 6>(),
                    5 => self.run::<1, 5>(),
                    4 => self.run::<1, 4>(),
                    3 => self.run::<1, 3>(),
                    2 => self.run::<1, 2>(),
                    _ => self.run::<1, 1>(),
                }
            }
        }

        /// `V` vectors of pixels by `N` output channels. Not inlined: inlined into its dispatcher
        /// with all its siblings, the accumulators no longer stayed in registers (measured: half
        /// the speed).
        #[inline(never)]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const V: usize, const N: usize>(&self) {
            let mut acc: [[__m256; V]; N] = std::array::from_fn(|j| {
                std::array::from_fn(|v| unsafe { _mm256_loadu_ps(self.out.add(j * self.out_plane + 8 * v)) })
            });
            let block = self.n_in * 9 * OC;
            for i in 0..self.n_in {
                let (xi, wi) = unsafe { (self.src.add(i * self.plane), self.wb.add(i * 9 * OC)) };
                for ky in 0..3 {
                    for kx in 0..3 {
                        let s = unsafe { xi.add(ky * self.wp + kx) };
                        let a: [__m256; V] = std::array::from_fn(|v| unsafe { _mm256_loadu_ps(s.add(8 * v)) });
                        let wk = unsafe { wi.add((ky * 3 + kx) * OC) };
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let b = unsafe { _mm256_broadcast_ss(&*wk.add(j / OC * block + j % OC)) };
                            for (acc, &a) in acc.iter_mut().zip(&a) {
                                *acc = _mm256_fmadd_ps(a, b, *acc);
                            }
                        }
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                for (v, &acc) in acc.iter().enumerate() {
                    unsafe { _mm256_storeu_ps(self.out.add(j * self.out_plane + 8 * v), acc) };
                }
            }
        }
    }

    /// See [`super::weight_grad`]; the caller guarantees the bounds and the CPU features.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad(
        gy: *const f32,
        xp: *const f32,
        (n_out, n_in, images): (usize, usize, usize),
        (h, w): (usize, usize),
        gw: *mut f32,
    ) {
        let plane = (h + 2) * (w + 2);
        let wt = WeightTile { h, w, plane, n_in, images, gy_image: n_out * h * w, xp_image: n_in * plane };
        for o in (0..n_out).step_by(2) {
            for i in (0..n_in).step_by(2) {
                for ky in 0..3 {
                    let gy = unsafe { gy.add(o * h * w) };
                    let xp = unsafe { xp.add(i * plane + ky * (w + 2)) };
                    let gw = unsafe { gw.add((o * n_in + i) * 9 + ky * 3) };
                    unsafe {
                        match (n_out - o >= 2, n_in - i >= 2) {
                            (true, true) => wt.run::<2, 2>(gy, xp, gw),
                            (true, false) => wt.run::<2, 1>(gy, xp, gw),
                            (false, true) => wt.run::<1, 2>(gy, xp, gw),
                            (false, false) => wt.run::<1, 1>(gy, xp, gw),
                        }
                    }
                }
            }
        }
    }

    struct WeightTile {
        h: usize,
        w: usize,
        plane: usize,
        n_in: usize,
        images: usize,
        /// Floats from one image's output gradient (input) to the next one's.
        gy_image: usize,
        xp_image: usize,
    }

    impl WeightTile {
        /// `O` output gradient planes from `gy` against `I` padded input planes from `xp` (already
        /// moved down by `ky` rows), at the three `kx` offsets, summed over the images and added
        /// to `gw[o, i, ky, 0..3]`: the lanes are summed once for all images (an 8x8 map is eight
        /// vectors).
        // Each input vector is loaded once and used for all `O` outputs before the next: with
        // twelve accumulators, iterating the arrays instead would keep more registers live.
        #[allow(clippy::needless_range_loop)]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const O: usize, const I: usize>(&self, gy: *const f32, xp: *const f32, gw: *mut f32) {
            let (h, w, wp) = (self.h, self.w, self.w + 2);
            let mut acc = [[[_mm256_setzero_ps(); 3]; I]; O];
            for img in 0..self.images {
                let (gy, xp) = unsafe { (gy.add(img * self.gy_image), xp.add(img * self.xp_image)) };
                for oy in 0..h {
                    for ox in (0..w).step_by(8) {
                        let g: [__m256; O] =
                            std::array::from_fn(|o| unsafe { _mm256_loadu_ps(gy.add(o * h * w + oy * w + ox)) });
                        for i in 0..I {
                            for kx in 0..3 {
                                let x = unsafe { _mm256_loadu_ps(xp.add(i * self.plane + oy * wp + ox + kx)) };
                                for o in 0..O {
                                    acc[o][i][kx] = _mm256_fmadd_ps(g[o], x, acc[o][i][kx]);
                                }
                            }
                        }
                    }
                }
            }
            for (o, acc) in acc.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    for (kx, &v) in acc.iter().enumerate() {
                        unsafe { *gw.add((o * self.n_in + i) * 9 + kx) += lane_sum(v) };
                    }
                }
            }
        }
    }

    /// The sum of a vector's eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn lane_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Input `(i, y, x)` with zero padding, by index arithmetic.
    fn at(x: &[f32], (h, w): (usize, usize), i: usize, y: isize, xx: isize) -> f32 {
        let inside = (0..h as isize).contains(&y) && (0..w as isize).contains(&xx);
        if inside {
            x[(i * h + y as usize) * w + xx as usize]
        } else {
            0.0
        }
    }

    /// Kernel tails (6 + 1 channels, an odd channel pair) and 16 + 8 pixel tiles, checked against
    /// loops over the definition. Runs wherever AVX2 and FMA are, AVX-512 or not, so that the
    /// tiles stay tested on machines where [`applies`] keeps them out of the network.
    #[test]
    fn conv_and_weight_gradient_match_the_definition() {
        if !has_avx2_fma() {
            return;
        }
        for (n_in, n_out, h, w) in [(3, 7, 5, 24), (5, 13, 3, 16), (2, 6, 2, 40)] {
            let x = values(n_in * h * w, 1 + n_in as u32);
            let wt = values(n_out * n_in * 9, 2 + n_out as u32);
            let mut xp = vec![f32::NAN; padded_len(n_in, h, w)];
            pad(&x, n_in, h, w, &mut xp);
            let packed = pack(n_out, n_in, |o, i, t| wt[(o * n_in + i) * 9 + t]);
            let start = values(n_out * h * w, 4);
            let mut y = start.clone();
            conv(&xp, &packed, n_in, n_out, (h, w), &mut y);
            for o in 0..n_out {
                for (p, &got) in y[o * h * w..][..h * w].iter().enumerate() {
                    let (oy, ox) = ((p / w) as isize, (p % w) as isize);
                    let want: f32 = start[o * h * w + p]
                        + (0..n_in * 9)
                            .map(|r| {
                                let (i, ky, kx) = (r / 9, (r % 9 / 3) as isize, (r % 3) as isize);
                                wt[o * n_in * 9 + r] * at(&x, (h, w), i, oy + ky - 1, ox + kx - 1)
                            })
                            .sum::<f32>();
                    assert!((got - want).abs() < 1e-4, "conv {n_in}->{n_out} {h}x{w}: y[{o}, {p}] {got} vs {want}");
                }
            }
            // Weight gradient of `Σ y · gy` over two images (the input, then the input negated
            // and shifted), added onto a non-zero start.
            let x2: Vec<f32> = x.iter().map(|v| 0.25 - v).collect();
            let mut xp2 = vec![f32::NAN; 2 * padded_len(n_in, h, w)];
            pad(&[x.clone(), x2.clone()].concat(), 2 * n_in, h, w, &mut xp2);
            let gy = values(2 * n_out * h * w, 3);
            let mut gw = vec![0.5f32; n_out * n_in * 9];
            weight_grad(&gy, &xp2, (n_out, n_in, 2), (h, w), &mut gw);
            for (r, &got) in gw.iter().enumerate() {
                let (o, i, ky, kx) = (r / (n_in * 9), r / 9 % n_in, (r % 9 / 3) as isize, (r % 3) as isize);
                let want: f32 = 0.5
                    + [&x, &x2]
                        .iter()
                        .enumerate()
                        .map(|(n, x)| {
                            (0..h * w)
                                .map(|p| {
                                    let (oy, ox) = ((p / w) as isize, (p % w) as isize);
                                    gy[(n * n_out + o) * h * w + p] * at(x, (h, w), i, oy + ky - 1, ox + kx - 1)
                                })
                                .sum::<f32>()
                        })
                        .sum::<f32>();
                assert!((got - want).abs() < 1e-4, "weight gradient {n_in}->{n_out} {h}x{w}: [{r}] {got} vs {want}");
            }
        }
    }
}
