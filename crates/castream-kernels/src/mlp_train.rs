//! A ConvNeXt block's MLP in training, channels first, as one op each way:
//! `out = x + γ ⊙ Z`, `Z = W₂ · GELU(H) + b₂`, `H = W₁ · y + b₁` at every pixel.
//!
//! timm's composition of differentiable ops permutes the block to channels last and back (a
//! strided copy each way, forward and backward), and candle's autograd adds a `zeros_like` and an
//! `add` per gradient edge inside it. Here the only edges are the op's inputs: `x`, `y` and the
//! parameters flattened into one vector. Each image is a pair of GEMMs with its pixels as columns
//! (as in `mlp.rs`); the forward keeps `H` and `Z`, and the backward, per image `P` pixels with
//! output gradient `D` (`C x P`), computes
//!
//! `dx = D`, `dγ = Σ_p D ⊙ Z`, `dZ = γ ⊙ D`, `db₂ = Σ_p dZ`, `dW₂ = dZ · GELU(H)ᵀ`,
//! `dH = GELU'(H) ⊙ (W₂ᵀ · dZ)`, `db₁ = Σ_p dH`, `dW₁ = dH · yᵀ`, `dy = W₁ᵀ · dH`,
//!
//! each thread over its own images; the threads' parameter gradients are summed in a fixed order.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept};
use crate::cpu::{f32_slice, sgemm, split, split_flat, with_scratch, Mat};
use crate::gelu::{gelu_grad_in_place, gelu_in_place};
use crate::mlp::{dims, MlpParams};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The sizes of one application: images, channels, pixels per image, hidden width.
#[derive(Clone, Copy)]
struct Sizes {
    b: usize,
    c: usize,
    p: usize,
    hidden: usize,
}

impl Sizes {
    /// Where `W₁`, `b₁`, `W₂`, `b₂` and `γ` lie in the flat parameter vector.
    fn params(&self) -> [Range<usize>; 5] {
        let (c, h) = (self.c, self.hidden);
        let ends = [h * c, h * c + h, 2 * h * c + h, 2 * h * c + h + c, 2 * h * c + h + 2 * c];
        [0..ends[0], ends[0]..ends[1], ends[1]..ends[2], ends[2]..ends[3], ends[3]..ends[4]]
    }

    fn param_len(&self) -> usize {
        self.params()[4].end
    }

    fn check(&self, op: &str, what: &str, len: usize, expected: usize) -> Result<()> {
        if len != expected {
            bail!(
                "{op}: {what} has {len} values, expected {expected} (B {}, C {}, P {}, hidden {})",
                self.b,
                self.c,
                self.p,
                self.hidden
            )
        }
        Ok(())
    }
}

/// What the forward keeps: every image's `H` (`hidden x P`) and `Z` (`C x P`), channels first.
struct Saved {
    h: Vec<f32>,
    z: Vec<f32>,
}

/// `(x, y, [W₁ | b₁ | W₂ | b₂ | γ]) -> x + γ ⊙ (W₂ · GELU(W₁ · y + b₁) + b₂)`.
struct MlpTrain {
    sizes: Sizes,
    saved: Arc<OnceLock<Saved>>,
}

/// The block MLP with a backward, for tracked operands (`convnext_mlp` in the facade).
pub(crate) fn forward(x: &Tensor, y: &Tensor, p: &MlpParams) -> Result<Tensor> {
    let (b, c, h, w, hidden) = dims(x, y, p)?;
    if hidden == 0 {
        bail!("convnext_mlp: W1 {:?} has no hidden units", p.w1.dims())
    }
    let params = Tensor::cat(&[&p.w1.flatten_all()?, p.b1, &p.w2.flatten_all()?, p.b2, p.gamma], 0)?;
    let op = MlpTrain { sizes: Sizes { b, c, p: h * w, hidden }, saved: Arc::new(OnceLock::new()) };
    x.contiguous()?.apply_op3(&y.contiguous()?, &params, op)
}

