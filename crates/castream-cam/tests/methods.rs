//! Every method against an independent computation on tiny random networks: finite differences,
//! brute-force loops of the published formulas, one-image-at-a-time runs and known identities.

use candle_core::{Device, Tensor};
use castream_backbones::{Arch, BackboneConfig, Model, Stem};
use castream_cam::gradients::target_gradients;
use castream_cam::method::weighted_sum;
use castream_cam::methods::{AblationCam, GradCamPlusPlus, OptiCam, ScoreCam};
use castream_cam::{explain, upsample, CamMethod, Method, MethodOptions, Pooling, Subject};
use castream_cam::{resize, upsample_align_corners, Upsampling};
use castream_data::Normalisation;
use castream_stream::{CaModel, StreamConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLASSES: usize = 3;
const SIDE: usize = 32;

fn backbone(seed: u64) -> Model {
    let config =
        BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, CLASSES) };
    Model::new(config, seed, &Device::Cpu).unwrap()
}

fn ca_model() -> CaModel {
    CaModel::new(backbone(1), &StreamConfig::default(), 2).unwrap()
}

fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * 3 * SIDE * SIDE).map(|_| rng.random_range(-1.5f32..1.5)).collect();
    Tensor::from_vec(v, (n, 3, SIDE, SIDE), &Device::Cpu).unwrap()
}

const NORM: Normalisation = Normalisation { mean: [0.4, 0.5, 0.6], std: [0.2, 0.25, 0.3] };

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `y_c` with the target activation replaced by each of `variants` (rows of a batch built from one image).
fn logits_of_variants(subject: &Subject, x: &Tensor, variants: &[Vec<f32>], class: u32) -> Vec<f32> {
    let acts = subject.activations(x).unwrap();
    let shape = acts.target.dims().to_vec();
    let ids = vec![0u32; variants.len()];
    let rows = acts.select(&ids).unwrap();
    let a = Tensor::from_vec(variants.concat(), (variants.len(), shape[1], shape[2], shape[3]), &Device::Cpu).unwrap();
    let logits = subject.logits_from(&rows, &a).unwrap();
    logits.to_vec2::<f32>().unwrap().iter().map(|r| r[class as usize]).collect()
}

fn check_grad_cam_against_finite_differences(subject: &Subject) {
    let x = images(1, 7);
    let class = 1u32;
    let a = flat(&subject.activations(&x).unwrap().target);
    let (_, k, h, w) = subject.activations(&x).unwrap().target.dims4().unwrap();
    let eps = 1e-2f32;
    let mut variants = Vec::new();
    for i in 0..a.len() {
        for sign in [1.0, -1.0] {
            let mut v = a.clone();
            v[i] += sign * eps;
            variants.push(v);
        }
    }
    let y = logits_of_variants(subject, &x, &variants, class);
    let fd: Vec<f32> = (0..a.len()).map(|i| (y[2 * i] - y[2 * i + 1]) / (2.0 * eps)).collect();
    // Grad-CAM's weights: the finite-difference gradient averaged over positions.
    let weights: Vec<f32> =
        (0..k).map(|c| fd[c * h * w..(c + 1) * h * w].iter().sum::<f32>() / (h * w) as f32).collect();
    let t = target_gradients(subject, &x, &[class]).unwrap();
    let grads = flat(&t.gradients);
    assert!(max_abs_diff(&grads, &fd) <= 2e-3 * max_abs(&fd).max(1e-3), "gradient vs finite differences");
    let expected = weighted_sum(&Tensor::from_vec(weights, (1, k), &Device::Cpu).unwrap(), &t.activations).unwrap();
    let got = Method::GradCam.build(&MethodOptions::default()).saliency(subject, &x, &[class]).unwrap();
    let (e, g) = (flat(&expected), flat(&got));
    assert!(max_abs(&e) > 0.0, "a map of zeros proves nothing");
    assert!(max_abs_diff(&e, &g) <= 2e-3 * max_abs(&e), "Grad-CAM {g:?} vs finite differences {e:?}");
}

#[test]
fn grad_cam_weights_are_the_averaged_finite_difference_gradient_gap() {
    let model = backbone(3);
    check_grad_cam_against_finite_differences(&Subject::of(Pooling::Gap(&model), NORM));
}

