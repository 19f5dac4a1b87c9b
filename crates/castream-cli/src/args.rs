//! The flags shared by every run of a spec, and their options for the runner.

use std::path::PathBuf;

use castream_data::DeviceChoice;
use castream_experiments::runner::{Mode, Options};
use castream_experiments::spec::Profile;
use clap::Args;

/// The flags of every run of a spec (`reproduce`, `merge`, `slurm submit`).
#[derive(Args, Clone)]
pub struct RunArgs {
    /// `quick` (2 CPU cores, registry data) or `paper` (ImageNet, GPU).
    #[arg(long, default_value = "quick")]
    pub profile: Profile,
    /// Number of evaluation images, overriding the spec.
    #[arg(long)]
    pub images: Option<usize>,
    /// Seed, overriding the spec.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder of the TOML specs.
    #[arg(long, default_value = "experiments")]
    pub experiments: PathBuf,
    /// Root of the results tree.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Where tensors live: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`);
    /// overrides the spec's `device` [default: the spec's, else cpu].
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Images per batch, overriding the spec's `batch_size` (results go beside the reference ones).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Where `--shard` writes its records and `merge` reads them (a filesystem every machine shares).
    #[arg(long, default_value = "target/castream/shards")]
    pub shard_dir: PathBuf,
}

impl RunArgs {
    pub fn options(self, mode: Mode) -> Options {
        Options {
            root: PathBuf::from("."),
            experiments: self.experiments,
            results: self.results,
            profile: self.profile,
            images: self.images,
            seed: self.seed,
            device: self.device,
            batch_size: self.batch_size,
            mode,
            shards: self.shard_dir,
        }
    }
}
