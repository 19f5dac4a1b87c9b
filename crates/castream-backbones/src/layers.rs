//! The layers the backbones are made of, and the store their parameters are registered in. Each
//! layer keeps tensors that share storage with the store's `Var`s, so loading weights into the
//! store (`Var::set`) updates the network in place and gradients reach the `Var`s.

use std::collections::BTreeMap;

use candle_core::{Device, Result, Tensor, Var};
use castream_kernels::{BatchStats, Conv2dParams, ConvBnLayer, Kernels};

use crate::init::Init;

/// Parameters by torchvision/timm name, created while a network is built.
pub(crate) struct Params {
    /// `None`: zeros everywhere, for networks whose weights are loaded right after.
    seed: Option<u64>,
    device: Device,
    pub kernels: Kernels,
    vars: BTreeMap<String, Var>,
    /// A frozen network's store: these existing parameters are used (same storage) and handed to
    /// the layers detached.
    frozen: Option<BTreeMap<String, Var>>,
}

impl Params {
    pub fn new(seed: Option<u64>, device: &Device, kernels: Kernels) -> Params {
        Params { seed, device: device.clone(), kernels, vars: BTreeMap::new(), frozen: None }
    }

    /// A store over `vars`, for rebuilding a network with the same parameters, detached.
    pub fn frozen(vars: &BTreeMap<String, Var>, device: &Device, kernels: Kernels) -> Params {
        Params { frozen: Some(vars.clone()), ..Params::new(None, device, kernels) }
    }

    pub fn var(&mut self, name: String, shape: &[usize], init: Init) -> Result<Var> {
        if let Some(existing) = &self.frozen {
            let var = match existing.get(&name) {
                Some(v) if v.dims() == shape => v.clone(),
                other => candle_core::bail!(
                    "freezing: parameter `{name}` {:?} does not match the network's {shape:?}",
                    other.map(|v| v.dims().to_vec())
                ),
            };
            self.vars.insert(name, var.clone());
            return Ok(var);
        }
        let value = match self.seed {
            Some(seed) => init.sample(seed, &name, shape, &self.device)?,
            None => Tensor::zeros(shape, candle_core::DType::F32, &self.device)?,
        };
        let var = Var::from_tensor(&value)?;
        if self.vars.insert(name.clone(), var.clone()).is_some() {
            candle_core::bail!("parameter `{name}` registered twice");
        }
        Ok(var)
    }

    pub fn tensor(&mut self, name: String, shape: &[usize], init: Init) -> Result<Tensor> {
        let var = self.var(name, shape, init)?;
        Ok(if self.frozen.is_some() { var.as_detached_tensor() } else { var.as_tensor().clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn into_vars(self) -> BTreeMap<String, Var> {
        self.vars
    }
}

pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    params: Conv2dParams,
    kernels: Kernels,
}

impl Conv2d {
    /// `shape` is the weight's `(C_out, C_in / groups, k, k)`; `bias` gives the bias initialiser
    /// when the layer has one.
    pub fn new(
        ps: &mut Params,
        name: &str,
        shape: [usize; 4],
        params: Conv2dParams,
        weight: Init,
        bias: Option<Init>,
    ) -> Result<Conv2d> {
        Ok(Conv2d {
            weight: ps.tensor(format!("{name}.weight"), &shape, weight)?,
            bias: bias.map(|init| ps.tensor(format!("{name}.bias"), &[shape[0]], init)).transpose()?,
            params,
            kernels: ps.kernels,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        castream_kernels::conv2d(x, &self.weight, self.bias.as_ref(), self.params, self.kernels)
    }
}

/// PyTorch's `BatchNorm2d` (eps 1e-5, momentum 0.1).
pub(crate) struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    kernels: Kernels,
}

pub(crate) const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm2d {
    pub fn new(ps: &mut Params, name: &str, channels: usize) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: ps.tensor(format!("{name}.weight"), &[channels], Init::Constant(1.0))?,
            bias: ps.tensor(format!("{name}.bias"), &[channels], Init::Constant(0.0))?,
            running_mean: ps.var(format!("{name}.running_mean"), &[channels], Init::Constant(0.0))?,
            running_var: ps.var(format!("{name}.running_var"), &[channels], Init::Constant(1.0))?,
            kernels: ps.kernels,
        })
    }

