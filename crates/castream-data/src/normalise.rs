//! Per-channel normalisation `(x - mean) / std` of images in [0, 1], and its inverse. The
//! explanation images of the metrics (`normalise(denormalise(x) * S)`) need both directions.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalisation {
    /// The ImageNet statistics used by torchvision, timm and the authors' code.
    pub const IMAGENET: Normalisation = Normalisation { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

    /// No change: pixels stay in [0, 1] (images read for drawing).
    pub const IDENTITY: Normalisation = Normalisation { mean: [0.0; 3], std: [1.0; 3] };

    /// Normalises a CHW image with values in [0, 1], in place.
    pub fn apply(&self, chw: &mut [f32]) {
        let plane = chw.len() / 3;
        for (c, channel) in chw.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            channel.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }

    /// Inverse of [`Normalisation::apply`], in place.
    pub fn invert(&self, chw: &mut [f32]) {
        let plane = chw.len() / 3;
        for (c, channel) in chw.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            channel.iter_mut().for_each(|v| *v = *v * s + m);
        }
    }

    /// `(1, 3, 1, 1)` tensors of the mean and standard deviation, for NCHW batches.
    fn stats(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = |v: [f32; 3]| Tensor::from_slice(&v, (1, 3, 1, 1), like.device())?.to_dtype(like.dtype());
        Ok((t(self.mean)?, t(self.std)?))
    }

    /// A normalised NCHW batch back in pixel space [0, 1] (the tensor form of [`Normalisation::invert`]).
    pub fn to_pixels(&self, x: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(x)?;
        x.broadcast_mul(&std)?.broadcast_add(&mean)
    }

    /// A pixel-space NCHW batch normalised (the tensor form of [`Normalisation::apply`]).
    pub fn from_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(pixels)?;
        pixels.broadcast_sub(&mean)?.broadcast_div(&std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;

    #[test]
    fn apply_then_invert_is_identity_and_matches_hand_values() {
        let n = Normalisation { mean: [0.5, 0.25, 0.0], std: [0.5, 0.25, 2.0] };
        let mut x = vec![1.0, 0.0, 0.5, 0.75, 4.0, -2.0];
        n.apply(&mut x);
        assert_eq!(x, vec![1.0, -1.0, 1.0, 2.0, 2.0, -1.0]);
        n.invert(&mut x);
        assert_eq!(x, vec![1.0, 0.0, 0.5, 0.75, 4.0, -2.0]);
    }

    #[test]
    fn tensor_forms_match_the_slice_forms() {
        let n = Normalisation { mean: [0.5, 0.25, 0.0], std: [0.5, 0.25, 2.0] };
        let pixels: Vec<f32> = (0..24).map(|i| i as f32 / 23.0).collect();
        let t = Tensor::from_slice(&pixels, (2, 3, 2, 2), &cpu()).unwrap();
        let normalised: Vec<f32> = n.from_pixels(&t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut want = pixels.clone();
        want.chunks_exact_mut(12).for_each(|img| n.apply(img));
        assert_eq!(normalised, want);
        let back = n.to_pixels(&n.from_pixels(&t).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        back.iter().zip(&pixels).for_each(|(a, b)| assert!((a - b).abs() < 1e-6));
    }
}
