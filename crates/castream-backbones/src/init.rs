//! Seeded parameter initialisation. candle cannot seed its CPU generator, so every parameter draws
//! from its own ChaCha8 stream: the seed picks the key, a stable hash of the parameter's name picks
//! the stream. Adding, removing or reordering layers therefore leaves every other parameter's
//! initial value unchanged, and a run is reproducible from `(seed, name)` alone.
//!
//! The free functions are the building blocks (the CA-Stream crate draws `q_0 ~ N(1, 1)` and
//! Xavier-uniform `W_l` with them); [`Init`] names the schemes torchvision and timm use.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator for parameter `name` under `seed`.
pub fn param_rng(seed: u64, name: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a(name));
    rng
}

/// 64-bit FNV-1a: stable across Rust versions and platforms, unlike `std`'s `DefaultHasher`.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `(fan_in, fan_out)` of a weight `(out, in, k...)` as PyTorch computes them: the channel counts
/// times the receptive field. A 1-d shape counts as `(n, n)`.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, rest @ ..] => {
            let field: usize = rest.iter().product();
            (inp * field, out * field)
        }
    }
}

fn tensor(values: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::from_vec(values, shape, device)
}

/// One standard normal draw (Box–Muller; `1 - u` keeps the logarithm finite).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Element-wise `N(mean, std²)`.
pub fn normal<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], mean: f64, std: f64, device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    tensor((0..n).map(|_| (mean + std * standard_normal(rng)) as f32).collect(), shape, device)
}

/// Element-wise `U(lo, hi)`.
pub fn uniform<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], lo: f64, hi: f64, device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    tensor((0..n).map(|_| (lo + (hi - lo) * rng.random::<f64>()) as f32).collect(), shape, device)
}

/// `N(0, std²)` redrawn until inside the absolute bounds `[lo, hi]` (timm's `trunc_normal_`,
/// whose defaults are `lo = -2, hi = 2`).
pub fn trunc_normal<R: Rng + ?Sized>(
    rng: &mut R,
    shape: &[usize],
    std: f64,
    lo: f64,
    hi: f64,
    device: &Device,
) -> Result<Tensor> {
    if !(lo < 0.0 && hi > 0.0) {
        candle_core::bail!("trunc_normal: bounds [{lo}, {hi}] must contain the mean 0");
    }
    let n = shape.iter().product();
    let draw = |rng: &mut R| loop {
        let v = std * standard_normal(rng);
        if (lo..=hi).contains(&v) {
            return v as f32;
        }
    };
    tensor((0..n).map(|_| draw(rng)).collect(), shape, device)
}

/// Glorot: `U(-b, b)` with `b = sqrt(6 / (fan_in + fan_out))`.
pub fn xavier_uniform<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], device: &Device) -> Result<Tensor> {
    let (fan_in, fan_out) = fans(shape);
    let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
    uniform(rng, shape, -b, b, device)
}

/// He, as torchvision initialises ResNet convolutions: `N(0, 2 / fan_out)`.
pub fn kaiming_normal_fan_out<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], device: &Device) -> Result<Tensor> {
    let (_, fan_out) = fans(shape);
    normal(rng, shape, 0.0, (2.0 / fan_out as f64).sqrt(), device)
}

/// LeCun: `N(0, 1 / fan_in)`.
pub fn lecun_normal<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], device: &Device) -> Result<Tensor> {
    let (fan_in, _) = fans(shape);
    normal(rng, shape, 0.0, (1.0 / fan_in as f64).sqrt(), device)
}

/// An initialisation scheme for one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Constant(f64),
    Normal {
        mean: f64,
        std: f64,
    },
    Uniform {
        lo: f64,
        hi: f64,
    },
    /// timm's `trunc_normal_(std)` with its default absolute bounds ±2.
    TruncNormal {
        std: f64,
    },
    XavierUniform,
    KaimingNormalFanOut,
    LecunNormal,
}

impl Init {
    /// PyTorch's default for `nn.Linear` weight and bias: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    pub fn linear_default(fan_in: usize) -> Init {
        let b = 1.0 / (fan_in as f64).sqrt();
        Init::Uniform { lo: -b, hi: b }
    }

    /// The initial value of parameter `name` of the given shape under `seed`.
    pub fn sample(self, seed: u64, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let rng = &mut param_rng(seed, name);
        match self {
            Init::Constant(v) => Tensor::full(v as f32, shape, device),
            Init::Normal { mean, std } => normal(rng, shape, mean, std, device),
            Init::Uniform { lo, hi } => uniform(rng, shape, lo, hi, device),
            Init::TruncNormal { std } => trunc_normal(rng, shape, std, -2.0, 2.0, device),
            Init::XavierUniform => xavier_uniform(rng, shape, device),
            Init::KaimingNormalFanOut => kaiming_normal_fan_out(rng, shape, device),
            Init::LecunNormal => lecun_normal(rng, shape, device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;

    fn stats(t: &Tensor) -> (f64, f64, f32, f32) {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        (mean, var.sqrt(), lo, hi)
    }

    #[test]
    fn draws_have_the_requested_moments_and_bounds() {
        let d = &cpu();
        let (m, s, _, _) = stats(&Init::Normal { mean: 1.0, std: 1.0 }.sample(0, "q0", &[20_000], d).unwrap());
        assert!((m - 1.0).abs() < 0.03 && (s - 1.0).abs() < 0.03, "{m} {s}");
        let (m, s, _, _) = stats(&Init::KaimingNormalFanOut.sample(0, "w", &[64, 8, 3, 3], d).unwrap());
        assert!(m.abs() < 0.01 && (s - (2.0f64 / 576.0).sqrt()).abs() < 0.003, "{m} {s}");
        let (m, s, _, _) = stats(&Init::LecunNormal.sample(0, "w", &[40, 1, 7, 7], d).unwrap());
        assert!(m.abs() < 0.01 && (s - (1.0f64 / 49.0).sqrt()).abs() < 0.005, "{m} {s}");
        let b = (6.0f64 / (100 + 50) as f64).sqrt() as f32;
        let (_, _, lo, hi) = stats(&Init::XavierUniform.sample(0, "w", &[50, 100], d).unwrap());
        assert!(lo >= -b && hi <= b && hi > 0.9 * b && lo < -0.9 * b, "{lo} {hi} {b}");
        let (_, _, lo, hi) = stats(&trunc_normal(&mut param_rng(0, "t"), &[5000], 1.0, -0.5, 0.5, d).unwrap());
        assert!(lo >= -0.5 && hi <= 0.5);
    }

    #[test]
    fn streams_depend_on_seed_and_name_only() {
        let d = &cpu();
        let draw = |seed, name| {
            Init::Normal { mean: 0.0, std: 1.0 }.sample(seed, name, &[8], d).unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(draw(3, "a.weight"), draw(3, "a.weight"));
        assert_ne!(draw(3, "a.weight"), draw(4, "a.weight"));
        assert_ne!(draw(3, "a.weight"), draw(3, "b.weight"));
    }
}
