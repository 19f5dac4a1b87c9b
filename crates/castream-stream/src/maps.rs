//! Raw attention as saliency (METHOD.md §2): each block's attention over its stage's positions,
//! upsampled to the input and min-max normalised per image, alone or combined across blocks.

use candle_core::{Result, Tensor, D};
use castream_kernels::Kernels;
use serde::{Deserialize, Serialize};

use crate::stream::StreamOutput;

/// Which raw attention to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionSelect {
    /// The block on stage tap `l` (CA-l).
    Block(usize),
    /// The last block (CA-4 with the default taps): the paper's figures' default here.
    #[default]
    Last,
    /// The element-wise product of every block's upsampled, normalised map.
    Product,
    /// The mean of every block's upsampled, normalised map.
    Mean,
}

/// Per-image min-max normalisation of `(B, H, W)` maps to [0, 1]: `(S - min) / (max - min + eps)`.
/// A constant map becomes zeros, never NaN. The extremes are taken at one pixel each (the first),
/// as torch's `max(dim)`, so a gradient through them reaches that pixel only: an upsampled map
/// ties whole blocks at its corner values, and a reduction's gradient would reach every tied
/// pixel, multiplying the derivative by the block's size (Opti-CAM optimises through this).
pub fn minmax_normalise(maps: &Tensor) -> Result<Tensor> {
    let flat = maps.flatten_from(1)?;
    let min = flat.gather(&flat.argmin_keepdim(D::Minus1)?, D::Minus1)?;
    let max = flat.gather(&flat.argmax_keepdim(D::Minus1)?, D::Minus1)?;
    let range = ((max - &min)? + 1e-7)?;
    flat.broadcast_sub(&min)?.broadcast_div(&range)?.reshape(maps.shape())
}

/// The softmax attention of `select`, head-averaged, bilinearly upsampled to `h x w` and
/// normalised per image: `(B, h, w)` in [0, 1].
pub fn attention_map(out: &StreamOutput, select: AttentionSelect, h: usize, w: usize) -> Result<Tensor> {
    let upsampled = |i: usize| -> Result<Tensor> {
        let a = out.attention[i].weights.mean_keepdim(1)?; // (B, 1, h_l, w_l)
        minmax_normalise(&castream_kernels::upsample_bilinear2d(&a, h, w, Kernels::Fast)?.squeeze(1)?)
    };
    let n = out.attention.len();
    match select {
        AttentionSelect::Last => upsampled(n - 1),
        AttentionSelect::Block(tap) => match out.attention.iter().position(|a| a.tap == tap) {
            Some(i) => upsampled(i),
            None => candle_core::bail!("the stream has no block on stage {tap}"),
        },
        AttentionSelect::Product => {
            let mut acc = upsampled(0)?;
            for i in 1..n {
                acc = (acc * upsampled(i)?)?;
            }
            minmax_normalise(&acc)
        }
        AttentionSelect::Mean => {
            let mut acc = upsampled(0)?;
            for i in 1..n {
                acc = (acc + upsampled(i)?)?;
            }
            minmax_normalise(&(acc / n as f64)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Attention;
    use castream_data::device::cpu;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn minmax_by_hand_and_constant_maps_give_zeros() {
        let maps = Tensor::from_vec(vec![1f32, 3.0, 2.0, 5.0, 4.0, 4.0, 4.0, 4.0], (2, 2, 2), &cpu()).unwrap();
        let got = values(&minmax_normalise(&maps).unwrap());
        let want = [0.0, 0.5, 0.25, 1.0, 0.0, 0.0, 0.0, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    /// A stream output with two blocks on 2x2 positions, one image, one head.
    fn output() -> StreamOutput {
        let att = |tap, v: Vec<f32>| {
            let t = Tensor::from_vec(v, (1, 1, 2, 2), &cpu()).unwrap();
            Attention { tap, logits: t.clone(), weights: t }
        };
        StreamOutput {
            token: Tensor::zeros((1, 1), candle_core::DType::F32, &cpu()).unwrap(),
            attention: vec![att(3, vec![0.1, 0.2, 0.3, 0.4]), att(4, vec![0.4, 0.1, 0.2, 0.3])],
            queries: Vec::new(),
        }
    }

    #[test]
    fn blocks_and_combinations_match_a_hand_computation() {
        let out = output();
        // At the native size upsampling is the identity: each block is just min-max normalised.
        let last = values(&attention_map(&out, AttentionSelect::Last, 2, 2).unwrap());
        let block3 = values(&attention_map(&out, AttentionSelect::Block(3), 2, 2).unwrap());
        let expect = |v: [f32; 4]| v.map(|x| (x - 0.1) / (0.3 + 1e-7));
        for (g, w) in
            last.iter().zip(expect([0.4, 0.1, 0.2, 0.3])).chain(block3.iter().zip(expect([0.1, 0.2, 0.3, 0.4])))
        {
            assert!((g - w).abs() < 1e-5);
        }
        // Normalised blocks A = [0, 1/3, 2/3, 1], B = [1, 0, 1/3, 2/3].
        // A * B = [0, 0, 2/9, 2/3], normalised [0, 0, 1/3, 1]; (A + B) / 2 = [1/2, 1/6, 1/2, 5/6], normalised [1/2, 0, 1/2, 1].
        let product = values(&attention_map(&out, AttentionSelect::Product, 2, 2).unwrap());
        let mean = values(&attention_map(&out, AttentionSelect::Mean, 2, 2).unwrap());
        for (g, w) in product.iter().zip([0.0, 0.0, 1.0 / 3.0, 1.0]).chain(mean.iter().zip([0.5, 0.0, 0.5, 1.0])) {
            assert!((g - w).abs() < 1e-4, "{product:?} {mean:?}");
        }
        assert!(attention_map(&out, AttentionSelect::Block(0), 2, 2).is_err());
        assert_eq!(attention_map(&out, AttentionSelect::Last, 8, 6).unwrap().dims(), &[1, 8, 6]);
    }
}
