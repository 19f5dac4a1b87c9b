//! ReLU as fused epilogues. candle's ReLU backward is four passes over the activation (compare
//! with zero, cast the mask, multiply, accumulate) and a residual add followed by ReLU is two
//! forward ops; these ops do each direction in one pass. The backward reads the op's own output:
//! `y > 0` is exactly where the input was positive.

use crate::cpu::{f32_slice, map1, map2, same_shape};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// `dy · [y > 0]`: the gradient through a ReLU whose output is `y`.
pub(crate) fn relu_grad(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    y.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)
}

struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "castream-relu-backward"
    }

    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), yl, gl)?;
        let (y, g) = (f32_slice(ys, yl, self.name())?, f32_slice(gs, gl, self.name())?);
        Ok((CpuStorage::F32(map2(y, g, |y, g| if y > 0.0 { g } else { 0.0 })), yl.shape().clone()))
    }
}

/// `max(x, 0)`.
pub(crate) struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "castream-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        Ok((CpuStorage::F32(map1(x, |x| x.max(0.0))), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(relu_grad(y, grad)?))
    }
}

/// `max(a + b, 0)`: a residual connection and its ReLU.
pub(crate) struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "castream-add-relu"
    }

    fn cpu_fwd(&self, as_: &CpuStorage, al: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), al, bl)?;
        let (a, b) = (f32_slice(as_, al, self.name())?, f32_slice(bs, bl, self.name())?);
        Ok((CpuStorage::F32(map2(a, b, |a, b| (a + b).max(0.0))), al.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(y, grad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}
