//! The stream's parameters and forward pass.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use castream_backbones::init;
use serde::{Deserialize, Serialize};

/// How the attention logits are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionScale {
    /// `1 / sqrt(d_head)`, the paper's choice.
    #[default]
    InvSqrtWidth,
    /// A fixed multiplier of `F q` (a temperature of `1 / value`).
    Fixed(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Stage taps carrying a block, strictly increasing in 0..=4 (default: all five).
    #[serde(default = "all_taps")]
    pub taps: Vec<usize>,
    /// Attention heads; the channels of every tapped stage split evenly among them.
    #[serde(default = "one")]
    pub heads: usize,
    #[serde(default)]
    pub scale: AttentionScale,
}

fn all_taps() -> Vec<usize> {
    vec![0, 1, 2, 3, 4]
}

fn one() -> usize {
    1
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { taps: all_taps(), heads: 1, scale: AttentionScale::default() }
    }
}

/// One block's attention over the positions of its stage, `(B, heads, h, w)`.
#[derive(Debug, Clone)]
pub struct Attention {
    pub tap: usize,
    /// `s_l = F_l q_l * scale` before the softmax.
    pub logits: Tensor,
    /// `a_l = softmax(s_l)` over positions.
    pub weights: Tensor,
}

#[derive(Debug, Clone)]
pub struct StreamOutput {
    /// `q_5`, the classifier's input, `(B, out_width)`.
    pub token: Tensor,
    /// Every block's attention, in tap order.
    pub attention: Vec<Attention>,
    /// The query `q_l` each block read, in tap order (`(d_0,)` for the first, `(B, d_l)` after).
    pub queries: Vec<Tensor>,
}

struct Block {
    tap: usize,
    /// `W_l`, `(d_next, d_l)`.
    weight: Var,
    /// `b_l`, `(d_next,)`.
    bias: Var,
}

pub struct CaStream {
    config: StreamConfig,
    /// `q_0`, `(d_first_tap,)`, shared by the batch.
    q0: Var,
    blocks: Vec<Block>,
}

/// Cross attention of a query with a feature map, no projections: per head,
/// `a = softmax(scale * F_h q_h)` over the `h x w` positions and `z_h = F_h^T a`. `f` is
/// `(B, d, h, w)`, `q` is `(B, d)` or `(d,)`; returns `z` `(B, d)` and the attention.
pub fn cross_attention(
    f: &Tensor,
    q: &Tensor,
    heads: usize,
    scale: AttentionScale,
    tap: usize,
) -> Result<(Tensor, Attention)> {
    let (b, d, h, w) = f.dims4()?;
    if heads == 0 || d % heads != 0 {
        candle_core::bail!("{heads} heads do not divide the {d} channels of stage {tap}");
    }
    let dh = d / heads;
    let q = if q.rank() == 1 { q.unsqueeze(0)?.broadcast_as((b, d))?.contiguous()? } else { q.clone() };
    let factor = match scale {
        AttentionScale::InvSqrtWidth => 1.0 / (dh as f64).sqrt(),
        AttentionScale::Fixed(v) => v,
    };
    let fh = f.reshape((b, heads, dh, h * w))?;
    let qh = q.reshape((b, heads, 1, dh))?;
    let logits = (qh.matmul(&fh)? * factor)?; // (B, heads, 1, p)
                                              // candle-nn's `softmax_last_dim` kernel has no backward pass (gradients would silently stop
                                              // here); the composed `softmax` is differentiable.
    let weights = candle_nn::ops::softmax(&logits, D::Minus1)?;
    let z = fh.matmul(&weights.transpose(2, 3)?.contiguous()?)?.reshape((b, d))?;
    let attention =
        Attention { tap, logits: logits.reshape((b, heads, h, w))?, weights: weights.reshape((b, heads, h, w))? };
    Ok((z, attention))
}