impl CustomOp3 for MlpTrain {
    fn name(&self) -> &'static str {
        "castream-convnext-mlp-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, y, prm) = (f32_slice(xs, xl, name)?, f32_slice(ys, yl, name)?, f32_slice(ps, pl, name)?);
        let Sizes { b, c, p, hidden } = self.sizes;
        self.sizes.check(name, "x", x.len(), b * c * p)?;
        self.sizes.check(name, "y", y.len(), b * c * p)?;
        self.sizes.check(name, "the parameter vector", prm.len(), self.sizes.param_len())?;
        let [w1, b1, w2, b2, gamma] = self.sizes.params().map(|r| &prm[r]);
        let (chunk, par) = split(b);
        // Every element of the three buffers is written (bias fills, GEMMs onto them, the sum).
        let (mut out, mut hs, mut zs) = (vec![0f32; b * c * p], vec![0f32; b * hidden * p], vec![0f32; b * c * p]);
        out.par_chunks_mut((chunk * c * p).max(1))
            .zip(hs.par_chunks_mut((chunk * hidden * p).max(1)))
            .zip(zs.par_chunks_mut((chunk * c * p).max(1)))
            .enumerate()
            .for_each(|(t, ((out, hs), zs))| {
                with_scratch(hidden * p, |g| {
                    let images = out.chunks_mut(c * p).zip(hs.chunks_mut(hidden * p)).zip(zs.chunks_mut(c * p));
                    for (i, ((out, h), z)) in images.enumerate() {
                        let at = (t * chunk + i) * c * p;
                        let (x, y) = (&x[at..at + c * p], &y[at..at + c * p]);
                        h.chunks_mut(p).zip(b1).for_each(|(row, &v)| row.fill(v));
                        let (w1, y) = (Mat { data: w1, rs: c, cs: 1 }, Mat { data: y, rs: p, cs: 1 });
                        sgemm(hidden, p, c, h, p, true, w1, y, par);
                        g.copy_from_slice(h);
                        gelu_in_place(g);
                        z.chunks_mut(p).zip(b2).for_each(|(row, &v)| row.fill(v));
                        let (w2, g) = (Mat { data: w2, rs: hidden, cs: 1 }, Mat { data: g, rs: p, cs: 1 });
                        sgemm(c, p, hidden, z, p, true, w2, g, par);
                        for (ch, &s) in gamma.iter().enumerate() {
                            let row = ch * p..(ch + 1) * p;
                            out[row.clone()]
                                .iter_mut()
                                .zip(&x[row.clone()])
                                .zip(&z[row])
                                .for_each(|((o, &x), &z)| *o = x + s * z);
                        }
                    }
                })
            });
        keep(&self.saved, Saved { h: hs, z: zs }, name)?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        params: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_x, need_y, need_params) = (x.track_op(), y.track_op(), params.track_op());
        if !(need_x || need_y || need_params) {
            return Ok((None, None, None));
        }
        let grad = grad.contiguous()?;
        let op = MlpBackward { sizes: self.sizes, saved: self.saved.clone(), need_params };
        let all = y.apply_op3_no_bwd(params, &grad, &op)?;
        let [gy, gp] = split_flat(&all, [y.shape(), params.shape()])?;
        Ok((need_x.then_some(grad), need_y.then_some(gy), need_params.then_some(gp)))
    }
}

/// `(y, parameters, D) -> [dy | d parameters]` flattened; the parameters' part stays zero
/// unless `need_params`.
struct MlpBackward {
    sizes: Sizes,
    saved: Arc<OnceLock<Saved>>,
    need_params: bool,
}

/// One thread's parameter gradients, in the flat vector's order (`W₁`, `b₁`, `W₂`, `b₂`, `γ`).
struct Partial {
    dw1: Vec<f32>,
    db1: Vec<f64>,
    dw2: Vec<f32>,
    db2: Vec<f64>,
    dgamma: Vec<f64>,
}

