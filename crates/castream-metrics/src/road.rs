//! ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022): remove a fixed
//! fraction of the pixels, most salient first (MoRF) or least salient first (LeRF), and fill them
//! by noisy linear imputation instead of a constant. A constant fill draws the removed region's
//! outline, which the model can read as class evidence; an imputed fill continues its surroundings.
//!
//! Imputation (the ROAD authors' `NoisyLinearImputer`, also pytorch-grad-cam's): every removed pixel
//! equals the weighted mean of its in-image 8 neighbours (1/6 for the 4 edge neighbours, 1/12 for
//! the 4 diagonal ones), removed neighbours being unknowns too; then Gaussian noise is added to the
//! imputed values. The system is symmetric positive definite (every removed region touches a kept
//! pixel while any pixel is kept) and banded, so it is solved exactly by a Cholesky factorisation
//! within its envelope, once per mask for every channel.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::confidence::class_probabilities;

/// Which pixels are removed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoadOrder {
    /// Most relevant first: a good map makes the probability fall. Lower is better.
    MostRelevantFirst,
    /// Least relevant first: a good map keeps the probability. Higher is better.
    LeastRelevantFirst,
}

/// The ROAD authors' neighbour weights: `((dy, dx), weight)`, summing to 1.
const NEIGHBOURS: [((isize, isize), f64); 8] = [
    ((-1, -1), 1.0 / 12.0),
    ((-1, 0), 1.0 / 6.0),
    ((-1, 1), 1.0 / 12.0),
    ((0, -1), 1.0 / 6.0),
    ((0, 1), 1.0 / 6.0),
    ((1, -1), 1.0 / 12.0),
    ((1, 0), 1.0 / 6.0),
    ((1, 1), 1.0 / 12.0),
];

/// The removal fractions, in percent, of a `step`: `step, 2·step, …` below 100 (10 gives the
/// authors' 10%, 20%, …, 90%).
pub fn fractions(step: u32) -> Vec<u32> {
    (1..).map(|k| k * step.max(1)).take_while(|&p| p < 100).collect()
}

/// The stream of a pixel-order seed that breaks ties (the noise uses streams 0, 1, … per fraction).
const TIE_STREAM: u64 = u64::MAX;

/// The position of each pixel in ROAD's removal order: decreasing saliency, ties in a random order
/// drawn from `seed`. CAM maps have wide plateaus (exactly 0 after the ReLU); taking them in index
/// order would remove a block from one corner, which the map never asked for. Saliency must be
/// finite.
pub fn ranks(saliency: &[f32], seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(TIE_STREAM);
    let tie: Vec<u64> = saliency.iter().map(|_| rng.random()).collect();
    let mut order: Vec<usize> = (0..saliency.len()).collect();
    // -0.0 and 0.0 tie.
    order.sort_unstable_by(|&a, &b| {
        saliency[b].partial_cmp(&saliency[a]).expect("finite saliency").then(tie[a].cmp(&tie[b]))
    });
    let mut rank = vec![0; saliency.len()];
    order.iter().enumerate().for_each(|(r, &p)| rank[p] = r);
    rank
}

/// The `⌊percent · n / 100⌋` removed pixels of a map whose pixels have the removal positions `rank`
/// ([`ranks`]): the first for MoRF, the last for LeRF.
pub fn removed(rank: &[usize], percent: u32, order: RoadOrder) -> Vec<bool> {
    let n = rank.len();
    let count = n * percent.min(100) as usize / 100;
    rank.iter()
        .map(|&r| match order {
            RoadOrder::MostRelevantFirst => r < count,
            RoadOrder::LeastRelevantFirst => r >= n - count,
        })
        .collect()
}

/// The in-image neighbours of pixel `p` of an `h x w` plane with their weights.
fn neighbours(p: usize, h: usize, w: usize) -> impl Iterator<Item = (usize, f64)> {
    let (y, x) = ((p / w) as isize, (p % w) as isize);
    NEIGHBOURS.iter().filter_map(move |&((dy, dx), wt)| {
        let (ny, nx) = (y + dy, x + dx);
        (ny >= 0 && nx >= 0 && (ny as usize) < h && (nx as usize) < w).then(|| (ny as usize * w + nx as usize, wt))
    })
}