/// A model castream does not define: two candle-nn convolutions, a ReLU, global average pooling
/// and a linear classifier, explained at the second convolution.
struct Foreign {
    conv1: candle_nn::Conv2d,
    conv2: candle_nn::Conv2d,
    fc: candle_nn::Linear,
}

impl Foreign {
    fn new(seed: u64) -> Foreign {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t = |shape: &[usize]| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let cfg = candle_nn::Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
        Foreign {
            conv1: candle_nn::Conv2d::new(t(&[6, 3, 3, 3]), Some(t(&[6])), cfg),
            conv2: candle_nn::Conv2d::new(t(&[8, 6, 3, 3]), Some(t(&[8])), cfg),
            fc: candle_nn::Linear::new(t(&[CLASSES, 8]), Some(t(&[CLASSES]))),
        }
    }
}

impl castream_cam::CamModel for Foreign {
    fn activations(&self, x: &Tensor) -> candle_core::Result<castream_cam::Activations> {
        use candle_core::Module;
        let a = self.conv2.forward(&self.conv1.forward(x)?.relu()?)?.relu()?;
        Ok(castream_cam::Activations::of(a.detach()))
    }
    fn logits_from(&self, _: &castream_cam::Activations, a: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        self.fc.forward(&a.mean((2, 3))?)
    }
    // The whole forward, differentiable in the input (Opti-CAM optimises through it).
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        self.fc.forward(&self.conv2.forward(&self.conv1.forward(x)?.relu()?)?.relu()?.mean((2, 3))?)
    }
    fn class_weights(&self) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.fc.weight().clone()))
    }
}

#[test]
fn a_model_castream_does_not_define_is_explained_by_every_activation_method() {
    let model = Foreign::new(17);
    let subject = Subject::new(&model, NORM);
    check_grad_cam_against_finite_differences(&subject);
    // Its head is linear on the pooled activation, so CAM applies and Grad-CAM equals it.
    let x = images(2, 19);
    let opts = MethodOptions { chunk: 7, ..MethodOptions::default() };
    let cam = flat(&explain(Method::Cam.build(&opts).as_ref(), &subject, &x, &[0, 2]).unwrap().maps);
    let grad = flat(&explain(Method::GradCam.build(&opts).as_ref(), &subject, &x, &[0, 2]).unwrap().maps);
    assert!(max_abs(&cam) > 0.5 && max_abs_diff(&cam, &grad) <= 1e-4, "CAM {cam:?} vs Grad-CAM {grad:?}");
    let k = subject.activations(&x).unwrap().target.dim(1).unwrap();
    let expected =
        score_cam_loop(&subject, &x.narrow(0, 0, 1).unwrap(), 1, &(0..k).collect::<Vec<_>>(), Upsampling::HalfPixel);
    let got = flat(
        &ScoreCam { chunk: 3, channels: None, upsampling: Upsampling::HalfPixel }
            .saliency(&subject, &x.narrow(0, 0, 1).unwrap(), &[1])
            .unwrap(),
    );
    assert!(max_abs_diff(&expected, &got) <= 1e-4 * max_abs(&expected).max(1e-6), "Score-CAM {got:?} vs {expected:?}");
    for m in Method::ALL.into_iter().filter(|&m| m != Method::RawAttention) {
        let e = explain(m.build(&opts).as_ref(), &subject, &x, &[0, 1]).unwrap();
        assert_eq!(e.upsampled.dims(), &[2, SIDE, SIDE], "{m}");
    }
    let err = explain(Method::RawAttention.build(&opts).as_ref(), &subject, &x, &[0, 1]).unwrap_err();
    assert!(err.to_string().contains("attention"), "{err}");
}

#[test]
fn grad_cam_weights_are_the_averaged_finite_difference_gradient_ca() {
    // Through CA-4 the score is no longer linear in A: the attention's softmax bends it.
    let model = ca_model();
    check_grad_cam_against_finite_differences(&Subject::of(Pooling::Ca(&model), NORM));
}