impl CaStream {
    /// A freshly initialised stream for a backbone with stage widths `widths` whose classifier
    /// takes `out_width` inputs: `q_0 ~ N(1, 1)`, `W_l` Xavier-uniform, `b_l` PyTorch's Linear
    /// default `U(-1/sqrt(d_l), 1/sqrt(d_l))`, each drawn from its own seeded stream.
    pub fn new(
        config: &StreamConfig,
        widths: [usize; 5],
        out_width: usize,
        seed: u64,
        device: &Device,
    ) -> Result<CaStream> {
        let taps = &config.taps;
        if taps.is_empty() || taps.windows(2).any(|t| t[0] >= t[1]) || taps.iter().any(|&t| t > 4) {
            candle_core::bail!("stream taps {taps:?} must be strictly increasing stage indices in 0..=4");
        }
        for &t in taps {
            if config.heads == 0 || !widths[t].is_multiple_of(config.heads) {
                candle_core::bail!("{} heads do not divide the {} channels of stage {t}", config.heads, widths[t]);
            }
        }
        let var = |t: Tensor| Var::from_tensor(&t);
        let q0 = var(init::normal(&mut init::param_rng(seed, "q0"), &[widths[taps[0]]], 1.0, 1.0, device)?)?;
        let mut blocks = Vec::new();
        for (i, &tap) in taps.iter().enumerate() {
            let (d_in, d_out) = (widths[tap], taps.get(i + 1).map_or(out_width, |&next| widths[next]));
            let name = format!("blocks.{tap}");
            let weight =
                init::xavier_uniform(&mut init::param_rng(seed, &format!("{name}.weight")), &[d_out, d_in], device)?;
            let bound = 1.0 / (d_in as f64).sqrt();
            let bias =
                init::uniform(&mut init::param_rng(seed, &format!("{name}.bias")), &[d_out], -bound, bound, device)?;
            blocks.push(Block { tap, weight: var(weight)?, bias: var(bias)? });
        }
        Ok(CaStream { config: config.clone(), q0, blocks })
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Runs the stream on the backbone's stage outputs (`features[l]` is `F_l`; only the tapped
    /// ones are read).
    pub fn forward(&self, features: &[Tensor]) -> Result<StreamOutput> {
        let mut q = self.q0.as_tensor().clone();
        let mut attention = Vec::with_capacity(self.blocks.len());
        let mut queries = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let f = features
                .get(block.tap)
                .ok_or_else(|| candle_core::Error::Msg(format!("stage {} missing", block.tap)))?;
            let (z, a) = cross_attention(f, &q, self.config.heads, self.config.scale, block.tap)?;
            queries.push(q);
            q = z.matmul(&block.weight.as_tensor().t()?)?.broadcast_add(block.bias.as_tensor())?;
            attention.push(a);
        }
        Ok(StreamOutput { token: q, attention, queries })
    }

    /// Every trainable tensor by name: `q0`, `blocks.<tap>.weight`, `blocks.<tap>.bias`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![("q0".to_string(), self.q0.clone())];
        for b in &self.blocks {
            out.push((format!("blocks.{}.weight", b.tap), b.weight.clone()));
            out.push((format!("blocks.{}.bias", b.tap), b.bias.clone()));
        }
        out
    }

    /// Multiply-adds of the stream for one image with stage outputs `features`: per block, the
    /// logits `F q` and the pooling `F^T a` (`d_l p_l` each) and the linear map (`d_l d_next`).
    pub fn multiply_adds(&self, features: &[Tensor]) -> Result<usize> {
        self.blocks.iter().try_fold(0, |acc, b| {
            let (_, d, h, w) = features[b.tap].dims4()?;
            Ok(acc + 2 * d * h * w + b.weight.elem_count())
        })
    }

    pub fn parameter_count(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Replaces `q_0` (the figure-3 identity and the GAP-equivalence check use fixed queries).
    pub fn set_q0(&self, q0: &Tensor) -> Result<()> {
        self.q0.set(&q0.to_dtype(DType::F32)?)
    }
}

