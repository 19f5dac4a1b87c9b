//! The one interface of every saliency method, and the post-processing all share (METHOD.md §4):
//! `S = relu(map)`, per-image min-max to [0, 1] (a constant map gives zeros, never NaN), bilinear
//! upsampling to the input.

use candle_core::{bail, Result, Tensor};
use castream_kernels::Kernels;
use castream_stream::minmax_normalise;

use crate::subject::Subject;

/// A saliency method. Implementations return the raw map; [`explain`] post-processes it. Errors
/// are candle's, so an implementation outside castream needs no other error crate.
pub trait CamMethod: Send + Sync {
    /// The name tables and figures print, e.g. `Grad-CAM`.
    fn name(&self) -> &'static str;

    /// The map of `classes[i]` for image `i` of the normalised batch `x`: `(B, h, w)` at any
    /// resolution (the target layer's for CAMs), before rectification and normalisation.
    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor>;

    /// The maps of several subjects that share everything up to the target layer, for
    /// `classes[s]` of subject `s`: their `activations` agree, and the first's carry what every
    /// head reads (a frozen backbone's CA models and its GAP network, a CA model first). Methods
    /// whose cost is forward passes of perturbed inputs override it to run the shared part once
    /// per input; by default each subject is explained on its own.
    fn saliency_shared(&self, subjects: &[&Subject], x: &Tensor, classes: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        subjects.iter().zip(classes).map(|(s, c)| self.saliency(s, x, c)).collect()
    }
}

/// Post-processed saliency of a batch.
#[derive(Debug)]
pub struct Explanation {
    /// `(B, h, w)` at the method's resolution, in [0, 1].
    pub maps: Tensor,
    /// `(B, H, W)` bilinearly upsampled to the input, in [0, 1] (a convex combination of `maps`).
    pub upsampled: Tensor,
}

/// Runs `method` on the batch `x` for `classes` (one per image) and post-processes the maps.
pub fn explain(method: &dyn CamMethod, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Explanation> {
    let (b, _, h, w) = x.dims4()?;
    if classes.len() != b {
        bail!("{} classes for {b} images: give one class per image", classes.len());
    }
    post_process(&method.saliency(subject, x, classes)?, h, w)
}

/// [`explain`] for subjects sharing everything up to the target layer
/// ([`CamMethod::saliency_shared`]): one explanation per subject, each as [`explain`] gives it.
pub fn explain_shared(
    method: &dyn CamMethod,
    subjects: &[&Subject],
    x: &Tensor,
    classes: &[Vec<u32>],
) -> Result<Vec<Explanation>> {
    let (b, _, h, w) = x.dims4()?;
    if subjects.len() != classes.len() || classes.iter().any(|c| c.len() != b) {
        bail!(
            "{} class lists for {} subjects of {b} images: give one class per image and subject",
            classes.len(),
            subjects.len()
        );
    }
    method.saliency_shared(subjects, x, classes)?.iter().map(|raw| post_process(raw, h, w)).collect()
}

/// `S = relu(map)`, per-image min-max, and its upsampling to the input's `h x w`.
fn post_process(raw: &Tensor, h: usize, w: usize) -> Result<Explanation> {
    let maps = minmax_normalise(&raw.relu()?)?;
    let upsampled = upsample(&maps, h, w)?;
    Ok(Explanation { maps, upsampled })
}

/// `(B, h, w)` maps bilinearly resized to `(B, H, W)` (align_corners = false, as torch and OpenCV).
pub fn upsample(maps: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, mh, mw) = maps.dims3()?;
    if (mh, mw) == (h, w) {
        return Ok(maps.clone());
    }
    castream_kernels::upsample_bilinear2d(&maps.unsqueeze(1)?, h, w, Kernels::Fast)?.squeeze(1)
}

/// `(B, h, w)` maps bilinearly resized to `(B, H, W)` with `align_corners = true` (PyTorch's
/// `nn.UpsamplingBilinear2d`): output pixel `o` samples input coordinate `o · (h − 1)/(H − 1)`, so
/// the corner pixels of input and output coincide.
pub fn upsample_align_corners(maps: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    resize(maps, h, w, true)
}

/// `(B, h, w)` maps bilinearly resized to `(B, H, W)` as two interpolation matrices (`align_corners`
/// true, or false as [`upsample`]): differentiable on every device, where candle's own resize has no
/// backward and castream's kernel has one on the CPU only.
pub fn resize(maps: &Tensor, h: usize, w: usize, align_corners: bool) -> Result<Tensor> {
    let (n, mh, mw) = maps.dims3()?;
    if mh == 0 || mw == 0 || h == 0 || w == 0 {
        bail!("upsample: empty size, {mh}x{mw} to {h}x{w}");
    }
    let ry = interpolation_matrix(mh, h, align_corners, maps)?;
    let rx = interpolation_matrix(mw, w, align_corners, maps)?;
    // (N, h', w') · (w', W) then (H, h') · (N, h', W).
    let rows = maps.broadcast_matmul(&rx.t()?)?;
    ry.broadcast_left(n)?.matmul(&rows)
}

/// The `(out, in)` matrix of 1-D linear interpolation. `align_corners`: output `o` samples
/// `o · (in − 1)/(out − 1)`; otherwise PyTorch's half-pixel centres, `(o + ½) · in/out − ½`
/// clamped at 0, the upper neighbour clamped to the edge.
fn interpolation_matrix(len_in: usize, len_out: usize, align_corners: bool, like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f32; len_out * len_in];
    for o in 0..len_out {
        let src = if align_corners {
            if len_out > 1 {
                o as f64 * (len_in - 1) as f64 / (len_out - 1) as f64
            } else {
                0.0
            }
        } else {
            ((o as f64 + 0.5) * len_in as f64 / len_out as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(len_in - 1);
        let i1 = (i0 + 1).min(len_in - 1);
        let l1 = (src - i0 as f64).clamp(0.0, 1.0) as f32;
        m[o * len_in + i0] += 1.0 - l1;
        m[o * len_in + i1] += l1;
    }
    Tensor::from_vec(m, (len_out, len_in), like.device())?.to_dtype(like.dtype())
}

/// `sum_k w_k A^k`: channel weights `(B, K)` applied to activations `(B, K, h, w)`, giving `(B, h, w)`.
pub fn weighted_sum(weights: &Tensor, a: &Tensor) -> Result<Tensor> {
    a.broadcast_mul(&weights.unsqueeze(2)?.unsqueeze(3)?)?.sum(1)
}
