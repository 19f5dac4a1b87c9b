//! The MLP half of a ConvNeXt block in evaluation, on channels-first tensors:
//! `out = x + γ ⊙ (W₂ · GELU(W₁ · y + b₁) + b₂)` at every pixel, `x` the block's input and `y` its
//! normalised depthwise convolution, both `(B, C, H, W)`.
//!
//! timm permutes `y` to channels-last for its two linear layers and back for the residual: two
//! transposing passes, and the hidden layer (4·C channels, the block's widest tensor) written out
//! and read back. Here a per-pixel linear layer on a channels-first image is a GEMM with the pixels
//! as columns (`W · Y`, `Y` the `C x HW` image), so nothing is transposed; each image is taken in
//! blocks of pixels (maps smaller than a block several images at a time, gathered into one panel)
//! whose hidden activations stay in cache from the first GEMM through the GELU to the second,
//! whose output block is scaled and added to the residual while in cache.
//! The arithmetic is timm's, in its order. Evaluation only: nothing is kept for a backward (when a
//! gradient is tracked, `mlp_train.rs` runs instead).

use crate::cpu::{f32_slice, par_build, sgemm, with_scratch, Mat};
use crate::gelu::gelu_in_place;
use candle_core::{bail, Result, Storage, Tensor};
use gemm::Parallelism;

/// Hidden activations per block of pixels: 32K floats (128 KB), so that they stay in cache...
const BLOCK_FLOATS: usize = 1 << 15;
/// ... but at least 64 pixels, so that packing the weights (once per GEMM) stays a small part of
/// the GEMMs at ConvNeXt-T's widths (measured: 64 and 128 alike, 256 slower on the quick network).
const MIN_COLUMNS: usize = 64;

/// The parameters of one block's MLP, `W₁ (4C x C)`, `b₁`, `W₂ (C x 4C)`, `b₂`, `γ`.
pub struct MlpParams<'a> {
    pub w1: &'a Tensor,
    pub b1: &'a Tensor,
    pub w2: &'a Tensor,
    pub b2: &'a Tensor,
    pub gamma: &'a Tensor,
}

/// `(B, C, H, W, hidden)` of matching operands, or an error naming every shape.
pub(crate) fn dims(x: &Tensor, y: &Tensor, p: &MlpParams) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, c, h, w) = x.dims4()?;
    let hidden = p.w1.dims2()?.0;
    if y.dims() != x.dims()
        || p.w1.dims() != [hidden, c]
        || p.w2.dims() != [c, hidden]
        || p.b1.dims() != [hidden]
        || p.b2.dims() != [c]
        || p.gamma.dims() != [c]
    {
        bail!(
            "convnext_mlp: x {:?}, y {:?}, W1 {:?}, b1 {:?}, W2 {:?}, b2 {:?}, gamma {:?} do not match",
            x.dims(),
            y.dims(),
            p.w1.dims(),
            p.b1.dims(),
            p.w2.dims(),
            p.b2.dims(),
            p.gamma.dims()
        )
    }
    Ok((b, c, h, w, hidden))
}

/// `x + γ ⊙ (W₂ · GELU(W₁ · y + b₁) + b₂)` per pixel of channels-first `x`, `y`.
pub(crate) fn forward(x: &Tensor, y: &Tensor, p: &MlpParams) -> Result<Tensor> {
    let (b, c, h, w, hidden) = dims(x, y, p)?;
    let tensors = [x, y, p.w1, p.b1, p.w2, p.b2, p.gamma].map(|t| t.contiguous());
    let tensors: Vec<Tensor> = tensors.into_iter().collect::<Result<_>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices: Vec<&[f32]> = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(s) => f32_slice(s, layout, "convnext_mlp"),
            _ => bail!("convnext_mlp: expected tensors on the CPU"),
        })
        .collect::<Result<_>>()?;
    let [xs, ys, w1, b1, w2, b2, gamma] = slices[..] else { unreachable!("seven tensors") };

    let hw = h * w;
    let cols = (BLOCK_FLOATS / hidden.max(1)).max(MIN_COLUMNS);
    // Maps smaller than a block are taken several images at a time, gathered into one panel.
    let group = if hw == 0 { 1 } else { cols.div_ceil(hw).max(1) };
    let out = par_build(b * c * hw, group * c * hw, |i, blank| {
        let at = i * group * c * hw;
        let (x, y) = (&xs[at..], &ys[at..at + blank.len()]);
        let images = blank.len() / (c * hw).max(1);
        // The residual first (in cache for the blocks below), the branch added to it.
        let mut out = blank.rows_from(hw, |row| (&x[row * hw..], 0.0));
        let block = if images > 1 { images * hw } else { cols.min(hw) };
        with_scratch((hidden + 2 * c) * block, |scratch| {
            let (hid, rest) = scratch.split_at_mut(hidden * block);
            let (branch, panel) = rest.split_at_mut(c * block);
            let mlp = |pixels: Mat, n: usize, hid: &mut [f32], branch: &mut [f32]| {
                let none = Parallelism::None;
                let (hid, branch) = (&mut hid[..hidden * n], &mut branch[..c * n]);
                hid.chunks_mut(n).zip(b1).for_each(|(row, &b)| row.fill(b));
                sgemm(hidden, n, c, hid, n, true, Mat { data: w1, rs: c, cs: 1 }, pixels, none);
                gelu_in_place(hid);
                let hid = Mat { data: hid, rs: n, cs: 1 };
                sgemm(c, n, hidden, branch, n, false, Mat { data: w2, rs: hidden, cs: 1 }, hid, none);
            };
            // `out[image, ch, p0 + j] += γ[ch] · (branch[ch, col + j] + b₂[ch])` for the `len` pixels.
            let mut add = |branch: &[f32], n: usize, image: usize, p0: usize, col: usize, len: usize| {
                for ch in 0..c {
                    let (g, bias, dst) = (gamma[ch], b2[ch], image * c * hw + ch * hw + p0);
                    let src = &branch[ch * n + col..][..len];
                    out[dst..dst + len].iter_mut().zip(src).for_each(|(o, &r)| *o += g * (r + bias));
                }
            };
            if images > 1 {
                let n = images * hw;
                for (ch, row) in panel[..c * n].chunks_mut(n).enumerate() {
                    for (j, seg) in row.chunks_mut(hw).enumerate() {
                        seg.copy_from_slice(&y[j * c * hw + ch * hw..][..hw]);
                    }
                }
                mlp(Mat { data: &panel[..c * n], rs: n, cs: 1 }, n, hid, branch);
                (0..images).for_each(|j| add(branch, n, j, 0, j * hw, hw));
            } else {
                for p0 in (0..hw).step_by(block.max(1)) {
                    let n = block.min(hw - p0);
                    mlp(Mat { data: &y[p0..], rs: hw, cs: 1 }, n, hid, branch);
                    add(branch, n, 0, p0, 0, n);
                }
            }
        });
        out
    });
    Tensor::from_vec(out, (b, c, h, w), x.device())
}
