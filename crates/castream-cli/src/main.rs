//! `castream`: the command-line interface. `cargo xtask …` forwards here in release mode.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use castream_cam::{Method, PoolingKind};
use castream_cli::args::RunArgs;
use castream_cli::explain::{self, ClassChoice, ColourMap, ExplainOptions, Input, ModelSource, SceneRange};
use castream_cli::slurm::SlurmCommand;
use castream_data::DeviceChoice;
use castream_experiments::runner::{self, Listing, Mode, Outcome, Readiness, Shard};
use castream_zoo::quick::TrainOptions;
use castream_zoo::stream_checkpoint::StreamSource;
use castream_zoo::train_stream::{train_stream, TrainStreamOptions};
use castream_zoo::BackboneSpec;
use clap::{ArgGroup, Args, Parser, Subcommand};

/// Every layer allocates its output afresh. glibc's malloc serves those multi-megabyte buffers
/// with `mmap` and returns them on free, so each forward pass page-faults its whole working set
/// again (measured: 40% of a quick ResNet-18 forward); mimalloc keeps and reuses the memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "castream",
    version,
    about = "Reproduce and extend CA-Stream (attention-based pooling for interpretable CNNs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run experiment specs and write results/<profile>/<name>/ (tables, charts, run.json).
    Reproduce {
        /// Spec names (files under the experiments folder without `.toml`), or `all`.
        #[arg(required = true)]
        names: Vec<String>,
        /// Compute only shard K of N of every cell (contiguous runs of whole batches of the
        /// evaluated images) into a record under --shard-dir, publishing nothing; `castream merge`
        /// then publishes the tables (docs/scale-out.md). A rerun shard resumes from its finished cells.
        #[arg(long, value_name = "K/N", conflicts_with = "prepare")]
        shard: Option<Shard>,
        /// Only load the models the spec evaluates (on the quick profile, train and cache its
        /// streams): the job a sharded run waits for.
        #[arg(long)]
        prepare: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Publish the results of a sharded run: checks that every shard's record is present and was
    /// made by the same spec, settings, code, weights and images, then writes the tables, charts
    /// and run.json the whole run writes (docs/scale-out.md). Give the flags the shards were given.
    Merge {
        /// Spec names.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run a spec as a Slurm job array: shards, a merge that waits for them, and the jobs that
    /// train or prepare what the shards need (docs/scale-out.md).
    #[command(subcommand)]
    Slurm(SlurmCommand),
    /// Train the quick profile's GAP backbones (checkpoints/quick/backbones.toml) that are missing.
    TrainBackbones {
        /// Retrain even when a checkpoint from the same recipe exists.
        #[arg(long)]
        retrain: bool,
        /// Continue an interrupted run from its last epoch checkpoint (target/castream/train/).
        #[arg(long)]
        resume: bool,
        /// Train only this backbone of the recipe.
        #[arg(long)]
        only: Option<String>,
        /// Where tensors live: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// Benchmark the backbones: forward and train-step throughput, our kernels vs candle's ops,
    /// and ONNX Runtime on the same weights and input (needs scripts/requirements-bench.txt).
    Bench {
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Rounds per backbone, each timing our forward, our train step and ONNX Runtime's
        /// forward back to back; figures are medians over rounds, ratios medians of each round's
        /// ratio (robust to the machine's speed drifting during the benchmark).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip the ONNX Runtime comparison.
        #[arg(long)]
        no_onnx: bool,
        /// Skip candle's own ops (slow: minutes on the paper-size cases; a profile of ours alone).
        #[arg(long)]
        no_candle: bool,
        /// Only the cases whose label contains this (e.g. `convnext`, `quick`, `resnet50`).
        #[arg(long)]
        only: Option<String>,
        /// Benchmark saliency instead: maps/s of every CAM method and insertion/deletion curves/s
        /// for GAP and CA, with the forward passes they reach as a share of the forward's images/s
        /// and, for the GAP network's forward-only work (Score-CAM, the curves), ONNX Runtime's
        /// bound on the same work (quick ResNet-18 and a paper-size ResNet-50).
        #[arg(long)]
        cam: bool,
        /// Benchmark image decoding instead: JPEG to training and evaluation batches (the CPU
        /// side of stream training on ImageNet).
        #[arg(long, conflicts_with = "cam")]
        decode: bool,
    },
    /// Write saliency overlays of CAM methods for an image file or quick test scenes, and print each
    /// image's prediction.
    Explain(ExplainArgs),
    /// Train a CA-Stream on a frozen pretrained backbone from a recipe (experiments/streams/*.toml):
    /// image files decoded and augmented as it goes, validation and a checkpoint every epoch, and
    /// the trained stream written with its card (docs/paper-profile.md).
    TrainStream {
        /// The recipe file.
        recipe: PathBuf,
        /// Continue from the last epoch checkpoint of this recipe (bit-identical to an uninterrupted run on CPU).
        #[arg(long)]
        resume: bool,
        /// Where tensors live: `cpu`, `cuda` or `cuda:N` (a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// Build a miniature ImageNet in DIR (image folders, val.csv, boxes, small timm-named weights in
    /// an hf-hub cache, stream recipes and the specs pointed at them): the paper profile's test
    /// fixture, used by the end-to-end test and scripts/paper-smoke.sh.
    #[command(hide = true)]
    PaperFixture { dir: PathBuf },
    /// List the specs with their titles and, per profile, whether each can run now (and if not,
    /// what it needs); invalid specs are listed with their error.
    List {
        #[arg(long, default_value = "experiments")]
        experiments: PathBuf,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["image", "scenes"])))]
struct ExplainArgs {
    /// An image file (PNG or JPEG), squashed to the model's input size (64 px for quick backbones).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Quick-profile Fashion-MNIST test scenes: `start..end` (end exclusive) or one index.
    #[arg(long)]
    scenes: Option<SceneRange>,
    /// A shipped quick backbone (checkpoints/quick/<name>.safetensors): trained on 64-px
    /// Fashion-MNIST scenes, so not for photos (see --pretrained).
    #[arg(long, default_value = "resnet18", conflicts_with_all = ["checkpoint", "pretrained", "stream"])]
    backbone: String,
    /// A checkpoint written by castream (`<path>` and its `<path>.json` sidecar); GAP only.
    #[arg(long, conflicts_with_all = ["pretrained", "stream"])]
    checkpoint: Option<PathBuf>,
    /// Pretrained ImageNet weights, as a spec's backbone table (docs/specs.md): `{ arch = "resnet50",
    /// hub = "timm/resnet50.tv_in1k" }` (an hf-hub repository) or `{ arch = "resnet50", file =
    /// "resnet50.safetensors" }` (timm/torchvision-named weights on disk); GAP only.
    #[arg(long, value_parser = explain::parse_pretrained, conflicts_with = "stream")]
    pretrained: Option<BackboneSpec>,
    /// A stream trained by `castream train-stream` (its file, or `hub:owner/name`), explained with
    /// the backbone its card names; `--pooling gap` explains that backbone alone.
    #[arg(long)]
    stream: Option<StreamSource>,
    /// `gap`, `ca` or both (`gap,ca`); `ca` uses the backbone's trained CA-Stream (trained once and cached).
    #[arg(long, value_delimiter = ',', default_value = "gap")]
    pooling: Vec<PoolingKind>,
    /// CAM methods, repeated or comma-separated, by registry key (docs/cam.md): cam, grad-cam,
    /// grad-cam-plus-plus, score-cam, hi-res-cam, x-grad-cam, layer-cam, ablation-cam, raw-attention.
    #[arg(long, value_delimiter = ',', default_value = "grad-cam")]
    method: Vec<Method>,
    /// Score-CAM masked images (Ablation-CAM ablated activations) per forward pass.
    #[arg(long, default_value_t = 128)]
    chunk: usize,
    /// Score-CAM: score only this many channels per image (highest mean activation); default all.
    #[arg(long)]
    channels: Option<usize>,
    /// `predicted`, `ground-truth` (scenes only) or a class index [default: ground-truth for
    /// scenes, predicted for an image file].
    #[arg(long)]
    class: Option<ClassChoice>,
    /// Output folder.
    #[arg(long, default_value = "results/explain")]
    out: PathBuf,
    /// The colour map of the overlays: jet (the paper's), viridis or turbo.
    #[arg(long, alias = "color-map", default_value = "jet")]
    colour_map: ColourMap,
    /// Draw a vertical colour bar (0 to 1) beside each overlay.
    #[arg(long, alias = "color-bar")]
    colour_bar: bool,
    /// Input side in pixels for --image [default: the checkpoint's, 64 for quick backbones].
    #[arg(long)]
    size: Option<usize>,
    /// Screen pixels per image pixel [default: 256 / side, at least 1].
    #[arg(long)]
    scale: Option<usize>,
    /// Where tensors live: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// candle's CPU thread pool (elementwise broadcasts) busy-waits 25,000 spins after every task before
/// it parks; on a 2-core machine that spinning thread takes a core from the rayon workers running
/// our kernels (measured: quick ResNet-18 forward 1,070 -> 1,640 images/s with a limit of 1,000).
/// A value the user set is kept.
const CANDLE_SPIN_LIMIT: (&str, &str) = ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");

/// mimalloc returns freed memory to the OS 10 ms after it is freed (`purge_delay`); each layer's
/// fresh multi-megabyte output then page-faults again and the kernel zeroes it (measured:
/// `clear_page_erms` 4-6% of a quick ResNet-18 forward and train step, 0.4% without purging).
/// Never purging keeps the memory for reuse. mimalloc reads `MIMALLOC_PURGE_DELAY` before `main`,
/// so a value the user set there is kept and otherwise the option is set here; 15 is
/// `mi_option_purge_delay` in mimalloc.h (v2 and v3), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    if std::env::var_os(CANDLE_SPIN_LIMIT.0).is_none() {
        // Before any other thread exists, so changing the environment is sound.
        std::env::set_var(CANDLE_SPIN_LIMIT.0, CANDLE_SPIN_LIMIT.1);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which it allows at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    // Ctrl-C or a termination signal: the run's staging folder goes, published results stay.
    let _ = ctrlc::set_handler(|| {
        castream_data::atomic::abandon_all();
        eprintln!("interrupted: this run's unpublished files are removed; published results are unchanged");
        std::process::exit(130);
    });
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Reproduce { names, shard, prepare, run } => {
            let mode = match (shard, prepare) {
                (Some(shard), _) => Mode::Shard(shard),
                (None, true) => Mode::Prepare,
                (None, false) => Mode::Whole,
            };
            let opts = run.options(mode);
            if names.iter().any(|n| n == "all") {
                let mut pending = 0;
                for (name, outcome) in runner::reproduce_all(&opts)? {
                    match outcome {
                        Outcome::Written { dir, seconds } => {
                            println!("{name:<10} wrote {} ({seconds:.1} s)", dir.display())
                        }
                        Outcome::Pending(p) => {
                            pending += 1;
                            println!("{name:<10} pending: not yet available, needs {}", p.needs)
                        }
                    }
                }
                anyhow::ensure!(
                    pending == 0,
                    "{pending} spec(s) could not run on the {} profile; each is listed above with what it needs",
                    opts.profile
                );
            } else {
                for name in names {
                    let dir = runner::reproduce(&name, &opts)?;
                    match mode {
                        Mode::Shard(shard) => println!("{name}: shard {shard} recorded in {}", dir.display()),
                        Mode::Prepare => println!("{name}: every model it evaluates is loaded and cached"),
                        Mode::Whole | Mode::Merge => println!("{name}: wrote {}", dir.display()),
                    }
                }
            }
            Ok(())
        }
        Command::Merge { names, run } => {
            let opts = run.options(Mode::Merge);
            for name in names {
                let dir = runner::reproduce(&name, &opts)?;
                println!("{name}: merged its shards into {}", dir.display());
            }
            Ok(())
        }
        Command::Slurm(command) => castream_cli::slurm::run(command),
        Command::PaperFixture { dir } => {
            let f = castream_zoo::fixture::build(Path::new("."), &dir)?;
            println!("built the paper fixture in {}; run the paper profile there with", dir.display());
            println!("  export HF_HUB_CACHE={} HF_HUB_OFFLINE=1", std::path::absolute(&f.hub_cache)?.display());
            for recipe in &f.recipes {
                println!("  castream train-stream {}", recipe.display());
            }
            println!("  castream reproduce all --profile paper");
            Ok(())
        }
        Command::TrainStream { recipe, resume, device } => {
            let opts = TrainStreamOptions { device: device.device()?, resume };
            let (path, card) = train_stream(Path::new("."), &recipe, &opts)?;
            println!(
                "wrote {} (validation top-1 {:.2}%, SHA-256 {}); list it in a spec's `streams` to evaluate it",
                path.display(),
                100.0 * card.val_top1,
                card.weights_sha256
            );
            Ok(())
        }
        Command::TrainBackbones { retrain, resume, only, device } => {
            castream_zoo::quick::train_backbones(Path::new("."), &TrainOptions { device, retrain, resume, only })
        }
        Command::Bench { runs, rounds, no_onnx, no_candle, only, cam, decode } => {
            if decode {
                castream_cli::decode_bench::run(runs)
            } else if cam {
                castream_cli::bench::run_cam(Path::new("."), runs, !no_onnx, only.as_deref())
            } else {
                castream_cli::bench::run(Path::new("."), runs, rounds, !no_onnx, !no_candle, only.as_deref())
            }
        }
        Command::Explain(a) => {
            let opts = ExplainOptions {
                device: a.device,
                input: match (a.image, a.scenes) {
                    (Some(path), _) => Input::Image(path),
                    (None, Some(range)) => Input::Scenes(range.0),
                    (None, None) => unreachable!("clap requires --image or --scenes"),
                },
                model: match (a.checkpoint, a.pretrained, a.stream) {
                    (Some(path), _, _) => ModelSource::Checkpoint(path),
                    (None, Some(spec), _) => ModelSource::Pretrained(spec),
                    (None, None, Some(stream)) => ModelSource::Stream(stream),
                    (None, None, None) => ModelSource::Backbone(a.backbone),
                },
                poolings: a.pooling,
                methods: a.method,
                method_options: explain::MethodOptions { chunk: a.chunk, channels: a.channels, ..Default::default() },
                class: a.class,
                out: a.out,
                colour_map: a.colour_map,
                colour_bar: a.colour_bar,
                size: a.size,
                scale: a.scale,
            };
            explain::run(Path::new("."), &opts).map(|_| ())
        }
        Command::List { experiments } => {
            let mut invalid = 0;
            for Listing { name, spec } in runner::list(Path::new("."), &experiments) {
                match spec {
                    Ok((spec, readiness)) => {
                        println!("{name:<12} {}", spec.title);
                        for (profile, r) in readiness {
                            match r {
                                Readiness::Ready => println!("{:<12}   {profile}: can run", ""),
                                Readiness::Pending(p) => println!("{:<12}   {profile}: pending, needs {}", "", p.needs),
                                Readiness::Undefined => {}
                            }
                        }
                    }
                    Err(e) => {
                        invalid += 1;
                        println!("{name:<12} INVALID: {e:#}");
                    }
                }
            }
            anyhow::ensure!(invalid == 0, "{invalid} spec(s) in {} are invalid (listed above)", experiments.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered method and pooling parses from its key on the command line.
    #[test]
    fn every_registry_key_round_trips_through_the_command_line() {
        for method in Method::ALL {
            for pooling in PoolingKind::ALL {
                let args =
                    ["castream", "explain", "--scenes", "0", "--method", method.key(), "--pooling", pooling.key()];
                let Command::Explain(a) = Cli::try_parse_from(args).unwrap().command else { panic!("not explain") };
                assert_eq!((a.method, a.pooling), (vec![method], vec![pooling]));
            }
        }
        let err = Cli::try_parse_from(["castream", "explain", "--scenes", "0", "--method", "gradcam"]).err().unwrap();
        assert!(err.to_string().contains("grad-cam, "), "{err}");
    }
}
