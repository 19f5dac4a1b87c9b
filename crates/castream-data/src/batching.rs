//! Deterministic, seeded batching of dataset indices.
//!
//! candle-datasets' `Batcher` drops the last partial batch; evaluation must see every sample
//! (otherwise the metrics of the paper are computed on a dataset-size-dependent subset), so the
//! partial batch is kept here. Shuffling uses ChaCha8, whose output is specified and portable,
//! so a seed gives the same order on every platform and `rand` version.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// The indices `0..n` in batches of `batch_size`, the last batch holding the remaining
/// `n % batch_size` indices when that is non-zero.
///
/// With `shuffle_seed`, the indices are first shuffled (Fisher–Yates) by a ChaCha8 generator
/// seeded with it; without, they stay in order. Use [`epoch_seed`] to derive a per-epoch seed.
pub fn batch_indices(n: usize, batch_size: usize, shuffle_seed: Option<u64>) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(DataError::Config { field: "batch_size".into(), reason: "must be at least 1".into() });
    }
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(seed) = shuffle_seed {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
}

/// The shuffle seed of epoch `epoch` of a run seeded with `seed`.
///
/// `splitmix64(seed ^ epoch * 0x9E37_79B9_7F4A_7C15)`: multiplying by the odd golden-ratio
/// constant spreads consecutive epochs across all 64 bits before the xor, and the splitmix64
/// finaliser (Steele, Lea & Flood 2014) decorrelates nearby inputs, so neighbouring
/// `(seed, epoch)` pairs give unrelated orders while staying reproducible.
pub fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    let mut z = (seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(batches: &[Vec<usize>]) -> Vec<usize> {
        batches.iter().flatten().copied().collect()
    }

    #[test]
    fn every_index_appears_exactly_once() {
        for seed in [None, Some(0), Some(42)] {
            let batches = batch_indices(103, 10, seed).unwrap();
            let mut all = flatten(&batches);
            all.sort_unstable();
            assert_eq!(all, (0..103).collect::<Vec<_>>(), "seed {seed:?}");
        }
    }

    #[test]
    fn last_partial_batch_is_kept() {
        let batches = batch_indices(103, 10, Some(7)).unwrap();
        assert_eq!(batches.len(), 11);
        assert!(batches[..10].iter().all(|b| b.len() == 10));
        assert_eq!(batches[10].len(), 3);

        let exact = batch_indices(100, 10, None).unwrap();
        assert_eq!(exact.len(), 10);
        assert!(exact.iter().all(|b| b.len() == 10));
    }

    #[test]
    fn same_seed_same_order_different_seed_different_order() {
        let a = batch_indices(1000, 32, Some(1)).unwrap();
        let b = batch_indices(1000, 32, Some(1)).unwrap();
        let c = batch_indices(1000, 32, Some(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(flatten(&a), flatten(&c));
        assert_ne!(flatten(&a), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn no_seed_keeps_identity_order() {
        let batches = batch_indices(25, 4, None).unwrap();
        assert_eq!(flatten(&batches), (0..25).collect::<Vec<_>>());
        assert_eq!(batches[0], vec![0, 1, 2, 3]);
        assert_eq!(batches[6], vec![24]);
    }

    #[test]
    fn empty_dataset_gives_no_batches() {
        assert!(batch_indices(0, 8, Some(3)).unwrap().is_empty());
    }

    #[test]
    fn zero_batch_size_is_a_config_error() {
        match batch_indices(10, 0, None) {
            Err(DataError::Config { field, .. }) => assert_eq!(field, "batch_size"),
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn epoch_seeds_differ_per_epoch_and_are_reproducible() {
        let seeds: Vec<u64> = (0..100).map(|e| epoch_seed(42, e)).collect();
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len());
        assert_eq!(seeds, (0..100).map(|e| epoch_seed(42, e)).collect::<Vec<_>>());
        assert_ne!(epoch_seed(1, 0), epoch_seed(2, 0));
        assert_ne!(
            batch_indices(500, 50, Some(epoch_seed(42, 0))).unwrap(),
            batch_indices(500, 50, Some(epoch_seed(42, 1))).unwrap()
        );
    }
}