/// Mean over the last dimension, a helper for GAP comparisons.
pub fn global_average(f: &Tensor) -> Result<Tensor> {
    f.flatten_from(2)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const RESNET18: [usize; 5] = [64, 64, 128, 256, 512];
    const RESNET50: [usize; 5] = [64, 256, 512, 1024, 2048];

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &cpu()).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn parameter_counts_match_the_paper() {
        let cfg = StreamConfig::default();
        assert_eq!(CaStream::new(&cfg, RESNET18, 512, 0, &cpu()).unwrap().parameter_count(), 439_808);
        assert_eq!(CaStream::new(&cfg, RESNET50, 2048, 0, &cpu()).unwrap().parameter_count(), 6_969_152);
    }

    /// Small stage features: widths [4, 4, 8, 8, 8] over 5x5, 4x4, 3x3, 3x2, 2x2 positions.
    fn features(b: usize, seed: u64) -> (Vec<Tensor>, [usize; 5]) {
        let widths = [4, 4, 8, 8, 8];
        let sizes = [(5, 5), (4, 4), (3, 3), (3, 2), (2, 2)];
        let f = (0..5).map(|l| random(&[b, widths[l], sizes[l].0, sizes[l].1], seed + l as u64)).collect();
        (f, widths)
    }

    #[test]
    fn attention_sums_to_one_over_positions() {
        let (f, widths) = features(3, 1);
        let s = CaStream::new(&StreamConfig { heads: 2, ..Default::default() }, widths, 6, 7, &cpu()).unwrap();
        let out = s.forward(&f).unwrap();
        assert_eq!(out.token.dims(), &[3, 6]);
        for a in &out.attention {
            for total in values(&a.weights.sum((2, 3)).unwrap()) {
                assert!((total - 1.0).abs() < 1e-5, "block {}: {total}", a.tap);
            }
        }
    }

    #[test]
    fn forward_equals_a_brute_force_loop() {
        let (f, widths) = features(2, 3);
        for heads in [1, 2, 4] {
            let cfg = StreamConfig { heads, ..Default::default() };
            let s = CaStream::new(&cfg, widths, 5, 11, &cpu()).unwrap();
            let got = values(&s.forward(&f).unwrap().token);
            let params: Vec<(String, Vec<f32>)> =
                s.named_vars().into_iter().map(|(n, v)| (n, values(v.as_tensor()))).collect();
            let get = |n: &str| &params.iter().find(|(k, _)| k == n).unwrap().1;
            for b in 0..2 {
                let mut q: Vec<f64> = get("q0").iter().map(|&v| v as f64).collect();
                for (l, &d) in widths.iter().enumerate() {
                    let fv = values(&f[l].get(b).unwrap());
                    let p = fv.len() / d;
                    let dh = d / heads;
                    let mut z = vec![0f64; d];
                    for head in 0..heads {
                        let ch = head * dh..(head + 1) * dh;
                        let logits: Vec<f64> = (0..p)
                            .map(|j| ch.clone().map(|c| fv[c * p + j] as f64 * q[c]).sum::<f64>() / (dh as f64).sqrt())
                            .collect();
                        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = logits.iter().map(|s| (s - max).exp()).collect();
                        let total: f64 = e.iter().sum();
                        for c in ch {
                            z[c] = (0..p).map(|j| fv[c * p + j] as f64 * e[j] / total).sum();
                        }
                    }
                    let (w, bias) = (get(&format!("blocks.{l}.weight")), get(&format!("blocks.{l}.bias")));
                    let out = bias.len();
                    q = (0..out)
                        .map(|o| bias[o] as f64 + (0..d).map(|c| w[o * d + c] as f64 * z[c]).sum::<f64>())
                        .collect();
                }
                for (o, want) in q.iter().enumerate() {
                    let have = got[b * 5 + o] as f64;
                    assert!(
                        (have - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "heads {heads} image {b} out {o}: {have} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_zero_query_pools_exactly_like_gap() {
        let f = random(&[2, 6, 4, 3], 5);
        let (z, a) =
            cross_attention(&f, &Tensor::zeros(6, DType::F32, &cpu()).unwrap(), 1, AttentionScale::InvSqrtWidth, 0)
                .unwrap();
        let gap = global_average(&f).unwrap();
        for (x, y) in values(&z).iter().zip(values(&gap)) {
            assert!((x - y).abs() < 1e-6);
        }
        assert!(values(&a.weights).iter().all(|&w| (w - 1.0 / 12.0).abs() < 1e-7));
    }

    #[test]
    fn stream_gradients_agree_with_finite_differences() {
        let (f, widths) = features(2, 9);
        let s = CaStream::new(&StreamConfig::default(), widths, 3, 2, &cpu()).unwrap();
        let r = random(&[2, 3], 99);
        let loss = |s: &CaStream| s.forward(&f).unwrap().token.mul(&r).unwrap().sum_all().unwrap();
        let grads = loss(&s).backward().unwrap();
        let eps = 1e-2f32;
        for (name, var) in s.named_vars() {
            let g = values(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")));
            let base = values(var.as_tensor());
            for k in [0, base.len() / 2, base.len() - 1] {
                let probe = |delta: f32| {
                    let mut v = base.clone();
                    v[k] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &cpu()).unwrap()).unwrap();
                    let l = loss(&s).to_scalar::<f32>().unwrap() as f64;
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &cpu()).unwrap()).unwrap();
                    l
                };
                let fd = (probe(eps) - probe(-eps)) / (2.0 * eps as f64);
                assert!(
                    (fd - g[k] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
                    "{name}[{k}]: fd {fd} vs autograd {}",
                    g[k]
                );
            }
        }
    }

    #[test]
    fn multiply_adds_by_hand() {
        let (f, widths) = features(1, 0);
        let s = CaStream::new(&StreamConfig { taps: vec![3, 4], ..Default::default() }, widths, 5, 0, &cpu()).unwrap();
        // CA-3 reads 8x3x2 and maps 8 -> 8; CA-4 reads 8x2x2 and maps 8 -> 5.
        assert_eq!(s.multiply_adds(&f).unwrap(), (2 * 8 * 6 + 64) + (2 * 8 * 4 + 40));
    }

    #[test]
    fn invalid_taps_and_heads_are_rejected() {
        let bad = |cfg: StreamConfig| CaStream::new(&cfg, RESNET18, 512, 0, &cpu()).is_err();
        assert!(bad(StreamConfig { taps: vec![3, 1], ..Default::default() }));
        assert!(bad(StreamConfig { taps: vec![], ..Default::default() }));
        assert!(bad(StreamConfig { taps: vec![5], ..Default::default() }));
        assert!(bad(StreamConfig { heads: 3, ..Default::default() }));
        let last_two =
            CaStream::new(&StreamConfig { taps: vec![3, 4], ..Default::default() }, RESNET18, 512, 0, &cpu()).unwrap();
        assert_eq!(last_two.parameter_count(), 256 + 256 * 512 + 512 + 512 * 512 + 512);
    }
}
