//! A linear layer `y = x · Wᵀ + b` on rows of `x`, as one op each way.
//!
//! candle's version is a matmul plus a broadcast addition: its backward transposes and copies
//! operands for two matmuls, and the bias gradient is a strided reduction over every leading
//! dimension (measured at an eighth of a ConvNeXt train step, whose MLPs are these layers). Here
//! each thread takes a block of rows: the forward is one GEMM onto the bias, the backward two
//! GEMMs (`dx = dy · W`, `dW += dyᵀ · x`) and the bias gradient's column sums, the threads'
//! weight and bias gradients summed at the end.
//!
//! With a GELU epilogue (`linear_gelu`: a ConvNeXt MLP's first layer as timm composes it) the
//! layer and its activation are one op each way: the forward keeps the pre-activation when a
//! backward will follow, and the backward turns the output gradient into the pre-activation's in
//! one pass before the GEMMs. (castream's ConvNeXt runs the whole block MLP as one op instead:
//! `mlp.rs`, `mlp_train.rs`.)

use std::sync::{Arc, OnceLock};

use crate::batchnorm::{keep, kept};
use crate::cpu::{f32_slice, par_build, sgemm, split, split_flat, Mat};
use crate::gelu::{gelu_grad, gelu_of};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows, inputs and outputs of one layer, checked against its operands.
struct Dims {
    rows: usize,
    c_in: usize,
    c_out: usize,
}

impl Dims {
    fn of(op: &str, xl: &Layout, wl: &Layout, bias: usize) -> Result<Dims> {
        let (&[rows, c_in], &[c_out, w_in]) = (xl.dims(), wl.dims()) else {
            bail!("{op}: expected 2-d input and weights, got {:?} and {:?}", xl.dims(), wl.dims())
        };
        if c_in == 0 || c_in != w_in || bias != c_out {
            bail!("{op}: input {:?}, weights {:?} and {bias} biases do not match", xl.dims(), wl.dims())
        }
        Ok(Dims { rows, c_in, c_out })
    }
}

/// What the layer applies to `x · Wᵀ + b`.
pub(crate) enum Epilogue {
    None,
    /// Exact GELU; `pre_activation` keeps `x · Wᵀ + b` when a backward will follow.
    Gelu {
        pre_activation: Option<Arc<OnceLock<Vec<f32>>>>,
    },
}

/// `(x, W, b) -> epilogue(x · Wᵀ + b)`, `x` `(rows, in)`, `W` `(out, in)`.
pub(crate) struct Linear(pub Epilogue);

