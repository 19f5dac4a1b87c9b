//! Grad-CAM, Score-CAM and the paper's five metrics on a model castream does not define.
//! `cargo run --release -p castream-cam --example own_model`
//!
//! The model: a small candle-nn CNN, trained here for a few seconds to tell the colour of a square
//! placed anywhere on a noisy 32x32 image. To explain it, implement `CamModel`: run to the target
//! layer, and from a (possibly modified) target activation to the logits.

use anyhow::Result;
use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Optimizer};
use castream_cam::{explain, Activations, CamModel, Method, MethodOptions, Subject};
use castream_data::Normalisation;
use castream_metrics::blur::InsertionBlur;
use castream_metrics::causal::{auc, causal_curves, CausalMode, CausalVariant};
use castream_metrics::confidence::{class_probabilities, confidence, explanation_images};

struct Net {
    convs: Vec<Conv2d>,
    fc: Linear,
}

impl Net {
    /// The last convolution's output, `(B, 32, 8, 8)`: the layer we explain.
    fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.convs.iter().try_fold(x.clone(), |f, conv| conv.forward(&f)?.relu())
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc.forward(&self.features(x)?.mean((2, 3))?)
    }
}

impl CamModel for Net {
    fn activations(&self, x: &Tensor) -> candle_core::Result<Activations> {
        Ok(Activations::of(self.features(x)?.detach()))
    }
    fn logits_from(&self, _: &Activations, a: &Tensor) -> candle_core::Result<Tensor> {
        self.fc.forward(&a.mean((2, 3))?)
    }
}

/// Deterministic grey noise in [0, 0.5] with an 8x8 square of colour `label` (red, green, blue,
/// yellow) at a position that varies with the image.
fn images(n: usize, first: usize) -> Result<(Tensor, Vec<u32>)> {
    const COLOURS: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]];
    let labels: Vec<u32> = (first..first + n).map(|i| (i * 7 % 4) as u32).collect();
    let mut px: Vec<f32> = (0..n * 1024).map(|p| ((p + first * 1024) as f32 * 0.7548).sin().abs() / 2.0).collect();
    px = px.chunks(1024).flat_map(|grey| grey.repeat(3)).collect();
    for (i, &l) in labels.iter().enumerate() {
        let (y0, x0) = ((first + i) * 5 % 24, (first + i) * 11 % 24);
        for (c, y, x) in (0..3).flat_map(|c| (y0..y0 + 8).flat_map(move |y| (x0..x0 + 8).map(move |x| (c, y, x)))) {
            px[((i * 3 + c) * 32 + y) * 32 + x] = COLOURS[l as usize][c];
        }
    }
    Ok((Tensor::from_vec(px, (n, 3, 32, 32), &Device::Cpu)?, labels))
}

fn main() -> Result<()> {
    let mut vars = Vec::new();
    let mut param = |shape: &[usize]| -> Result<Tensor> {
        // Uniform in ±√(3 / fan-in) from a multiplicative hash (deterministic); biases start at 0.
        let scale = (3.0 / shape[1..].iter().product::<usize>() as f32).sqrt() * (shape.len() > 1) as u8 as f32;
        let n: usize = shape.iter().product();
        let hash = |i: usize| ((i + 7919 * vars.len()) as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32;
        let v = (0..n).map(|i| (2.0 * hash(i) - 1.0) * scale);
        vars.push(Var::from_vec(v.collect::<Vec<_>>(), shape, &Device::Cpu)?);
        Ok(vars.last().unwrap().as_tensor().clone())
    };
    let mut conv = |i, o, stride| -> Result<Conv2d> {
        let cfg = Conv2dConfig { padding: 1, stride, ..Default::default() };
        Ok(Conv2d::new(param(&[o, i, 3, 3])?, Some(param(&[o])?), cfg))
    };
    let convs = vec![conv(3, 16, 2)?, conv(16, 32, 2)?, conv(32, 32, 1)?];
    let net = Net { convs, fc: Linear::new(param(&[4, 32])?, Some(param(&[4])?)) };
    let norm = Normalisation { mean: [0.3; 3], std: [0.3; 3] };
    let mut opt = candle_nn::AdamW::new_lr(vars, 3e-3)?;
    for step in 0..150 {
        let (x, y) = images(32, 32 * step)?;
        let loss =
            candle_nn::loss::cross_entropy(&net.forward(&norm.from_pixels(&x)?)?, &Tensor::new(y, &Device::Cpu)?)?;
        opt.backward_step(&loss)?;
    }

    let (pixels, labels) = images(64, 1_000_000)?;
    let x = norm.from_pixels(&pixels)?;
    let subject = Subject::new(&net, norm);
    let right = subject.predict(&x)?.iter().zip(&labels).filter(|(p, l)| p == l).count();
    println!("accuracy on 64 new images: {right}/64");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for method in [Method::GradCam, Method::ScoreCam] {
        let maps = explain(method.build(&MethodOptions::default()).as_ref(), &subject, &x, &labels)?.upsampled;
        let y = class_probabilities(&net.logits(&x)?, &labels)?;
        let o = class_probabilities(&net.logits(&explanation_images(&x, &maps, &norm)?)?, &labels)?;
        let c = confidence(&y, &o);
        let causal = |mode| -> Result<f64> {
            let curves = causal_curves(
                &mut |b| net.logits(b),
                &x,
                &maps,
                &labels,
                mode,
                CausalVariant::Authors,
                InsertionBlur::Gkern,
                64,
            )?;
            Ok(100.0 * mean(&curves.iter().map(|c| auc(c)).collect::<Vec<_>>()))
        };
        let (ins, del) = (causal(CausalMode::Insertion)?, causal(CausalMode::Deletion)?);
        let (ad, ag, ai) = (mean(&c.drop), mean(&c.gain), mean(&c.increase));
        println!("{method:<10} AD↓ {ad:5.2}  AG↑ {ag:5.2}  AI↑ {ai:5.2}  insertion↑ {ins:5.2}  deletion↓ {del:5.2}");
    }
    Ok(())
}
