//! The `castream` commands that are not experiment specs: `explain` (saliency overlays of an image
//! file or test scenes) and `bench` (throughput against candle's ops and ONNX Runtime). The binary
//! (`main.rs`) parses the command line and dispatches to these and to castream-experiments.

pub mod bench;
pub mod explain;
