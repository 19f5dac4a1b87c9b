//! The training-time augmentation of the paper profile: torchvision's `RandomResizedCrop` followed
//! by `RandomHorizontalFlip`, the ImageNet training defaults of torchvision and timm, so streams
//! trained here see the same distribution of crops as the authors'. Every image draws from its own
//! seeded ChaCha8 generator, so a batch is reproducible whatever the thread scheduling.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_folder::{normalised_chw, read_rgb, ImageList};
use crate::normalise::Normalisation;
use crate::valid::{in_range, OutOfRange};

/// torchvision's RandomResizedCrop + RandomHorizontalFlip (the timm/torchvision ImageNet training defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainTransform {
    /// Side of the square output.
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's.
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio `w / h`, sampled log-uniformly so that `r` and `1 / r` are
    /// equally likely.
    pub ratio: [f64; 2],
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
}

impl Default for TrainTransform {
    fn default() -> Self {
        TrainTransform { size: 224, scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0], hflip: true }
    }
}

/// Attempts at a crop that fits before the central fallback (torchvision's constant).
const ATTEMPTS: usize = 10;

/// Largest output side: beyond it a batch of a few images no longer fits in memory.
const MAX_SIZE: u32 = 4096;

/// Python's `round`, ties to even, as torchvision's `int(round(...))`.
fn round(x: f64) -> u32 {
    x.round_ties_even() as u32
}

/// `torch.empty(1).uniform_(lo, hi)`: uniform in `[lo, hi)`, `lo` when the range is a point.
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if lo == hi {
        lo
    } else {
        rng.random_range(lo..hi)
    }
}

impl TrainTransform {
    /// Valid ranges: size 1..=4096; 0 < scale[0] <= scale[1] <= 1; 0 < ratio[0] <= ratio[1], all
    /// finite. The error names the key (`size`, `scale`, `ratio`), the value, the range and a fix.
    pub fn validate(&self) -> std::result::Result<(), OutOfRange> {
        in_range("size", self.size as usize, 1..=MAX_SIZE as usize, 224)?;
        let pair = |[a, b]: [f64; 2]| format!("[{a:?}, {b:?}]");
        let [s0, s1] = self.scale;
        if !(s0.is_finite() && s1.is_finite() && 0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            let valid = "two finite area fractions with 0 < scale[0] <= scale[1] <= 1";
            return Err(OutOfRange::new("scale", pair(self.scale), valid, "[0.08, 1.0]"));
        }
        let [r0, r1] = self.ratio;
        if !(r0.is_finite() && r1.is_finite() && 0.0 < r0 && r0 <= r1) {
            let valid = "two finite aspect ratios (w/h) with 0 < ratio[0] <= ratio[1]";
            return Err(OutOfRange::new("ratio", pair(self.ratio), valid, "[0.75, 1.3333333333333333]"));
        }
        Ok(())
    }

    /// torchvision `RandomResizedCrop.get_params` for an image `width x height`: (top, left, h, w).
    ///
    /// Up to ten attempts draw an area fraction in `scale` and a log-uniform aspect ratio in
    /// `ratio` and keep the first crop that fits, at a uniform position; when none fits, the
    /// largest central crop whose aspect ratio is clamped to `ratio`. The image must have pixels
    /// (decoding refuses an empty one).
    pub fn crop_params(&self, width: u32, height: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
        let area = f64::from(width) * f64::from(height);
        let log_ratio = (self.ratio[0].ln(), self.ratio[1].ln());
        for _ in 0..ATTEMPTS {
            let target_area = area * uniform(rng, self.scale[0], self.scale[1]);
            let aspect = uniform(rng, log_ratio.0, log_ratio.1).exp();
            let w = round((target_area * aspect).sqrt());
            let h = round((target_area / aspect).sqrt());
            if 0 < w && w <= width && 0 < h && h <= height {
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return (top, left, h, w);
            }
        }
        let in_ratio = f64::from(width) / f64::from(height);
        // At least 1: torchvision would produce an empty crop for an extreme ratio on a tiny image.
        let (w, h) = if in_ratio < self.ratio[0] {
            (width, round(f64::from(width) / self.ratio[0]).clamp(1, height))
        } else if in_ratio > self.ratio[1] {
            (round(f64::from(height) * self.ratio[1]).clamp(1, width), height)
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }

    /// Crop ([`TrainTransform::crop_params`]), resize to `size x size` bilinearly (PIL's and
    /// torchvision's filter), then mirror with probability 1/2 when `hflip`. The crop is drawn
    /// before the flip, so turning `hflip` off keeps every seed's crop.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (top, left, h, w) = self.crop_params(image.width(), image.height(), rng);
        let crop = imageops::crop_imm(image, left, top, w, h);
        let mut out = imageops::resize(&*crop, self.size, self.size, FilterType::Triangle);
        if self.hflip && rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }
}

