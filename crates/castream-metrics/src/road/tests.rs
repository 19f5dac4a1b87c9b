use super::*;
use castream_data::device::cpu;
use rand::Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn fractions_of_a_step() {
    assert_eq!(fractions(10), vec![10, 20, 30, 40, 50, 60, 70, 80, 90]);
    assert_eq!(fractions(30), vec![30, 60, 90]);
    assert_eq!(fractions(50), vec![50]);
}

#[test]
fn removal_takes_decreasing_saliency_and_its_reverse() {
    // Distinct values: decreasing order 1, 3, 0, 2, 4, 5 whatever the seed. Half of 6 pixels is 3.
    let s = [0.5, 1.0, 0.4, 0.9, 0.2, 0.1];
    for seed in [0, 1, 2] {
        let rank = ranks(&s, seed);
        assert_eq!(rank, [2, 0, 3, 1, 4, 5]);
        assert_eq!(removed(&rank, 50, RoadOrder::MostRelevantFirst), [true, true, false, true, false, false]);
        assert_eq!(removed(&rank, 50, RoadOrder::LeastRelevantFirst), [false, false, true, false, true, true]);
        // ⌊0.1 · 6⌋ = 0 pixels.
        assert!(removed(&rank, 10, RoadOrder::MostRelevantFirst).iter().all(|&r| !r));
    }
}

#[test]
fn ties_are_broken_at_random_by_the_seed_not_by_position() {
    // A plateau of 0 (as after a CAM's ReLU) below one salient pixel, -0.0 tying with 0.0.
    let mut s = vec![0.0f32; 400];
    s[7] = 1.0;
    s[8] = -0.0;
    let rank = ranks(&s, 5);
    assert_eq!(rank[7], 0, "the salient pixel first");
    assert_eq!(rank, ranks(&s, 5), "the same seed, the same order");
    assert_ne!(rank, ranks(&s, 6), "another seed, another order of the tie");
    // LeRF at 50% takes 200 tied pixels: spread over the plane, not the last 200 by index, about
    // half of them in each half of it (binomial: 100 ± 10; 40 is 6 standard deviations off).
    let gone = removed(&rank, 50, RoadOrder::LeastRelevantFirst);
    assert_eq!(gone.iter().filter(|&&g| g).count(), 200);
    let first_half = gone[..200].iter().filter(|&&g| g).count();
    assert!((60..=140).contains(&first_half), "{first_half} of 200 removed in the first half");
    assert!(!gone[7]);
}

#[test]
fn one_removed_pixel_is_its_neighbours_weighted_mean() {
    // 3x3 plane of the squares 1, 4, …, 81: the centre's edge neighbours (pixels 1, 3, 5, 7) at 1/6, corners at 1/12.
    let plane: Vec<f32> = (1..=9).map(|v| v as f32 * v as f32).collect();
    let mut mask = vec![false; 9];
    mask[4] = true;
    let out = impute(&plane, (3, 3), &mask, 0.0, &mut rng(0)).unwrap();
    let expected = (4.0 + 16.0 + 36.0 + 64.0) / 6.0 + (1.0 + 9.0 + 49.0 + 81.0) / 12.0;
    assert!((out[4] as f64 - expected).abs() < 1e-4, "{} vs {expected}", out[4]);
    // The top-left corner has 3 neighbours: right and below at 1/6, diagonal at 1/12, renormalised.
    let mut mask = vec![false; 9];
    mask[0] = true;
    let out = impute(&plane, (3, 3), &mask, 0.0, &mut rng(0)).unwrap();
    let expected = (4.0 / 6.0 + 16.0 / 6.0 + 25.0 / 12.0) / (5.0 / 12.0);
    assert!((out[0] as f64 - expected).abs() < 1e-4, "{} vs {expected}", out[0]);
    assert_eq!(&out[1..], &plane[1..], "kept pixels are untouched");
}

