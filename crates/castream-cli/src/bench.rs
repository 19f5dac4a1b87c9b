//! `castream bench`: forward and train-step throughput of each backbone at the quick and paper
//! input sizes, per-stage forward times, our kernels against candle's own ops, and ONNX Runtime
//! on the same architecture, weights and input (`scripts/onnx_bench.py`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, Model};
use castream_data::{DeviceChoice, Normalisation};
use castream_kernels::Kernels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use castream_zoo::quick::load_recipe;

mod cam;
pub use cam::run_cam;

/// The benchmark compares CPU kernels with ONNX Runtime's CPU provider.
const DEVICE: DeviceChoice = DeviceChoice::Cpu;

/// One benchmarked configuration.
pub struct Case {
    pub label: String,
    pub config: BackboneConfig,
    pub batch: usize,
    pub size: usize,
}

/// The cases: the quick backbones at 64 px (batch 64) and the paper's ResNet-50 and ConvNeXt-T at
/// 224 px (batch 8).
pub fn cases(root: &Path) -> Result<Vec<Case>> {
    let mut out: Vec<Case> = load_recipe(root)?
        .backbone
        .into_iter()
        .map(|b| Case { label: format!("{} (quick)", b.name), config: b.model, batch: 64, size: 64 })
        .collect();
    for arch in [Arch::Resnet50, Arch::ConvnextTiny] {
        out.push(Case {
            label: format!("{} (paper)", arch.name()),
            config: BackboneConfig::new(arch, 1000),
            batch: 8,
            size: 224,
        });
    }
    Ok(out)
}

pub(crate) fn input(case: &Case) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = case.batch * 3 * case.size * case.size;
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Ok(Tensor::from_vec(v, (case.batch, 3, case.size, case.size), &DEVICE.device()?)?)
}

/// Median seconds of `runs` calls after one warm-up.
fn median_seconds(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    timed_median(runs, &mut f)
}

