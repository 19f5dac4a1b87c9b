//! `castream`: the command-line interface. `cargo xtask …` forwards here in release mode.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use castream_experiments::quick::TrainOptions;
use castream_experiments::runner::{self, Options, Outcome};
use castream_experiments::spec::{available_specs, Profile, Spec};
use castream_experiments::targets::missing_parts;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "castream", version, about = "Reproduce and extend CA-Stream (attention-based pooling for interpretable CNNs)")]
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
        #[command(flatten)]
        run: RunArgs,
    },
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
    },
    /// Benchmark the backbones: forward and train-step throughput, our kernels vs candle's ops,
    /// and ONNX Runtime on the same weights and input (needs scripts/requirements-bench.txt).
    Bench {
        /// Timed runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Skip the ONNX Runtime comparison.
        #[arg(long)]
        no_onnx: bool,
        /// Only the cases whose label contains this (e.g. `convnext`, `quick`, `resnet50`).
        #[arg(long)]
        only: Option<String>,
    },
    /// List the specs and whether each can run yet.
    List {
        #[arg(long, default_value = "experiments")]
        experiments: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// `quick` (2 CPU cores, registry data) or `paper` (ImageNet, GPU).
    #[arg(long, default_value = "quick")]
    profile: Profile,
    /// Number of evaluation images, overriding the spec.
    #[arg(long)]
    images: Option<usize>,
    /// Seed, overriding the spec.
    #[arg(long)]
    seed: Option<u64>,
    /// Folder of the TOML specs.
    #[arg(long, default_value = "experiments")]
    experiments: PathBuf,
    /// Root of the results tree.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

fn main() -> ExitCode {
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
        Command::Reproduce { names, run } => {
            let opts = Options {
                root: PathBuf::from("."),
                experiments: run.experiments,
                results: run.results,
                profile: run.profile,
                images: run.images,
                seed: run.seed,
            };
            if names.iter().any(|n| n == "all") {
                for (name, outcome) in runner::reproduce_all(&opts)? {
                    match outcome {
                        Outcome::Written { dir, seconds } => println!("{name:<10} wrote {} ({seconds:.1} s)", dir.display()),
                        Outcome::Pending(p) => println!("{name:<10} pending: not yet available, needs {}", p.needs),
                    }
                }
            } else {
                for name in names {
                    let dir = runner::reproduce(&name, &opts)?;
                    println!("{name}: wrote {}", dir.display());
                }
            }
            Ok(())
        }
        Command::TrainBackbones { retrain, resume, only } => {
            castream_experiments::quick::train_backbones(Path::new("."), &TrainOptions { retrain, resume, only })
        }
        Command::Bench { runs, no_onnx, only } => {
            castream_experiments::bench::run(Path::new("."), runs, !no_onnx, only.as_deref())
        }
        Command::List { experiments } => {
            for name in available_specs(&experiments) {
                let spec = Spec::load(&experiments.join(format!("{name}.toml")))?;
                let status = missing_parts(spec.target).map_or("ready".to_string(), |n| format!("pending: needs {n}"));
                println!("{name:<10} {:<60} {status}", spec.title);
            }
            Ok(())
        }
    }
}