/// Refuses an invalid transform as a configuration error naming the key.
fn checked(transform: &TrainTransform) -> Result<()> {
    transform.validate().map_err(|e| DataError::Config { field: "train_transform".into(), reason: e.to_string() })
}

/// Decodes `path` (as `image_folder::load_image` does: RGB, error naming the file), applies
/// `transform` with a ChaCha8Rng seeded by `seed`, returns CHW f32 in [0,1], normalised with `norm`.
pub fn load_train_image(path: &Path, transform: &TrainTransform, seed: u64, norm: &Normalisation) -> Result<Vec<f32>> {
    checked(transform)?;
    let image = read_rgb(path)?;
    let augmented = transform.apply(&image, &mut ChaCha8Rng::seed_from_u64(seed));
    Ok(normalised_chw(&augmented, norm))
}

impl ImageList {
    /// Images `indices` decoded in parallel (rayon) with one seed per image (`seeds[k]` for
    /// `indices[k]`), as a (B,3,S,S) f32 tensor and (B,) u32 labels; on failure the error of the
    /// first failing image in `indices` order.
    pub fn load_train_batch(
        &self,
        indices: &[usize],
        transform: &TrainTransform,
        seeds: &[u64],
        norm: &Normalisation,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        checked(transform)?;
        self.check_indices(indices)?;
        if seeds.len() != indices.len() {
            return Err(DataError::Config {
                field: "seeds".into(),
                reason: format!(
                    "{} seeds for {} images; expected one seed per index (seeds[k] for indices[k])",
                    seeds.len(),
                    indices.len()
                ),
            });
        }
        let decoded: Vec<Result<Vec<f32>>> = indices
            .par_iter()
            .zip(seeds.par_iter())
            .map(|(&i, &seed)| load_train_image(&self.entries[i].path, transform, seed, norm))
            .collect();
        self.stack_batch(indices, decoded, transform.size, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;
    use crate::image_folder::ImageEntry;
    use image::Rgb;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// An image without symmetry, so a crop, a shift or a mirror changes its bytes.
    fn noise(width: u32, height: u32, seed: u64) -> RgbImage {
        let mut r = rng(seed);
        RgbImage::from_fn(width, height, |_, _| Rgb([r.random(), r.random(), r.random()]))
    }

    /// torchvision's fallback, written out independently of `crop_params`.
    fn central_fallback(t: &TrainTransform, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let (wf, hf) = (f64::from(width), f64::from(height));
        let (w, h) = if wf / hf < t.ratio[0] {
            (width, ((wf / t.ratio[0]).round_ties_even() as u32).max(1))
        } else if wf / hf > t.ratio[1] {
            (((hf * t.ratio[1]).round_ties_even() as u32).max(1), height)
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }

    #[test]
    fn crop_params_in_bounds_with_scale_and_ratio_respected() {
        let configs = [
            TrainTransform::default(),
            TrainTransform { scale: [0.2, 0.5], ratio: [1.5, 2.5], ..TrainTransform::default() },
            TrainTransform { scale: [0.6, 0.6], ratio: [0.3, 0.4], ..TrainTransform::default() },
        ];
        let mut sizes = rng(99);
        for t in &configs {
            let mut sampled = 0;
            for seed in 0..400 {
                let (width, height) = (sizes.random_range(1..=600u32), sizes.random_range(1..=600u32));
                let (top, left, h, w) = t.crop_params(width, height, &mut rng(seed));
                assert!(h >= 1 && w >= 1, "{t:?} {width}x{height}: empty crop {h}x{w}");
                assert!(top + h <= height && left + w <= width, "{t:?} {width}x{height}: ({top}, {left}, {h}, {w})");
                if (top, left, h, w) == central_fallback(t, width, height) {
                    continue;
                }
                sampled += 1;
                // w and h are each within 1/2 of the exact sqrt(A * r) and sqrt(A / r).
                let (wf, hf, area) = (f64::from(w), f64::from(h), f64::from(width) * f64::from(height));
                assert!((wf + 0.5) * (hf + 0.5) / area >= t.scale[0], "{t:?} {width}x{height}: {h}x{w} too small");
                assert!((wf - 0.5) * (hf - 0.5) / area <= t.scale[1], "{t:?} {width}x{height}: {h}x{w} too large");
                assert!((wf + 0.5) / (hf - 0.5) >= t.ratio[0], "{t:?} {width}x{height}: {h}x{w} too narrow");
                assert!((wf - 0.5) / (hf + 0.5) <= t.ratio[1], "{t:?} {width}x{height}: {h}x{w} too wide");
            }
            // Sizes are drawn independently of the ratio, so narrow ratio ranges often fall back.
            assert!(sampled >= 50, "{t:?}: only {sampled} of 400 crops were sampled rather than the fallback");
        }
    }

    #[test]
    fn fallback_is_torchvision_central_crop() {
        let t = TrainTransform { scale: [0.9, 1.0], ratio: [1.0, 1.0], ..TrainTransform::default() };
        for seed in 0..20 {
            // Too wide: h = height, w = round(height * ratio[1]) = 10, left = (1000 - 10) / 2.
            assert_eq!(t.crop_params(1000, 10, &mut rng(seed)), (0, 495, 10, 10));
            // Too tall: w = width, h = round(width / ratio[0]) = 10, top = (1001 - 10) / 2.
            assert_eq!(t.crop_params(10, 1001, &mut rng(seed)), (495, 0, 10, 10));
        }
        // ratio[1] = 2.5 on a 1000x10 image: w = 25, left = (1000 - 25) / 2 = 487.
        let t = TrainTransform { scale: [0.9, 1.0], ratio: [1.5, 2.5], ..TrainTransform::default() };
        assert_eq!(t.crop_params(1000, 10, &mut rng(3)), (0, 487, 10, 25));
        // Within the ratio range but every attempt rounds to an empty crop: the whole image.
        let t = TrainTransform { scale: [0.01, 0.01], ratio: [1.0, 2.0], ..TrainTransform::default() };
        assert_eq!(t.crop_params(3, 2, &mut rng(5)), (0, 0, 2, 3));
    }

    #[test]
    fn full_scale_at_image_ratio_is_the_whole_image() {
        for (width, height) in [(1, 1), (7, 5), (64, 48), (31, 97), (500, 333)] {
            let r = f64::from(width) / f64::from(height);
            let t = TrainTransform { size: 16, scale: [1.0, 1.0], ratio: [r, r], hflip: false };
            let image = noise(width, height, 1);
            for seed in 0..10 {
                assert_eq!(t.crop_params(width, height, &mut rng(seed)), (0, 0, height, width));
                let whole = imageops::resize(&image, 16, 16, FilterType::Triangle);
                assert_eq!(t.apply(&image, &mut rng(seed)), whole, "{width}x{height}");
            }
        }
    }

    #[test]
    fn same_seed_same_bytes_different_seeds_different_crops() {
        let t = TrainTransform { size: 32, ..TrainTransform::default() };
        let image = noise(120, 90, 2);
        for seed in 0..10 {
            assert_eq!(t.apply(&image, &mut rng(seed)).into_raw(), t.apply(&image, &mut rng(seed)).into_raw());
        }
        let params: std::collections::HashSet<_> = (0..50).map(|s| t.crop_params(120, 90, &mut rng(s))).collect();
        assert!(params.len() >= 45, "50 seeds gave only {} distinct crops", params.len());
        let outputs: std::collections::HashSet<_> = (0..50).map(|s| t.apply(&image, &mut rng(s)).into_raw()).collect();
        assert!(outputs.len() >= 45, "50 seeds gave only {} distinct images", outputs.len());
        assert_ne!(t.crop_params(120, 90, &mut rng(1)), t.crop_params(120, 90, &mut rng(2)));
    }

    #[test]
    fn hflip_mirrors_the_same_crop_about_half_the_time() {
        let flip = TrainTransform { size: 24, ..TrainTransform::default() };
        let plain = TrainTransform { hflip: false, ..flip };
        let image = noise(80, 60, 3);
        let (mut kept, mut mirrored) = (0, 0);
        for seed in 0..200 {
            let out = flip.apply(&image, &mut rng(seed));
            let base = plain.apply(&image, &mut rng(seed));
            let mirror = imageops::flip_horizontal(&base);
            assert_ne!(base, mirror, "seed {seed}: the crop is symmetric, the test cannot tell");
            if out == base {
                kept += 1;
            } else if out == mirror {
                mirrored += 1;
            } else {
                panic!("seed {seed}: neither the unflipped crop nor its mirror");
            }
        }
        assert!((60..=140).contains(&kept) && kept + mirrored == 200, "kept {kept}, mirrored {mirrored}");
    }

    #[test]
    fn load_train_batch_matches_per_image_loads_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = [("a.png", 50, 40), ("b.jpg", 33, 61), ("c.png", 20, 20), ("d.jpeg", 90, 30)];
        let mut entries = Vec::new();
        for (k, &(name, w, h)) in files.iter().enumerate() {
            let path = dir.path().join(name);
            noise(w, h, 10 + k as u64).save(&path).unwrap();
            entries.push(ImageEntry { path, label: 7 * k + 1 });
        }
        let list = ImageList { entries, classes: Vec::new() };
        let t = TrainTransform { size: 12, ..TrainTransform::default() };
        let norm = Normalisation::IMAGENET;
        let (indices, seeds) = ([3, 0, 2, 1], [11, 12, 13, 14]);

        let (images, labels) = list.load_train_batch(&indices, &t, &seeds, &norm, &cpu()).unwrap();
        assert_eq!(images.dims(), &[4, 3, 12, 12]);
        assert_eq!(images.dtype(), candle_core::DType::F32);
        assert_eq!(labels.to_vec1::<u32>().unwrap(), vec![22, 1, 15, 8]);
        for (b, (&i, &seed)) in indices.iter().zip(&seeds).enumerate() {
            let got = images.get(b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let path = &list.entries[i].path;
            assert_eq!(got, load_train_image(path, &t, seed, &norm).unwrap(), "{}", path.display());
            // Independently: decode, augment with the seed, scale to [0, 1] and normalise.
            let decoded = image::open(path).unwrap().to_rgb8();
            let out = t.apply(&decoded, &mut rng(seed));
            let plane = 12 * 12;
            for (p, pixel) in out.pixels().enumerate() {
                for c in 0..3 {
                    let want = (f32::from(pixel.0[c]) / 255.0 - norm.mean[c]) / norm.std[c];
                    assert!((got[c * plane + p] - want).abs() < 1e-6, "{}: channel {c}", path.display());
                }
            }
        }

        let mut broken = list.clone();
        broken.entries.push(ImageEntry { path: dir.path().join("missing1.png"), label: 0 });
        broken.entries.push(ImageEntry { path: dir.path().join("missing2.png"), label: 0 });
        for _ in 0..5 {
            let err = broken.load_train_batch(&[0, 5, 1, 4], &t, &[1, 2, 3, 4], &norm, &cpu()).unwrap_err();
            assert!(matches!(err, DataError::Io { ref path, .. } if path.ends_with("missing2.png")), "{err}");
            assert!(err.to_string().contains("missing2.png"), "{err}");
        }
        let err = list.load_train_batch(&[0, 1], &t, &[1], &norm, &cpu()).unwrap_err();
        assert!(matches!(err, DataError::Config { ref field, .. } if field == "seeds"), "{err}");
        let err = list.load_train_batch(&[0, 4], &t, &[1, 2], &norm, &cpu()).unwrap_err();
        assert!(matches!(err, DataError::Config { ref field, .. } if field == "indices"), "{err}");
    }

    #[test]
    fn validate_refuses_bad_values_naming_the_key() {
        let d = TrainTransform::default();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!((d.size, d.scale, d.ratio, d.hflip), (224, [0.08, 1.0], [0.75, 4.0 / 3.0], true));
        assert_eq!(TrainTransform { size: 1, scale: [1.0, 1.0], ratio: [2.0, 2.0], ..d }.validate(), Ok(()));
        let cases = [
            (TrainTransform { size: 0, ..d }, "size"),
            (TrainTransform { size: 4097, ..d }, "size"),
            (TrainTransform { scale: [0.0, 1.0], ..d }, "scale"),
            (TrainTransform { scale: [0.5, 0.4], ..d }, "scale"),
            (TrainTransform { scale: [0.1, 1.5], ..d }, "scale"),
            (TrainTransform { scale: [f64::NAN, 1.0], ..d }, "scale"),
            (TrainTransform { ratio: [0.0, 1.0], ..d }, "ratio"),
            (TrainTransform { ratio: [2.0, 1.0], ..d }, "ratio"),
            (TrainTransform { ratio: [1.0, f64::INFINITY], ..d }, "ratio"),
        ];
        for (t, key) in cases {
            let e = t.validate().unwrap_err();
            assert_eq!(e.key, key, "{t:?}");
            assert!(e.to_string().starts_with(&format!("{key} = ")), "{e}");
        }
        let e = TrainTransform { scale: [0.5, 0.4], ..d }.validate().unwrap_err();
        assert_eq!(e.to_string(), "scale = [0.5, 0.4]: out of range; valid: two finite area fractions with 0 < scale[0] <= scale[1] <= 1. Fix: e.g. scale = [0.08, 1.0]");
        let e = TrainTransform { size: 0, ..d }.validate().unwrap_err();
        assert_eq!(e.to_string(), "size = 0: out of range; valid: 1 to 4096. Fix: e.g. size = 224");

        let err =
            load_train_image(Path::new("unused.png"), &TrainTransform { size: 0, ..d }, 0, &Normalisation::IMAGENET)
                .unwrap_err();
        assert!(matches!(err, DataError::Config { .. }) && err.to_string().contains("size = 0"), "{err}");
    }

    #[test]
    fn serde_fills_defaults_and_refuses_unknown_keys() {
        let t: TrainTransform = serde_json::from_str(r#"{"size": 160}"#).unwrap();
        assert_eq!(t, TrainTransform { size: 160, ..TrainTransform::default() });
        assert!(serde_json::from_str::<TrainTransform>(r#"{"sise": 160}"#).is_err());
    }
}