/// Median seconds of `runs` (at least one) timed calls.
pub(crate) fn timed_median(runs: usize, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    let t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f().map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    Ok(median(t))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A backbone with random weights (speed does not depend on them), its input and labels; the
/// forward is timed on the frozen network, as evaluation and CAM methods run it.
struct Subject {
    model: Model,
    frozen: Model,
    x: Tensor,
    labels: Tensor,
}

impl Subject {
    fn new(case: &Case, kernels: Kernels) -> Result<Subject> {
        let config = BackboneConfig { kernels, ..case.config.clone() };
        let labels = Tensor::zeros(case.batch, candle_core::DType::U32, &DEVICE.device()?)?;
        let model = Model::new(config, 0, &DEVICE.device()?)?;
        Ok(Subject { frozen: model.frozen()?, model, x: input(case)?, labels })
    }

    fn forward(&self) -> Result<()> {
        self.frozen.net.forward(&self.x, false)?;
        Ok(())
    }

    /// Forward in training mode, cross-entropy loss and backward.
    fn train_step(&self) -> Result<()> {
        let loss = candle_nn::loss::cross_entropy(&self.model.net.forward(&self.x, true)?, &self.labels)?;
        loss.backward()?;
        Ok(())
    }

    /// Multiply-adds of one forward pass.
    fn macs(&self) -> Result<u64> {
        let (logits, macs) = castream_kernels::count_macs(|| self.frozen.net.forward(&self.x, false));
        logits?;
        Ok(macs)
    }

    /// Per-stage forward times: the stem, each stage, and the head, each on its real input.
    fn stages_s(&self, runs: usize) -> Result<[f64; 6]> {
        let net = &self.frozen.net;
        let features = net.stages(&self.x, false)?;
        let mut stages_s = [0.0; 6];
        stages_s[0] = median_seconds(runs, || Ok(net.stem(&self.x, false).map(|_| ())?))?;
        for l in 1..=4 {
            stages_s[l] = median_seconds(runs, || Ok(net.stage(l, &features[l - 1], false).map(|_| ())?))?;
        }
        stages_s[5] = median_seconds(runs, || Ok(net.head(&features[4]).map(|_| ())?))?;
        Ok(stages_s)
    }
}

/// One round of timings, taken back to back: our forward and train step, and ONNX Runtime's
/// forward when it runs.
struct Round {
    forward_s: f64,
    train_s: f64,
    ort_s: Option<f64>,
}

/// The figures of one case: medians over rounds. The ratios are the medians of each round's
/// ratio: this host's speed drifts by up to 1.6x within minutes, and quantities timed minutes
/// apart (ours, then ORT's) would carry that drift into their ratio.
struct Figures {
    forward_s: f64,
    train_s: f64,
    train_per_forward: f64,
    ort_s: Option<f64>,
    ours_per_ort: Option<f64>,
}

impl Figures {
    fn of(rounds: &[Round]) -> Figures {
        let of = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let with_ort: Vec<&Round> = rounds.iter().filter(|r| r.ort_s.is_some()).collect();
        let ort = |f: &dyn Fn(&Round, f64) -> f64| {
            (!with_ort.is_empty()).then(|| median(with_ort.iter().map(|r| f(r, r.ort_s.unwrap_or(f64::NAN))).collect()))
        };
        Figures {
            forward_s: of(&|r| r.forward_s),
            train_s: of(&|r| r.train_s),
            train_per_forward: of(&|r| r.train_s / r.forward_s),
            ort_s: ort(&|_, o| o),
            ours_per_ort: ort(&|r, o| o / r.forward_s),
        }
    }
}

/// ONNX Runtime on the same architecture, weights and input, in a `scripts/onnx_bench.py
/// --serve` process that times its forward on request.
struct Ort {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Ort {
    /// Exports our weights, starts the script (which checks its logits against ours) and waits
    /// until it has warmed up.
    fn start(case: &Case, subject: &Subject, dir: &Path) -> Result<Ort> {
        let ckpt = dir.join(format!("{}.safetensors", case.config.arch.name()));
        let meta = CheckpointMeta {
            config: case.config.clone(),
            classes: Vec::new(),
            normalisation: Normalisation::IMAGENET,
            extra: serde_json::Value::Null,
        };
        subject.model.save(&ckpt, &meta)?;
        let logits = subject.model.net.forward(&subject.x, false)?;
        let raw = |t: &Tensor| -> Result<Vec<u8>> {
            Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        std::fs::write(dir.join("input.bin"), raw(&subject.x)?)?;
        std::fs::write(dir.join("logits.bin"), raw(&logits)?)?;
        let mut child = Command::new("python3")
            .arg("scripts/onnx_bench.py")
            .arg(&ckpt)
            .args(["--batch", &case.batch.to_string(), "--size", &case.size.to_string()])
            .args(["--threads", &rayon::current_num_threads().to_string(), "--json", "--serve", "--check"])
            .arg(dir.join("input.bin"))
            .arg(dir.join("logits.bin"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run python3")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("onnx_bench.py: no pipes to the child process")
        };
        let mut ort = Ort { child, stdin, stdout: BufReader::new(stdout) };
        ort.answer("ready")?;
        Ok(ort)
    }

    /// The next JSON line's field `key`, or the script's last error line if it stopped.
    fn answer(&mut self, key: &str) -> Result<serde_json::Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                e.read_to_string(&mut err)?;
            }
            anyhow::bail!(
                "onnx_bench.py failed ({}); install its requirements with `python3 -m pip install -r scripts/requirements-bench.txt`",
                err.lines().last().unwrap_or("no output")
            );
        }
        let json: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("onnx_bench.py printed {line:?}"))?;
        json.get(key).cloned().with_context(|| format!("onnx_bench.py printed no {key}: {line:?}"))
    }

    /// Median seconds of `runs` forward passes.
    fn seconds(&mut self, runs: usize) -> Result<f64> {
        writeln!(self.stdin, "{}", runs.max(1))?;
        self.stdin.flush()?;
        Ok(self.answer("median_ms")?.as_f64().context("onnx_bench.py: median_ms is not a number")? / 1e3)
    }
}