/// `x · Wᵀ + b`, each thread a block of rows.
fn affine(x: &[f32], w: &[f32], b: &[f32], Dims { rows, c_in, c_out }: &Dims) -> Vec<f32> {
    let (rows, c_in, c_out) = (*rows, *c_in, *c_out);
    let (chunk, par) = split(rows);
    par_build(rows * c_out, chunk * c_out, |i, blank| {
        let mut y = blank.rows_from(c_out, |_| (b, 0.0));
        let n = y.len() / c_out;
        let lhs = Mat { data: &x[i * chunk * c_in..][..n * c_in], rs: c_in, cs: 1 };
        sgemm(n, c_out, c_in, &mut y, c_out, true, lhs, Mat { data: w, rs: 1, cs: c_in }, par);
        y
    })
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "castream-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, b) = (f32_slice(xs, xl, name)?, f32_slice(ws, wl, name)?, f32_slice(bs, bl, name)?);
        let dims = Dims::of(name, xl, wl, b.len())?;
        let y = match &self.0 {
            Epilogue::None => affine(x, w, b, &dims),
            Epilogue::Gelu { pre_activation: None } => gelu_of(&affine(x, w, b, &dims)),
            Epilogue::Gelu { pre_activation: Some(saved) } => {
                let h = affine(x, w, b, &dims);
                let y = gelu_of(&h);
                keep(saved, h, name)?;
                y
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((dims.rows, dims.c_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_x, need_w, need_b) = (x.track_op(), w.track_op(), b.track_op());
        if !(need_x || need_w || need_b) {
            return Ok((None, None, None));
        }
        let grad = match &self.0 {
            Epilogue::None => grad.contiguous()?,
            Epilogue::Gelu { pre_activation: Some(saved) } => {
                grad.contiguous()?.apply_op1_no_bwd(&GeluGradKept { pre_activation: saved.clone() })?
            }
            Epilogue::Gelu { pre_activation: None } => {
                bail!("{}: backward of a forward that kept nothing", self.name())
            }
        };
        let op = LinearBackward { need_x, need_wb: need_w || need_b };
        let all = x.apply_op3_no_bwd(w, &grad, &op)?;
        let [gx, gw, gb] = split_flat(&all, [x.shape(), w.shape(), b.shape()])?;
        Ok((need_x.then_some(gx), need_w.then_some(gw), need_b.then_some(gb)))
    }
}

/// `dy -> dy · GELU'(h)`, `h` the pre-activation its forward kept.
struct GeluGradKept {
    pre_activation: Arc<OnceLock<Vec<f32>>>,
}

impl CustomOp1 for GeluGradKept {
    fn name(&self) -> &'static str {
        "castream-linear-gelu-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dy, h) = (f32_slice(s, l, self.name())?, kept(&self.pre_activation, self.name())?);
        if h.len() != dy.len() {
            bail!("{}: gradient of {} values for an output of {}", self.name(), dy.len(), h.len())
        }
        Ok((CpuStorage::F32(gelu_grad(h, dy)), l.shape().clone()))
    }
}

/// `(x, W, dy) -> [dx | dW | db]` flattened; a half that is not needed is left zero.
struct LinearBackward {
    need_x: bool,
    /// The weight and bias gradients.
    need_wb: bool,
}

impl CustomOp3 for LinearBackward {
    fn name(&self) -> &'static str {
        "castream-linear-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, g) = (f32_slice(xs, xl, name)?, f32_slice(ws, wl, name)?, f32_slice(gs, gl, name)?);
        let Dims { rows, c_in, c_out } = Dims::of(name, xl, wl, wl.dims()[0])?;
        if gl.dims() != [rows, c_out] {
            bail!("{name}: gradient {:?} does not match the output {:?}", gl.dims(), [rows, c_out])
        }
        let (chunk, par) = split(rows);
        let (nx, nw) = (rows * c_in, c_out * c_in);
        // Every part is written once (GEMM outputs, or the sums copied in), so zero pages will do.
        let mut out = vec![0f32; nx + nw + c_out];
        let (dx, dwb) = out.split_at_mut(nx);
        let wb = dx
            .par_chunks_mut(chunk * c_in)
            .enumerate()
            .map(|(t, dx)| {
                let n = dx.len() / c_in;
                let gy = &g[t * chunk * c_out..][..n * c_out];
                if self.need_x {
                    let (gy, w) = (Mat { data: gy, rs: c_out, cs: 1 }, Mat { data: w, rs: c_in, cs: 1 });
                    sgemm(n, c_in, c_out, dx, c_in, false, gy, w, par);
                }
                if !self.need_wb {
                    return (Vec::new(), Vec::new());
                }
                let mut dw = vec![0f32; nw];
                let (gy_t, xs) = (
                    Mat { data: gy, rs: 1, cs: c_out },
                    Mat { data: &x[t * chunk * c_in..][..n * c_in], rs: c_in, cs: 1 },
                );
                sgemm(c_out, c_in, n, &mut dw, c_in, false, gy_t, xs, par);
                let mut db = vec![0f64; c_out];
                for row in gy.chunks(c_out) {
                    db.iter_mut().zip(row).for_each(|(d, &v)| *d += v as f64);
                }
                (dw, db)
            })
            .reduce(
                || (Vec::new(), Vec::new()),
                |a, b| match (a.0.is_empty(), b.0.is_empty()) {
                    (true, _) => b,
                    (_, true) => a,
                    _ => {
                        let dw = a.0.iter().zip(&b.0).map(|(x, y)| x + y).collect();
                        (dw, a.1.iter().zip(&b.1).map(|(x, y)| x + y).collect())
                    }
                },
            );
        if self.need_wb && rows > 0 {
            let (dw, db) = dwb.split_at_mut(nw);
            dw.copy_from_slice(&wb.0);
            db.iter_mut().zip(&wb.1).for_each(|(d, &v)| *d = v as f32);
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