/// The imputation system of one removal mask, factorised once for every channel. Row `i` (the
/// `i`-th removed pixel in index order) reads `d_i x_i - Σ_j w_ij x_j = Σ_k w_ik v_k`, `j` over
/// removed and `k` over kept neighbours, `d_i` the sum of the in-image neighbours' weights.
///
/// The matrix is banded in index order (a neighbour is at most one image row away), so it is
/// factorised as `L Lᵀ` within its envelope: row `i` of `L` is stored from its first nonzero
/// column `first[i]`, fill-in never leaves the envelope, and the cost is `Σ_i (i - first[i])²`,
/// about `n · (unknowns per image row)²`.
struct System {
    /// The removed pixels, in index order.
    unknowns: Vec<usize>,
    /// Per unknown, its kept neighbours (pixel indices) and weights: the right-hand side.
    known: Vec<Vec<(usize, f64)>>,
    /// Row `i` of `L` covers columns `first[i]..=i`, stored at `offset[i]..offset[i + 1]` of `l`.
    first: Vec<usize>,
    offset: Vec<usize>,
    l: Vec<f64>,
}

impl System {
    fn new(removed: &[bool], h: usize, w: usize) -> Result<System> {
        let unknowns: Vec<usize> = (0..h * w).filter(|&p| removed[p]).collect();
        let mut number = vec![usize::MAX; h * w];
        unknowns.iter().enumerate().for_each(|(i, &p)| number[p] = i);
        let (mut known, mut first, mut offset, mut l) = (Vec::new(), Vec::new(), vec![0], Vec::new());
        for (i, &p) in unknowns.iter().enumerate() {
            let (mut diagonal, mut row, mut k) = (0.0, Vec::new(), Vec::new());
            for (q, wt) in neighbours(p, h, w) {
                diagonal += wt;
                match removed[q] {
                    true if number[q] < i => row.push((number[q], -wt)),
                    true => {}
                    false => k.push((q, wt)),
                }
            }
            let start = row.iter().map(|&(j, _)| j).min().unwrap_or(i);
            let base = l.len();
            l.resize(base + i - start + 1, 0.0);
            row.iter().for_each(|&(j, a)| l[base + j - start] = a);
            l[base + i - start] = diagonal;
            // Row i of L: L_ij = (A_ij - Σ_k L_ik L_jk) / L_jj over the shared envelope, then the pivot.
            for j in start..i {
                let (fj, oj) = (first[j], offset[j]);
                let from = start.max(fj);
                let (a, b) = (&l[base + from - start..base + j - start], &l[oj + from - fj..oj + j - fj]);
                let dot: f64 = a.iter().zip(b).map(|(a, b)| a * b).sum();
                l[base + j - start] = (l[base + j - start] - dot) / l[oj + j - fj];
            }
            let pivot = l[base + i - start] - l[base..base + i - start].iter().map(|v| v * v).sum::<f64>();
            ensure!(pivot > 0.0, "ROAD imputation: the system is not positive definite at pixel {p}");
            l[base + i - start] = pivot.sqrt();
            first.push(start);
            offset.push(l.len());
            known.push(k);
        }
        Ok(System { unknowns, known, first, offset, l })
    }

    /// The imputed values of one channel `plane`: `L y = b`, then `Lᵀ x = y`.
    fn solve(&self, plane: &[f32]) -> Vec<f64> {
        let n = self.unknowns.len();
        let mut x: Vec<f64> = self.known.iter().map(|k| k.iter().map(|&(q, wt)| wt * plane[q] as f64).sum()).collect();
        for i in 0..n {
            let (fi, oi) = (self.first[i], self.offset[i]);
            let dot: f64 = self.l[oi..oi + i - fi].iter().zip(&x[fi..i]).map(|(l, x)| l * x).sum();
            x[i] = (x[i] - dot) / self.l[oi + i - fi];
        }
        for i in (0..n).rev() {
            let (fi, oi) = (self.first[i], self.offset[i]);
            x[i] /= self.l[oi + i - fi];
            let xi = x[i];
            x[fi..i].iter_mut().zip(&self.l[oi..oi + i - fi]).for_each(|(x, l)| *x -= l * xi);
        }
        x
    }
}