impl Drop for Ort {
    fn drop(&mut self) {
        // The script would end when its stdin closes; a kill also covers one that hangs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs every case whose label contains `only` (all when `None`) and prints the figures as
/// Markdown tables. Each case is timed in `rounds` rounds of `runs` runs per quantity.
pub fn run(
    root: &Path,
    runs: usize,
    rounds: usize,
    with_onnx: bool,
    with_candle: bool,
    only: Option<&str>,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    println!(
        "threads: {} (RAYON_NUM_THREADS); medians over {rounds} rounds of {runs} runs, ratios per round\n",
        rayon::current_num_threads()
    );
    println!("| backbone | batch x size | GFLOP/img | fwd img/s | fwd GFLOP/s | train img/s | train/fwd | candle fwd img/s | candle train img/s | speed-up fwd / train | ONNX Runtime img/s | ours / ORT |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut stage_rows = Vec::new();
    for case in cases(root)?.into_iter().filter(|c| only.is_none_or(|o| c.label.contains(o))) {
        let ours = Subject::new(&case, Kernels::Fast)?;
        let mut ort =
            if with_onnx { Ort::start(&case, &ours, tmp.path()) } else { Err(anyhow::anyhow!("skipped (--no-onnx)")) };
        ours.forward()?;
        ours.train_step().context("our kernels failed to train the network")?;
        let mut timed = Vec::with_capacity(rounds);
        // A pause before each phase lets the other runtime's idle threads stop spinning.
        let settle = || std::thread::sleep(std::time::Duration::from_millis(100));
        for _ in 0..rounds.max(1) {
            settle();
            let forward_s = timed_median(runs, &mut || ours.forward())?;
            let train_s = timed_median(runs, &mut || ours.train_step())?;
            settle();
            let ort_s = match &mut ort {
                Ok(o) => Some(o.seconds(runs)?),
                Err(_) => None,
            };
            timed.push(Round { forward_s, train_s, ort_s });
        }
        // Stops the script (or keeps why it did not run).
        let ort_note = ort.err().map(|e| e.to_string());
        let fig = Figures::of(&timed);
        let (b, gflop) = (case.batch as f64, 2.0 * ours.macs()? as f64 / 1e9);
        // candle's own ops: slow, timed once.
        let stock = if with_candle { Some(Subject::new(&case, Kernels::Candle)?) } else { None };
        let stock_forward = stock.as_ref().map(|s| median_seconds(1, || s.forward())).transpose()?;
        let stock_train = stock.as_ref().map(|s| median_seconds(1, || s.train_step()).map_err(|e| e.to_string()));
        let (ort_cell, ratio_cell) = match (ort_note, fig.ort_s, fig.ours_per_ort) {
            (None, Some(o), Some(r)) => (format!("{:.1}", b / o), format!("{r:.2}")),
            (note, ..) => (format!("n/a: {}", note.unwrap_or_default()), "–".into()),
        };
        let (stock_forward, forward_speedup) = match stock_forward {
            Some(t) => (format!("{:.1}", b / t), format!("{:.1}", t / fig.forward_s)),
            None => ("–".to_string(), "–".to_string()),
        };
        let (stock_train, train_speedup) = match stock_train {
            Some(Ok(t)) => (format!("{:.1}", b / t), format!("{:.1}", t / fig.train_s)),
            Some(Err(_)) => ("n/a (no max-pool 3x3/2 backward)".to_string(), "–".to_string()),
            None => ("–".to_string(), "–".to_string()),
        };
        println!(
            "| {} | {} x {} | {:.3} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {} / {} | {} | {} |",
            case.label,
            case.batch,
            case.size,
            gflop / b,
            b / fig.forward_s,
            gflop / fig.forward_s,
            b / fig.train_s,
            fig.train_per_forward,
            stock_forward,
            stock_train,
            forward_speedup,
            train_speedup,
            ort_cell,
            ratio_cell
        );
        let stock_stages = stock.as_ref().map(|s| s.stages_s(1)).transpose()?;
        stage_rows.push((case.label.clone(), ours.stages_s(runs)?, stock_stages));
    }
    println!("\nPer-stage forward time, ms (ours / candle's ops):\n");
    println!("| backbone | stem | stage 1 | stage 2 | stage 3 | stage 4 | head |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, ours, stock) in stage_rows {
        let cells: Vec<String> = match stock {
            Some(stock) => ours.iter().zip(stock).map(|(a, b)| format!("{:.1} / {:.1}", a * 1e3, b * 1e3)).collect(),
            None => ours.iter().map(|a| format!("{:.1} / –", a * 1e3)).collect(),
        };
        println!("| {label} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// `v` with three significant digits (at least one decimal), so that 0.0171 maps/s stays readable.
pub(crate) fn significant(v: f64) -> String {
    let decimals = if v > 0.0 { (2 - v.log10().floor() as i32).max(1) } else { 1 };
    format!("{v:.*}", decimals as usize)
}
