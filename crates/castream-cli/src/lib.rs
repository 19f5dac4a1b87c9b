//! The `castream` commands that are not experiment specs: `explain` (saliency overlays of an image
//! file or test scenes), `bench` (throughput against candle's ops and ONNX Runtime) and its
//! `--decode` case (image files to batches), `slurm` (a spec as Slurm jobs), and the flags of a
//! run (`args`). The binary
//! (`main.rs`) parses the command line and dispatches to these and to castream-experiments.

pub mod args;
pub mod bench;
pub mod decode_bench;
pub mod explain;
pub mod slurm;