#[test]
fn a_linear_ramp_is_imputed_exactly_inside_a_kept_ring() {
    // The symmetric stencil's mean of a linear function is its centre value, so the unique solution
    // inside a kept border is the ramp itself.
    let (h, w) = (9, 11);
    let ramp: Vec<f32> = (0..h * w).map(|p| 0.3 * (p / w) as f32 - 0.7 * (p % w) as f32 + 2.0).collect();
    let mask: Vec<bool> = (0..h * w).map(|p| (1..h - 1).contains(&(p / w)) && (1..w - 1).contains(&(p % w))).collect();
    let out = impute(&ramp, (h, w), &mask, 0.0, &mut rng(0)).unwrap();
    for (a, b) in out.iter().zip(&ramp) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

/// The imputation system built independently as a dense matrix over all pixels (kept pixels
/// pinned by identity rows) and solved by Gaussian elimination with partial pivoting.
fn dense_imputation(plane: &[f32], (h, w): (usize, usize), mask: &[bool]) -> Vec<f64> {
    let n = h * w;
    let mut a = vec![vec![0.0f64; n + 1]; n];
    for p in 0..n {
        let (y, x) = (p / w, p % w);
        if !mask[p] {
            a[p][p] = 1.0;
            a[p][n] = plane[p] as f64;
            continue;
        }
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                if (dy, dx) == (0, 0) || ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                    continue;
                }
                let weight = if dy == 0 || dx == 0 { 1.0 / 6.0 } else { 1.0 / 12.0 };
                a[p][p] += weight;
                a[p][ny as usize * w + nx as usize] -= weight;
            }
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap();
        a.swap(col, pivot);
        for row in 0..n {
            if row != col {
                let f = a[row][col] / a[col][col];
                if f != 0.0 {
                    let pivot_row = a[col].clone();
                    for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                        *v -= f * p;
                    }
                }
            }
        }
    }
    (0..n).map(|p| a[p][n] / a[p][p]).collect()
}

#[test]
fn the_envelope_cholesky_solve_matches_dense_gaussian_elimination() {
    let mut r = rng(7);
    let (h, w) = (7, 6);
    for fraction in [0.2, 0.6, 0.95] {
        let plane: Vec<f32> = (0..h * w).map(|_| r.random_range(-2.0..2.0)).collect();
        let mut mask: Vec<bool> = (0..h * w).map(|_| r.random_bool(fraction)).collect();
        mask[0] = false; // at least one kept pixel
        let solved = impute(&plane, (h, w), &mask, 0.0, &mut rng(0)).unwrap();
        let dense = dense_imputation(&plane, (h, w), &mask);
        for (p, (a, b)) in solved.iter().zip(&dense).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-4, "pixel {p} at {fraction}: {a} vs {b}");
        }
    }
}

#[test]
fn noise_is_added_to_imputed_pixels_only_and_is_seeded() {
    let (h, w) = (32, 32);
    let plane: Vec<f32> = (0..2 * h * w).map(|p| (p % 7) as f32).collect();
    let mask: Vec<bool> = (0..h * w).map(|p| p % 3 != 0).collect();
    let clean = impute(&plane, (h, w), &mask, 0.0, &mut rng(1)).unwrap();
    let noisy = impute(&plane, (h, w), &mask, 0.5, &mut rng(1)).unwrap();
    assert_eq!(noisy, impute(&plane, (h, w), &mask, 0.5, &mut rng(1)).unwrap());
    let diffs: Vec<f64> = (0..2 * h * w).filter(|&p| mask[p % (h * w)]).map(|p| (noisy[p] - clean[p]) as f64).collect();
    assert!((0..2 * h * w).filter(|&p| !mask[p % (h * w)]).all(|p| noisy[p] == plane[p]));
    let std = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
    assert!((std - 0.5).abs() < 0.03, "noise std {std}");
}

#[test]
fn batched_probabilities_equal_a_per_image_loop() {
    let mut r = rng(3);
    let (b, c, h, w, k) = (3, 3, 6, 5, 4);
    let x: Vec<f32> = (0..b * c * h * w).map(|_| r.random_range(-1.0..1.0)).collect();
    let s: Vec<f32> = (0..b * h * w).map(|_| r.random_range(0.0..1.0)).collect();
    let weights: Vec<f32> = (0..c * h * w * k).map(|_| r.random_range(-0.5..0.5)).collect();
    let weights = Tensor::from_vec(weights, (c * h * w, k), &cpu()).unwrap();
    let mut score = |t: &Tensor| t.flatten_from(1)?.matmul(&weights);
    let xt = Tensor::from_vec(x.clone(), (b, c, h, w), &cpu()).unwrap();
    let st = Tensor::from_vec(s.clone(), (b, h, w), &cpu()).unwrap();
    let (classes, seeds, percents) = ([0u32, 3, 1], [11u64, 12, 13], fractions(30));
    let order = RoadOrder::LeastRelevantFirst;
    let got = road_probabilities(&mut score, &xt, &st, &classes, &percents, order, 0.1, &seeds, 4).unwrap();
    for i in 0..b {
        for (f, &pct) in percents.iter().enumerate() {
            let mask = removed(&ranks(&s[i * h * w..][..h * w], seeds[i]), pct, order);
            let img =
                impute(&x[i * c * h * w..][..c * h * w], (h, w), &mask, 0.1, &mut noise_stream(seeds[i], f)).unwrap();
            let logits: Vec<f32> = Tensor::from_vec(img, (1, c * h * w), &cpu())
                .unwrap()
                .matmul(&weights)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
            let p = (logits[classes[i] as usize] as f64).exp() / total;
            assert!((got[i][f] - p).abs() < 1e-6, "image {i}, {pct}%: {} vs {p}", got[i][f]);
        }
    }
}
