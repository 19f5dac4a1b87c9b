//! The MLP half of a ConvNeXt block in evaluation, on channels-first tensors:
//! `out = x + γ ⊙ (W₂ · GELU(W₁ · y + b₁) + b₂)` at every pixel, `x` the block's input and `y` its
//! normalised depthwise convolution, both `(B, C, H, W)`.
//!
//! timm permutes `y` to channels-last for its two linear layers and back for the residual: two
//! transposing passes, and the hidden layer (4·C channels, the block's widest tensor) written out
//! and read back. Here a per-pixel linear layer on a channels-first image is a GEMM with the pixels
//! as columns (`W · Y`, `Y` the `C x HW` image), so nothing is transposed; each image is taken in
//! blocks of pixels whose hidden activations (~128 KB) stay in cache from the first GEMM through
//! the GELU to the second, whose output block is scaled and added to the residual while in cache.
//! The arithmetic is timm's, in its order. Evaluation only: nothing is kept for a backward (the
//! facade composes the differentiable ops when a gradient is tracked).

use crate::cpu::{f32_slice, par_build, sgemm, with_scratch, Mat};
use crate::gelu::gelu_in_place;
use candle_core::{bail, Result, Storage, Tensor};
use gemm::Parallelism;

/// Hidden activations per pixel block: 32K floats.
const BLOCK_FLOATS: usize = 1 << 15;

/// The parameters of one block's MLP, `W₁ (4C x C)`, `b₁`, `W₂ (C x 4C)`, `b₂`, `γ`.
pub struct MlpParams<'a> {
    pub w1: &'a Tensor,
    pub b1: &'a Tensor,
    pub w2: &'a Tensor,
    pub b2: &'a Tensor,
    pub gamma: &'a Tensor,
}

/// `x + γ ⊙ (W₂ · GELU(W₁ · y + b₁) + b₂)` per pixel of channels-first `x`, `y`.
pub(crate) fn forward(x: &Tensor, y: &Tensor, p: &MlpParams) -> Result<Tensor> {
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
    let block = (BLOCK_FLOATS / hidden).clamp(16, hw.max(16)).min(hw.max(1));
    let out = par_build(b * c * hw, c * hw, |i, blank| {
        let (x, y) = (&xs[i * c * hw..], &ys[i * c * hw..][..c * hw]);
        // The residual first (one image: in cache for the blocks below), the branch added to it.
        let mut out = blank.rows_from(hw, |ch| (&x[ch * hw..], 0.0));
        with_scratch((hidden + c) * block, |scratch| {
            let (hid, branch) = scratch.split_at_mut(hidden * block);
            for p0 in (0..hw).step_by(block) {
                let n = block.min(hw - p0);
                let (hid, branch) = (&mut hid[..hidden * n], &mut branch[..c * n]);
                hid.chunks_mut(n).zip(b1).for_each(|(row, &b)| row.fill(b));
                let none = Parallelism::None;
                let pixels = Mat { data: &y[p0..], rs: hw, cs: 1 };
                sgemm(hidden, n, c, hid, n, true, Mat { data: w1, rs: c, cs: 1 }, pixels, none);
                gelu_in_place(hid);
                let hid = Mat { data: hid, rs: n, cs: 1 };
                sgemm(c, n, hidden, branch, n, false, Mat { data: w2, rs: hidden, cs: 1 }, hid, none);
                for (ch, row) in branch.chunks(n).enumerate() {
                    let (g, bias, at) = (gamma[ch], b2[ch], ch * hw + p0);
                    out[at..at + n].iter_mut().zip(row).for_each(|(o, &r)| *o += g * (r + bias));
                }
            }
        });
        out
    });
    Tensor::from_vec(out, (b, c, h, w), x.device())
}