    /// Training mode normalises with the batch statistics (biased variance, gradients flowing
    /// through them) and moves the running statistics towards them, the variance unbiased, as
    /// PyTorch does. Evaluation mode uses the running statistics. `relu` appends a ReLU (fused
    /// into the kernel in training mode).
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        if train {
            let (y, mean, var) =
                castream_kernels::batch_norm_train(x, &self.weight, &self.bias, BN_EPS, relu, self.kernels)?;
            self.update_running(batch_stats(&y, mean, var)?)?;
            return Ok(y);
        }
        let (mean, var) = (
            per_channel(&self.running_mean.as_detached_tensor())?,
            per_channel(&self.running_var.as_detached_tensor())?,
        );
        let scale = per_channel(&self.weight)?.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        let y = x.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&per_channel(&self.bias)?)?;
        if relu {
            castream_kernels::relu(&y, self.kernels)
        } else {
            Ok(y)
        }
    }

    /// `conv` (without bias), this BatchNorm in training mode, a ReLU and a max-pool `(kernel,
    /// stride, padding)` as one op.
    pub fn train_after_pooled(&self, conv: &Conv2d, x: &Tensor, pool: (usize, usize, usize)) -> Result<Tensor> {
        let l = self.layer_after(conv)?;
        let (y, stats) = castream_kernels::conv_batch_norm_relu_max_pool_train(
            x,
            l.w,
            l.p,
            l.gamma,
            l.beta,
            BN_EPS,
            pool,
            self.kernels,
        )?;
        self.update_running(stats)?;
        Ok(y)
    }

    /// `conv` (without bias) and this BatchNorm as one layer of a fused residual block
    /// ([`castream_kernels::residual_blocks_train`]).
    pub fn layer_after<'a>(&'a self, conv: &'a Conv2d) -> Result<ConvBnLayer<'a>> {
        if conv.bias.is_some() {
            candle_core::bail!("a convolution fused with its BatchNorm has no bias of its own");
        }
        Ok(ConvBnLayer { w: &conv.weight, p: conv.params, gamma: &self.weight, beta: &self.bias })
    }

    /// Moves the running statistics towards a batch's mean and biased variance, storing the
    /// variance unbiased, as PyTorch does.
    pub fn update_running(&self, s: BatchStats) -> Result<()> {
        if s.count < 2 {
            candle_core::bail!("BatchNorm in training mode needs more than one value per channel, got {}", s.count);
        }
        let n = s.count as f64;
        let m = BN_MOMENTUM;
        self.running_mean.set(&((self.running_mean.as_tensor() * (1.0 - m))? + (s.mean * m)?)?)?;
        self.running_var.set(&((self.running_var.as_tensor() * (1.0 - m))? + (s.var * (m * n / (n - 1.0)))?)?)
    }

    /// `conv` followed by this BatchNorm in evaluation mode (and a ReLU when `relu`), as one
    /// convolution with bias and ReLU in its epilogue: the same function, one pass over the
    /// activations instead of six.
    pub fn fold_into(&self, conv: &Conv2d, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (w, b) = self.folded(conv)?;
        if relu {
            castream_kernels::conv2d_relu(x, &w, Some(&b), conv.params, conv.kernels)
        } else {
            castream_kernels::conv2d(x, &w, Some(&b), conv.params, conv.kernels)
        }
    }

    /// [`BatchNorm2d::fold_into`] with a ReLU, then a max-pool (`kernel`, `stride`, `padding`),
    /// all one op: the ResNet stem in evaluation mode.
    pub fn fold_into_pooled(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        (kernel, stride, padding): (usize, usize, usize),
    ) -> Result<Tensor> {
        let (w, b) = self.folded(conv)?;
        castream_kernels::conv2d_relu_max_pool2d(x, &w, Some(&b), conv.params, kernel, stride, padding, conv.kernels)
    }

    /// `conv`'s weights and bias with this BatchNorm's evaluation-mode affine map folded in.
    fn folded(&self, conv: &Conv2d) -> Result<(Tensor, Tensor)> {
        let (rm, rv) = (self.running_mean.as_detached_tensor(), self.running_var.as_detached_tensor());
        castream_kernels::fold_batchnorm(&conv.weight, conv.bias.as_ref(), &self.weight, &self.bias, &rm, &rv, BN_EPS)
    }
}

pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
    kernels: Kernels,
}

impl Linear {
    pub fn new(ps: &mut Params, name: &str, c_in: usize, c_out: usize, weight: Init, bias: Init) -> Result<Linear> {
        Ok(Linear {
            weight: ps.tensor(format!("{name}.weight"), &[c_out, c_in], weight)?,
            bias: ps.tensor(format!("{name}.bias"), &[c_out], bias)?,
            kernels: ps.kernels,
        })
    }

    /// Applies the layer to the last dimension of `x`, any leading dimensions.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        castream_kernels::linear(x, &self.weight, Some(&self.bias), self.kernels)
    }

    /// `(weight, bias)` as the forward uses them (tracked when the layer is trainable).
    pub fn tensors(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    /// `(weight, bias)`, detached from the parameters' gradient graph.
    pub fn parameters(&self) -> (Tensor, Tensor) {
        (self.weight.detach(), self.bias.detach())
    }
}