#[test]
fn grad_cam_plus_plus_matches_a_loop_over_its_formula() {
    let model = ca_model();
    let subject = Subject::of(Pooling::Ca(&model), NORM);
    let x = images(2, 11);
    let classes = [2u32, 0];
    let t = target_gradients(&subject, &x, &classes).unwrap();
    let (b, k, h, w) = t.activations.dims4().unwrap();
    let (a, g) = (flat(&t.activations), flat(&t.gradients));
    let mut expected = vec![0f64; b * h * w];
    for i in 0..b {
        for c in 0..k {
            let base = (i * k + c) * h * w;
            let sum_a: f64 = (0..h * w).map(|p| a[base + p] as f64).sum();
            let mut weight = 0f64;
            for p in 0..h * w {
                let gp = g[base + p] as f64;
                if gp != 0.0 {
                    let alpha = gp * gp / (2.0 * gp * gp + sum_a * gp * gp * gp + 1e-6);
                    weight += gp.max(0.0) * alpha;
                }
            }
            for p in 0..h * w {
                expected[i * h * w + p] += weight * a[base + p] as f64;
            }
        }
    }
    let expected: Vec<f32> = expected.into_iter().map(|v| v as f32).collect();
    let got = flat(&GradCamPlusPlus { eps: 1e-6 }.saliency(&subject, &x, &classes).unwrap());
    assert!(max_abs(&expected) > 0.0);
    assert!(max_abs_diff(&expected, &got) <= 1e-4 * max_abs(&expected), "{got:?} vs {expected:?}");
}

/// Score-CAM's weights one channel at a time, with slices and loops instead of the batched tensors.
fn score_cam_loop(subject: &Subject, x: &Tensor, class: u32, channels: &[usize], upsampling: Upsampling) -> Vec<f32> {
    let a = subject.activations(x).unwrap().target;
    let (_, k, _, _) = a.dims4().unwrap();
    let mut weights = vec![0f32; k];
    let mut pixels = flat(x);
    NORM.invert(&mut pixels);
    for &c in channels {
        let channel = a.narrow(1, c, 1).unwrap().squeeze(0).unwrap();
        let up = match upsampling {
            Upsampling::HalfPixel => flat(&upsample(&channel, SIDE, SIDE).unwrap()),
            Upsampling::AlignCorners => {
                align_corners_loop(&flat(&channel), channel.dim(1).unwrap(), channel.dim(2).unwrap(), SIDE)
            }
        };
        let (lo, hi) = up.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let mask: Vec<f32> = up.iter().map(|v| (v - lo) / (hi - lo + 1e-7)).collect();
        let mut masked: Vec<f32> = pixels.iter().enumerate().map(|(i, p)| p * mask[i % (SIDE * SIDE)]).collect();
        NORM.apply(&mut masked);
        let input = Tensor::from_vec(masked, (1, 3, SIDE, SIDE), &Device::Cpu).unwrap();
        let logits = flat(&subject.logits(&input).unwrap());
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        weights[c] = (logits[class as usize] - max).exp() / total;
    }
    flat(&weighted_sum(&Tensor::from_vec(weights, (1, k), &Device::Cpu).unwrap(), &a).unwrap())
}

/// Bilinear resizing of an `h x w` plane to `side x side` with `align_corners = true`, pixel by pixel.
fn align_corners_loop(plane: &[f32], h: usize, w: usize, side: usize) -> Vec<f32> {
    let coordinate =
        |o: usize, len: usize| if side > 1 { o as f64 * (len - 1) as f64 / (side - 1) as f64 } else { 0.0 };
    let mut out = Vec::with_capacity(side * side);
    for oy in 0..side {
        for ox in 0..side {
            let (y, x) = (coordinate(oy, h), coordinate(ox, w));
            let (y0, x0) = (y.floor() as usize, x.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (y - y0 as f64, x - x0 as f64);
            let at = |r: usize, c: usize| plane[r * w + c] as f64;
            let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1))
                + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1));
            out.push(v as f32);
        }
    }
    out
}

