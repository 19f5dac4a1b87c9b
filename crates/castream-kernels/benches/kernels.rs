//! Fast vs Candle kernels on backbone-sized shapes. `cargo bench -p castream-kernels`; set
//! `RAYON_NUM_THREADS` to fix the thread count. Median of a few runs after a warm-up; backward
//! times are `y.backward()` on an already built graph (so forward excluded), "n/a" where candle
//! has no backward for the op.

use candle_core::{Device, Result, Tensor, Var};
use castream_kernels::{conv2d, max_pool2d, upsample_bilinear2d, Conv2dParams, Kernels};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn uniform(dims: &[usize], seed: u64) -> Tensor {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..dims.iter().product()).map(|_| r.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Median milliseconds of `runs` calls after one warm-up.
fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Option<f64> {
    f().ok()?;
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Some(ms[runs / 2])
}

fn row(name: &str, flops: Option<f64>, fast: Option<f64>, candle: Option<f64>) {
    let ms = |t: Option<f64>| t.map_or("n/a".into(), |t| format!("{t:.2}"));
    let gf = |t: Option<f64>| match (flops, t) {
        (Some(f), Some(t)) => format!("{:.1}", f / t / 1e6),
        _ => "-".into(),
    };
    let up = match (fast, candle) {
        (Some(f), Some(c)) => format!("{:.1}x", c / f),
        _ => "-".into(),
    };
    println!("| {name} | {} | {} | {} | {} | {up} |", ms(fast), gf(fast), ms(candle), gf(candle));
}

/// (label, batch, c_in, c_out, size, kernel, stride, padding, groups)
type ConvCase = (&'static str, usize, usize, usize, usize, usize, usize, usize, usize);

fn conv_rows(&(label, b, ci, co, hw, k, s, p, g): &ConvCase, runs: usize) {
    let x = uniform(&[b, ci, hw, hw], 1);
    let w = uniform(&[co, ci / g, k, k], 2);
    let params = Conv2dParams { stride: s, padding: p, groups: g };
    let o = (hw + 2 * p - k) / s + 1;
    let flops = 2.0 * (b * co * o * o * (ci / g) * k * k) as f64;
    let fwd = |kind| time(runs, || conv2d(&x, &w, None, params, kind).map(|_| ()));
    let (ff, fc) = (fwd(Kernels::Fast), fwd(Kernels::Candle));
    row(&format!("{label} fwd"), Some(flops), ff, fc);
    let bwd = |kind| {
        let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let y = conv2d(xv.as_tensor(), wv.as_tensor(), None, params, kind).unwrap();
        time(runs, || y.backward().map(|_| ()))
    };
    let (bf, bc) = (bwd(Kernels::Fast), bwd(Kernels::Candle));
    row(&format!("{label} bwd (dx+dw)"), Some(2.0 * flops), bf, bc);
    let step = |f: Option<f64>, b: Option<f64>| Some(f? + b?);
    row(&format!("{label} fwd+bwd"), Some(3.0 * flops), step(ff, bf), step(fc, bc));
    if let (Some(f), Some(b)) = (ff, bf) {
        println!("| {label} fwd+bwd / fwd (fast) | {:.2} | | | | |", (f + b) / f);
    }
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    println!("| case | fast ms | fast GFLOP/s | candle ms | candle GFLOP/s | speed-up |");
    println!("|---|---:|---:|---:|---:|---:|");
    let convs: &[ConvCase] = &[
        ("3x3 B64 64ch 32x32", 64, 64, 64, 32, 3, 1, 1, 1),
        ("3x3 B8 128ch 28x28", 8, 128, 128, 28, 3, 1, 1, 1),
        ("3x3 B8 256ch 14x14", 8, 256, 256, 14, 3, 1, 1, 1),
        ("3x3/2 B8 128->256ch 28x28", 8, 128, 256, 28, 3, 2, 1, 1),
        ("3x3 B1 64ch 56x56", 1, 64, 64, 56, 3, 1, 1, 1),
        ("7x7/2 stem B8 3->64ch 224x224", 8, 3, 64, 224, 7, 2, 3, 1),
        ("1x1 B8 256->256ch 14x14", 8, 256, 256, 14, 1, 1, 0, 1),
        ("1x1/2 B8 128->256ch 28x28", 8, 128, 256, 28, 1, 2, 0, 1),
        ("dw 7x7 B8 96ch 56x56", 8, 96, 96, 56, 7, 1, 3, 96),
        ("dw 7x7 B64 64ch 16x16", 64, 64, 64, 16, 7, 1, 3, 64),
    ];
    for c in convs {
        conv_rows(c, 5);
    }

    let x = uniform(&[8, 64, 112, 112], 3);
    let pool = |kind| time(10, || max_pool2d(&x, 3, 2, 1, kind).map(|_| ()));
    row("max-pool 3x3/2 p1 B8 64ch 112x112 fwd", None, pool(Kernels::Fast), pool(Kernels::Candle));
    let pool_bwd = |kind| {
        let xv = Var::from_tensor(&x).unwrap();
        let y = max_pool2d(xv.as_tensor(), 3, 2, 1, kind).unwrap();
        time(10, || y.backward().map(|_| ()))
    };
    row("max-pool 3x3/2 p1 B8 64ch 112x112 bwd", None, pool_bwd(Kernels::Fast), pool_bwd(Kernels::Candle));

    let x = uniform(&[8, 64, 28, 28], 4);
    let up = |kind| time(10, || upsample_bilinear2d(&x, 112, 112, kind).map(|_| ()));
    row("bilinear B8 64ch 28->112 fwd", None, up(Kernels::Fast), up(Kernels::Candle));
    let up_bwd = |kind| {
        let xv = Var::from_tensor(&x).unwrap();
        let y = upsample_bilinear2d(xv.as_tensor(), 112, 112, kind).unwrap();
        time(10, || y.backward().map(|_| ()))
    };
    row("bilinear B8 64ch 28->112 bwd", None, up_bwd(Kernels::Fast), up_bwd(Kernels::Candle));
}