/// LayerNorm over one dimension with an affine transform (timm's eps 1e-6): dimension 1 of NCHW
/// is timm's `LayerNorm2d`, the last dimension its channels-last `LayerNorm`.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    kernels: Kernels,
}

const LN_EPS: f64 = 1e-6;

impl LayerNorm {
    pub fn new(ps: &mut Params, name: &str, channels: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: ps.tensor(format!("{name}.weight"), &[channels], Init::Constant(1.0))?,
            bias: ps.tensor(format!("{name}.bias"), &[channels], Init::Constant(0.0))?,
            kernels: ps.kernels,
        })
    }

    pub fn forward(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        castream_kernels::layer_norm(x, &self.weight, &self.bias, dim, LN_EPS, self.kernels)
    }

    /// Over the last dimension.
    pub fn forward_last(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x, x.dims().len() - 1)
    }
}

/// The statistics of a BatchNorm whose output is `y`: `count` is its values per channel.
fn batch_stats(y: &Tensor, mean: Tensor, var: Tensor) -> Result<BatchStats> {
    let (b, _, h, w) = y.dims4()?;
    Ok(BatchStats { mean, var, count: b * h * w })
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    /// One channel, running mean 2 and variance 4, weight 3, bias 1: `y = 3 (x - 2) / sqrt(4 + eps) + 1`.
    #[test]
    fn batchnorm_eval_uses_the_running_statistics() {
        let mut ps = Params::new(Some(0), &cpu(), Kernels::default());
        let bn = BatchNorm2d::new(&mut ps, "bn", 1).unwrap();
        let vars = ps.into_vars();
        let set = |n: &str, v: f32| vars[n].set(&Tensor::new(&[v], &cpu()).unwrap()).unwrap();
        set("bn.running_mean", 2.0);
        set("bn.running_var", 4.0);
        set("bn.weight", 3.0);
        set("bn.bias", 1.0);
        let x = Tensor::new(&[0f32, 2.0, 4.0, 6.0], &cpu()).unwrap().reshape((1, 1, 2, 2)).unwrap();
        let y = values(&bn.forward(&x, false, false).unwrap());
        let s = 3.0 / (4.0f32 + 1e-5).sqrt();
        assert!(close(&y, &[1.0 - 2.0 * s, 1.0, 1.0 + 2.0 * s, 1.0 + 4.0 * s]), "{y:?}");
        assert_eq!(values(vars["bn.running_mean"].as_tensor()), [2.0], "evaluation must not move the statistics");
    }

    /// Batch `1, 2, 3, 4`: mean 2.5, biased variance 1.25 for the output, unbiased 5/3 for the
    /// running update with momentum 0.1.
    #[test]
    fn batchnorm_train_normalises_with_batch_statistics_and_updates_running_ones() {
        let mut ps = Params::new(Some(0), &cpu(), Kernels::default());
        let bn = BatchNorm2d::new(&mut ps, "bn", 1).unwrap();
        let vars = ps.into_vars();
        let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &cpu()).unwrap().reshape((2, 1, 1, 2)).unwrap();
        let y = values(&bn.forward(&x, true, false).unwrap());
        let sd = (1.25f32 + 1e-5).sqrt();
        assert!(close(&y, &[-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd]), "{y:?}");
        assert!(close(&values(vars["bn.running_mean"].as_tensor()), &[0.25]));
        assert!(close(&values(vars["bn.running_var"].as_tensor()), &[0.9 + 0.1 * 5.0 / 3.0]));
        let single = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &cpu()).unwrap();
        assert!(bn.forward(&single, true, false).is_err(), "one value per channel has no variance");
    }

    #[test]
    fn layernorm_over_channels_equals_layernorm_channels_last() {
        let mut ps = Params::new(Some(0), &cpu(), Kernels::default());
        let ln = LayerNorm::new(&mut ps, "ln", 3).unwrap();
        let vars = ps.into_vars();
        vars["ln.weight"].set(&Tensor::new(&[1f32, 2.0, 3.0], &cpu()).unwrap()).unwrap();
        let x = Tensor::arange(0f32, 24.0, &cpu()).unwrap().sqr().unwrap().reshape((2, 3, 2, 2)).unwrap();
        let a = ln.forward(&x, 1).unwrap();
        let b = ln.forward_last(&x.permute((0, 2, 3, 1)).unwrap()).unwrap().permute((0, 3, 1, 2)).unwrap();
        assert!(close(&values(&a), &values(&b)));
    }
}