impl CustomOp3 for MlpBackward {
    fn name(&self) -> &'static str {
        "castream-convnext-mlp-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (y, prm, d) = (f32_slice(ys, yl, name)?, f32_slice(ps, pl, name)?, f32_slice(gs, gl, name)?);
        let Saved { h: hs, z: zs } = kept(&self.saved, name)?;
        let sizes = self.sizes;
        let Sizes { b, c, p, hidden } = sizes;
        sizes.check(name, "the output gradient", d.len(), b * c * p)?;
        sizes.check(name, "the parameter vector", prm.len(), sizes.param_len())?;
        let [w1, _, w2, _, gamma] = sizes.params().map(|r| &prm[r]);
        let (chunk, par) = split(b);
        let need = self.need_params;
        let mut out = vec![0f32; b * c * p + sizes.param_len()];
        let (dy, dparams) = out.split_at_mut(b * c * p);
        let partials: Vec<Partial> = dy
            .par_chunks_mut((chunk * c * p).max(1))
            .enumerate()
            .map(|(t, dy)| {
                let mut acc = Partial {
                    dw1: vec![0.0; need as usize * hidden * c],
                    db1: vec![0.0; need as usize * hidden],
                    dw2: vec![0.0; need as usize * c * hidden],
                    db2: vec![0.0; need as usize * c],
                    dgamma: vec![0.0; need as usize * c],
                };
                with_scratch(2 * hidden * p + c * p, |scratch| {
                    let (g, rest) = scratch.split_at_mut(hidden * p);
                    let (dh, dz) = rest.split_at_mut(hidden * p);
                    for (i, dy) in dy.chunks_mut(c * p).enumerate() {
                        let image = t * chunk + i;
                        let (at, hat) = (image * c * p, image * hidden * p);
                        let (y, d, z, h) =
                            (&y[at..][..c * p], &d[at..][..c * p], &zs[at..][..c * p], &hs[hat..][..hidden * p]);
                        for (ch, &s) in gamma.iter().enumerate() {
                            let (d, z, dz) = (&d[ch * p..][..p], &z[ch * p..][..p], &mut dz[ch * p..][..p]);
                            dz.iter_mut().zip(d).for_each(|(o, &d)| *o = s * d);
                            if need {
                                acc.dgamma[ch] += d.iter().zip(z).map(|(&d, &z)| (d * z) as f64).sum::<f64>();
                                acc.db2[ch] += dz.iter().map(|&v| v as f64).sum::<f64>();
                            }
                        }
                        let dz = Mat { data: dz, rs: p, cs: 1 };
                        // dG = W₂ᵀ · dZ, turned into dH in place.
                        sgemm(hidden, p, c, dh, p, false, Mat { data: w2, rs: 1, cs: hidden }, dz, par);
                        if need {
                            g.copy_from_slice(h);
                            gelu_in_place(g);
                            sgemm(c, hidden, p, &mut acc.dw2, hidden, true, dz, Mat { data: g, rs: 1, cs: p }, par);
                        }
                        gelu_grad_in_place(h, dh);
                        if need {
                            for (sum, row) in acc.db1.iter_mut().zip(dh.chunks(p)) {
                                *sum += row.iter().map(|&v| v as f64).sum::<f64>();
                            }
                            let (dh, yt) = (Mat { data: dh, rs: p, cs: 1 }, Mat { data: y, rs: 1, cs: p });
                            sgemm(hidden, c, p, &mut acc.dw1, c, true, dh, yt, par);
                        }
                        let (w1t, dh) = (Mat { data: w1, rs: 1, cs: c }, Mat { data: dh, rs: p, cs: 1 });
                        sgemm(c, p, hidden, dy, p, false, w1t, dh, par);
                    }
                });
                acc
            })
            .collect();
        if need {
            let [w1r, b1r, w2r, b2r, gr] = sizes.params();
            for part in &partials {
                dparams[w1r.clone()].iter_mut().zip(&part.dw1).for_each(|(o, &v)| *o += v);
                dparams[w2r.clone()].iter_mut().zip(&part.dw2).for_each(|(o, &v)| *o += v);
            }
            let sum = |f: fn(&Partial) -> &Vec<f64>, dst: &mut [f32]| {
                for (k, o) in dst.iter_mut().enumerate() {
                    *o = partials.iter().map(|part| f(part)[k]).sum::<f64>() as f32;
                }
            };
            sum(|part| &part.db1, &mut dparams[b1r]);
            sum(|part| &part.db2, &mut dparams[b2r]);
            sum(|part| &part.dgamma, &mut dparams[gr]);
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
