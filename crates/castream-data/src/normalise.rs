//! Per-channel normalisation `(x - mean) / std` of images in [0, 1], and its inverse. The
//! explanation images of the metrics (`normalise(denormalise(x) * S)`) need both directions.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalisation {
    /// The ImageNet statistics used by torchvision, timm and the authors' code.
    pub const IMAGENET: Normalisation = Normalisation {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_then_invert_is_identity_and_matches_hand_values() {
        let n = Normalisation { mean: [0.5, 0.25, 0.0], std: [0.5, 0.25, 2.0] };
        let mut x = vec![1.0, 0.0, 0.5, 0.75, 4.0, -2.0];
        n.apply(&mut x);
        assert_eq!(x, vec![1.0, -1.0, 1.0, 2.0, 2.0, -1.0]);
        n.invert(&mut x);
        assert_eq!(x, vec![1.0, 0.0, 0.5, 0.75, 4.0, -2.0]);
    }
}