#[test]
fn align_corners_upsampling_keeps_the_corners_and_matches_a_pixel_loop() {
    // 2x2 -> 3x3: corners kept, edges the midpoints, the centre the mean.
    let t = Tensor::from_vec(vec![0f32, 4.0, 8.0, 12.0], (1, 2, 2), &Device::Cpu).unwrap();
    let got = flat(&upsample_align_corners(&t, 3, 3).unwrap());
    assert_eq!(got, [0.0, 2.0, 4.0, 4.0, 6.0, 8.0, 8.0, 10.0, 12.0]);
    // A row of 2 to 4: samples at 0, 1/3, 2/3, 1 of the way; half-pixel centres clamp the ends.
    let row = Tensor::from_vec(vec![0f32, 3.0], (1, 1, 2), &Device::Cpu).unwrap();
    assert_eq!(flat(&upsample_align_corners(&row, 1, 4).unwrap()), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(flat(&upsample(&row, 1, 4).unwrap()), [0.0, 0.75, 2.25, 3.0]);
    let x = images(1, 3).narrow(1, 0, 1).unwrap().squeeze(0).unwrap().narrow(1, 0, 5).unwrap().narrow(2, 0, 7).unwrap();
    let x = x.contiguous().unwrap();
    let expected = align_corners_loop(&flat(&x), 5, 7, SIDE);
    let got = flat(&upsample_align_corners(&x, SIDE, SIDE).unwrap());
    assert!(max_abs_diff(&expected, &got) <= 1e-5 * max_abs(&expected), "{got:?}");
}

#[test]
fn resizing_by_matrices_equals_the_kernel_and_has_a_gradient() {
    let maps =
        images(2, 31).narrow(1, 0, 1).unwrap().squeeze(1).unwrap().narrow(1, 0, 7).unwrap().narrow(2, 0, 5).unwrap();
    let maps = maps.contiguous().unwrap();
    let (ours, kernel) = (flat(&resize(&maps, 29, 33, false).unwrap()), flat(&upsample(&maps, 29, 33).unwrap()));
    assert!(max_abs_diff(&ours, &kernel) <= 1e-5 * max_abs(&kernel), "{}", max_abs_diff(&ours, &kernel));
    // The resize's gradient, which candle's own resize lacks, against central differences.
    let v = candle_core::Var::from_tensor(&maps).unwrap();
    let probe = images(2, 37).narrow(1, 0, 1).unwrap().squeeze(1).unwrap().narrow(1, 0, 29).unwrap();
    let probe = probe.contiguous().unwrap();
    let f = |m: &Tensor| {
        resize(m, 29, 33, false).unwrap().narrow(2, 0, 32).unwrap().mul(&probe).unwrap().sum_all().unwrap()
    };
    let grad = flat(f(v.as_tensor()).backward().unwrap().get(v.as_tensor()).unwrap());
    let base = flat(&maps);
    for i in [0, 7, 20, 34, 69] {
        let shifted = |d: f32| {
            let mut m = base.clone();
            m[i] += d;
            f(&Tensor::from_vec(m, maps.dims(), &Device::Cpu).unwrap()).to_scalar::<f32>().unwrap()
        };
        let fd = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
        assert!((fd - grad[i]).abs() <= 1e-2 * grad[i].abs().max(1.0), "{i}: {fd} vs {}", grad[i]);
    }
}

#[test]
fn score_cam_matches_a_one_channel_at_a_time_loop() {
    for ca in [false, true] {
        let (gap, ca_m) = (backbone(5), ca_model());
        let pooling = if ca { Pooling::Ca(&ca_m) } else { Pooling::Gap(&gap) };
        let subject = Subject::of(pooling, NORM);
        let x = images(1, 13);
        let k = subject.activations(&x).unwrap().target.dim(1).unwrap();
        for upsampling in [Upsampling::AlignCorners, Upsampling::HalfPixel] {
            let expected = score_cam_loop(&subject, &x, 2, &(0..k).collect::<Vec<_>>(), upsampling);
            // A chunk that does not divide K exercises the last, partial chunk.
            let got = flat(&ScoreCam { chunk: 5, channels: None, upsampling }.saliency(&subject, &x, &[2]).unwrap());
            assert!(max_abs(&expected) > 0.0);
            let diff = max_abs_diff(&expected, &got);
            assert!(diff <= 1e-4 * max_abs(&expected), "ca={ca} {upsampling:?}: {got:?} vs {expected:?}");
        }
    }
}

#[test]
fn shared_score_cam_equals_each_model_explained_on_its_own() {
    // Two CA models and the GAP network of one frozen backbone (same weights), each explaining its
    // own classes: the shared masked forwards must give every model its own maps, bit for bit (the
    // cell cache does not record whether a map was computed shared).
    let (ca_a, ca_b) = (ca_model(), CaModel::new(backbone(1), &StreamConfig::default(), 7).unwrap());
    let subjects = [
        Subject::of(Pooling::Ca(&ca_a), NORM),
        Subject::of(Pooling::Ca(&ca_b), NORM),
        Subject::of(Pooling::Gap(&ca_a.backbone), NORM),
    ];
    let x = images(2, 19);
    let classes = vec![vec![2, 0], vec![1, 1], vec![0, 2]];
    let method = ScoreCam { chunk: 5, channels: None, upsampling: Upsampling::AlignCorners };
    let refs: Vec<&Subject> = subjects.iter().collect();
    let shared = castream_cam::explain_shared(&method, &refs, &x, &classes).unwrap();
    assert_eq!(shared.len(), 3);
    for ((subject, classes), got) in subjects.iter().zip(&classes).zip(&shared) {
        let alone = castream_cam::explain(&method, subject, &x, classes).unwrap();
        let (expected, got) = (flat(&alone.maps), flat(&got.maps));
        assert!(max_abs(&expected) > 0.0);
        assert_eq!(got, expected, "shared and alone differ");
    }
    // Different streams give different maps: the heads are not all the first's.
    assert!(max_abs_diff(&flat(&shared[0].maps), &flat(&shared[1].maps)) > 1e-3);
}

#[test]
fn score_cam_channel_subsampling_scores_the_most_active_channels() {
    let model = backbone(5);
    let subject = Subject::of(Pooling::Gap(&model), NORM);
    let x = images(1, 17);
    let a = subject.activations(&x).unwrap().target;
    let means = flat(&a.mean((2, 3)).unwrap());
    let mut order: Vec<usize> = (0..means.len()).collect();
    order.sort_by(|&p, &q| means[q].total_cmp(&means[p]));
    let expected = score_cam_loop(&subject, &x, 0, &order[..6], Upsampling::AlignCorners);
    let got = flat(
        &ScoreCam { chunk: 4, channels: Some(6), upsampling: Upsampling::AlignCorners }
            .saliency(&subject, &x, &[0])
            .unwrap(),
    );
    assert!(max_abs_diff(&expected, &got) <= 1e-4 * max_abs(&expected).max(1e-6));
}

#[test]
fn ablation_cam_matches_a_one_channel_at_a_time_loop() {
    let model = ca_model();
    let subject = Subject::of(Pooling::Ca(&model), NORM);
    let x = images(1, 19);
    let class = 1u32;
    let a = subject.activations(&x).unwrap().target;
    let (_, k, h, w) = a.dims4().unwrap();
    let base = flat(&a);
    let y0 = logits_of_variants(&subject, &x, std::slice::from_ref(&base), class)[0];
    let weights: Vec<f32> = (0..k)
        .map(|c| {
            let mut v = base.clone();
            v[c * h * w..(c + 1) * h * w].iter_mut().for_each(|e| *e = 0.0);
            (y0 - logits_of_variants(&subject, &x, &[v], class)[0]) / y0
        })
        .collect();
    let expected = flat(&weighted_sum(&Tensor::from_vec(weights, (1, k), &Device::Cpu).unwrap(), &a).unwrap());
    let got = flat(&AblationCam { chunk: 7 }.saliency(&subject, &x, &[class]).unwrap());
    assert!(max_abs(&expected) > 0.0);
    assert!(max_abs_diff(&expected, &got) <= 1e-4 * max_abs(&expected));
}

#[test]
fn batched_maps_equal_one_image_at_a_time_maps() {
    let (gap, ca) = (backbone(9), ca_model());
    let x = images(3, 23);
    let classes = [0u32, 2, 1];
    let options = MethodOptions { chunk: 10, ..MethodOptions::default() };
    for pooling in [Pooling::Gap(&gap), Pooling::Ca(&ca)] {
        let subject = Subject::of(pooling, NORM);
        for m in Method::ALL.into_iter().filter(|m| m.applies_to(pooling.kind())) {
            let method = m.build(&options);
            let batched = flat(&explain(method.as_ref(), &subject, &x, &classes).unwrap().upsampled);
            let plane = SIDE * SIDE;
            for (i, &c) in classes.iter().enumerate() {
                let one =
                    flat(&explain(method.as_ref(), &subject, &x.narrow(0, i, 1).unwrap(), &[c]).unwrap().upsampled);
                let d = max_abs_diff(&batched[i * plane..(i + 1) * plane], &one);
                assert!(d <= 1e-4, "{m} {} image {i}: batched differs by {d}", pooling.kind());
            }
        }
    }
}

#[test]
fn for_a_gap_network_grad_cam_hirescam_and_xgrad_cam_equal_cam() {
    // With GAP and a linear classifier dy_c/dA^k_ij = W_ck / hw at every position, so the
    // gradient methods reduce to CAM up to a positive factor, which normalisation removes.
    let model = backbone(4);
    let subject = Subject::of(Pooling::Gap(&model), NORM);
    let x = images(2, 29);
    let classes = [1u32, 2];
    let cam =
        flat(&explain(Method::Cam.build(&MethodOptions::default()).as_ref(), &subject, &x, &classes).unwrap().maps);
    assert!(max_abs(&cam) > 0.5, "CAM maps are normalised to [0, 1]");
    for m in [Method::GradCam, Method::HiResCam, Method::XGradCam] {
        let got = flat(&explain(m.build(&MethodOptions::default()).as_ref(), &subject, &x, &classes).unwrap().maps);
        assert!(max_abs_diff(&cam, &got) <= 1e-4, "{m} differs from CAM");
    }
}

#[test]
fn constant_activations_give_zero_maps_never_nan() {
    // A backbone with every weight zero: A is constant (zero), gradients and masks degenerate.
    let (gap, ca) = (backbone(2), ca_model());
    for model in [&gap, &ca.backbone] {
        for (_, var) in model.named_vars() {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        }
    }
    let x = images(2, 31);
    for pooling in [Pooling::Gap(&gap), Pooling::Ca(&ca)] {
        let subject = Subject::of(pooling, NORM);
        for m in Method::ALL.into_iter().filter(|m| m.applies_to(pooling.kind())) {
            let e = explain(m.build(&MethodOptions::default()).as_ref(), &subject, &x, &[0, 1]).unwrap();
            for v in flat(&e.maps).into_iter().chain(flat(&e.upsampled)) {
                assert!(v.is_finite() && v.abs() < 1e-5, "{m}: {v} on a constant map");
            }
        }
    }
}

#[test]
fn methods_refuse_the_pooling_they_do_not_explain() {
    let (gap, ca) = (backbone(2), ca_model());
    let x = images(1, 37);
    let opts = MethodOptions::default();
    let err = Method::Cam.build(&opts).saliency(&Subject::of(Pooling::Ca(&ca), NORM), &x, &[0]).unwrap_err();
    assert!(err.to_string().contains("GAP"), "{err}");
    let err = Method::RawAttention.build(&opts).saliency(&Subject::of(Pooling::Gap(&gap), NORM), &x, &[0]).unwrap_err();
    assert!(err.to_string().contains("CA model"), "{err}");
    let err = explain(Method::GradCam.build(&opts).as_ref(), &Subject::of(Pooling::Gap(&gap), NORM), &x, &[0, 1])
        .unwrap_err();
    assert!(err.to_string().contains("one class per image"), "{err}");
}

#[test]
fn explained_maps_are_normalised_and_upsampled_to_the_input() {
    let model = ca_model();
    let subject = Subject::of(Pooling::Ca(&model), NORM);
    let x = images(2, 41);
    for m in [Method::GradCam, Method::RawAttention] {
        let e = explain(m.build(&MethodOptions::default()).as_ref(), &subject, &x, &[0, 1]).unwrap();
        assert_eq!(e.upsampled.dims(), &[2, SIDE, SIDE]);
        for i in 0..2 {
            let v = flat(&e.upsampled.get(i).unwrap());
            let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            assert!(lo >= 0.0 && hi <= 1.0 && hi > 0.5, "{m}: range [{lo}, {hi}]");
        }
    }
}

#[test]
fn opti_cam_objective_increases_on_a_fixed_image() {
    let model = backbone(5);
    let subject = Subject::of(Pooling::Gap(&model), NORM);
    let x = images(1, 23);
    // Small steps: Adam's momentum overshoots at larger ones.
    let o = OptiCam { iterations: 10, learning_rate: 0.002 }.optimise(&subject, &x, &[1]).unwrap();
    assert_eq!(o.history.len(), 11);
    assert!(o.history.windows(2).all(|w| w[1] > w[0]), "{:?}", o.history);
    // Convex weights.
    let w = flat(&o.weights);
    assert!(w.iter().all(|&v| v > 0.0) && (w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

/// Opti-CAM written out: the map, mask and masked image by loops, the objective's gradient by
/// central differences of the class logit, Adam step by step. Returns the min-max normalised map
/// `Σ softmax(u)_k A^k`. (A channel that is zero everywhere has a zero gradient — moving its
/// weight only rescales the map, which the min-max undoes — so differences' noise can move its
/// weight here and not there; it does not show in the map.)
fn opti_cam_loop(subject: &Subject, x: &Tensor, class: u32, iterations: usize, lr: f64) -> Vec<f64> {
    let a = flat(&subject.activations(x).unwrap().target.relu().unwrap());
    let (_, k, h, w) = subject.activations(x).unwrap().target.dims4().unwrap();
    let mut pixels = flat(x);
    NORM.invert(&mut pixels);
    let softmax = |u: &[f64]| -> Vec<f64> {
        let m = u.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = u.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    let objective = |u: &[f64]| -> f64 {
        let weights = softmax(u);
        let map: Vec<f32> =
            (0..h * w).map(|p| (0..k).map(|c| weights[c] * a[c * h * w + p] as f64).sum::<f64>() as f32).collect();
        let up = flat(&upsample(&Tensor::from_vec(map, (1, h, w), &Device::Cpu).unwrap(), SIDE, SIDE).unwrap());
        let (lo, hi) = up.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let mut masked: Vec<f32> =
            pixels.iter().enumerate().map(|(i, p)| p * (up[i % (SIDE * SIDE)] - lo) / (hi - lo + 1e-7)).collect();
        NORM.apply(&mut masked);
        let input = Tensor::from_vec(masked, (1, 3, SIDE, SIDE), &Device::Cpu).unwrap();
        flat(&subject.logits(&input).unwrap())[class as usize] as f64
    };
    let (mut u, mut m, mut v) = (vec![0.5f64; k], vec![0f64; k], vec![0f64; k]);
    let step = 2e-3;
    for t in 1..=iterations {
        // The loss is the negated objective.
        let g: Vec<f64> = (0..k)
            .map(|c| {
                let (mut up, mut down) = (u.clone(), u.clone());
                up[c] += step;
                down[c] -= step;
                -(objective(&up) - objective(&down)) / (2.0 * step)
            })
            .collect();
        for c in 0..k {
            m[c] = 0.9 * m[c] + 0.1 * g[c];
            v[c] = 0.999 * v[c] + 0.001 * g[c] * g[c];
            let (m_hat, v_hat) = (m[c] / (1.0 - 0.9f64.powi(t as i32)), v[c] / (1.0 - 0.999f64.powi(t as i32)));
            u[c] -= lr * m_hat / (v_hat.sqrt() + 1e-8);
        }
    }
    let weights = softmax(&u);
    let map: Vec<f64> = (0..h * w).map(|p| (0..k).map(|c| weights[c] * a[c * h * w + p] as f64).sum()).collect();
    let (lo, hi) = map.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    map.iter().map(|v| (v - lo) / (hi - lo)).collect()
}

#[test]
fn opti_cam_matches_a_loop_with_finite_differences_and_adam_written_out() {
    for ca in [false, true] {
        let (gap, ca_m) = (backbone(5), ca_model());
        let pooling = if ca { Pooling::Ca(&ca_m) } else { Pooling::Gap(&gap) };
        let subject = Subject::of(pooling, NORM);
        let x = images(1, 29);
        let expected = opti_cam_loop(&subject, &x, 2, 3, 0.02);
        let map =
            |iterations| flat(&explain(&OptiCam { iterations, learning_rate: 0.02 }, &subject, &x, &[2]).unwrap().maps);
        let (got, uniform) = (map(3), map(0));
        let gap = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        let diff = gap(&got, &expected);
        assert!(diff <= 2e-3, "ca={ca}: {diff}: {got:?} vs {expected:?}");
        // The steps moved the map well beyond that tolerance.
        let moved = gap(&got, &uniform.iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!(moved > 10.0 * 2e-3, "ca={ca}: the map moved by {moved} only");
    }
}