/// The image `(C, h, w)` (channel planes, row-major) with its `removed` pixels imputed, plus `noise`
/// times a standard normal draw from `rng` on every imputed value.
pub fn impute(
    image: &[f32],
    (h, w): (usize, usize),
    removed: &[bool],
    noise: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let plane = h * w;
    ensure!(
        plane > 0 && image.len().is_multiple_of(plane) && removed.len() == plane,
        "ROAD imputation: {} values and a mask of {} for {h}x{w} planes",
        image.len(),
        removed.len()
    );
    ensure!(removed.iter().any(|&r| !r), "ROAD imputation: every pixel is removed, nothing to impute from");
    let system = System::new(removed, h, w)?;
    let mut out = image.to_vec();
    for channel in out.chunks_exact_mut(plane) {
        let values = system.solve(channel);
        for (&p, v) in system.unknowns.iter().zip(values) {
            let e: f64 = StandardNormal.sample(rng);
            channel[p] = (v + noise * e) as f32;
        }
    }
    Ok(out)
}

/// The noise generator of an image's `f`-th removal fraction.
pub fn noise_stream(seed: u64, f: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(f as u64);
    rng
}

/// The class probabilities of a batch after each ROAD removal: `probs[i][f]` for image `i` and the
/// `f`-th of `percents`. `x` is the normalised batch `(B, C, H, W)` (imputed in normalised space),
/// `saliency` the maps `(B, H, W)`, `seeds[i]` seeds image `i`'s noise ([`noise_stream`]), so values
/// do not depend on the batch an image is in; step images are scored `batch_size` at a time.
#[allow(clippy::too_many_arguments)]
pub fn road_probabilities(
    score: &mut dyn FnMut(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    saliency: &Tensor,
    classes: &[u32],
    percents: &[u32],
    order: RoadOrder,
    noise: f64,
    seeds: &[u64],
    batch_size: usize,
) -> Result<Vec<Vec<f64>>> {
    let (b, c, h, w) = x.dims4().context("ROAD: the input must be (B, C, H, W)")?;
    ensure!(
        saliency.dims() == [b, h, w],
        "ROAD: saliency shape {:?} does not match the input's (B, H, W) = {:?}",
        saliency.dims(),
        [b, h, w]
    );
    ensure!(
        classes.len() == b && seeds.len() == b,
        "ROAD: {} classes and {} seeds for {b} images",
        classes.len(),
        seeds.len()
    );
    ensure!(batch_size > 0, "ROAD: the batch size must be positive");
    let pixels: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let saliency: Vec<f32> = saliency.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    ensure!(saliency.iter().all(|v| v.is_finite()), "ROAD: the saliency maps contain NaN or infinity");
    let (plane, image) = (h * w, c * h * w);
    let ranks: Vec<Vec<usize>> =
        (0..b).into_par_iter().map(|i| ranks(&saliency[i * plane..][..plane], seeds[i])).collect();
    let jobs: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..percents.len()).map(move |f| (i, f))).collect();
    let mut out = vec![Vec::with_capacity(percents.len()); b];
    for chunk in jobs.chunks(batch_size) {
        // Each (image, fraction) draws its noise from its own stream, so jobs impute in parallel.
        let images: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&(i, f)| {
                let mask = removed(&ranks[i], percents[f], order);
                impute(&pixels[i * image..][..image], (h, w), &mask, noise, &mut noise_stream(seeds[i], f))
            })
            .collect::<Result<_>>()?;
        let data: Vec<f32> = images.concat();
        let batch = Tensor::from_vec(data, (chunk.len(), c, h, w), x.device())?;
        let labels: Vec<u32> = chunk.iter().map(|&(i, _)| classes[i]).collect();
        let probs = class_probabilities(&score(&batch)?, &labels).context("ROAD: scoring imputed images")?;
        chunk.iter().zip(probs).for_each(|(&(i, _), p)| out[i].push(p));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
