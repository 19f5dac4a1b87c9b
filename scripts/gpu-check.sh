#!/usr/bin/env bash
# The GPU check of the paper profile, for a machine with an NVIDIA GPU and driver:
#  1. builds castream with `--features cuda` (scripts/cuda-env.sh provides the toolkit if there is
#     no system one);
#  2. compares CPU and CUDA on the miniature ImageNet: GAP and CA logits, Grad-CAM and Score-CAM
#     maps, table2's metrics (tolerances in crates/castream-cli/tests/cli/gpu.rs), and prints the
#     GPU's images/s for a ResNet-50 forward, a stream training step and Score-CAM;
#  3. runs the whole paper-profile sequence on `--device cuda` (scripts/paper-smoke.sh).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU or driver here (nvidia-smi fails); run it on a GPU machine" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
export RUST_BACKTRACE=0

echo "== CPU vs CUDA on the fixture, and GPU throughput"
cargo test --release -p castream-cli --features cuda --test cli gpu:: -- --nocapture

echo "== the paper profile on --device cuda"
CASTREAM_FEATURES=cuda DEVICE=cuda bash scripts/paper-smoke.sh
echo "gpu-check: passed"
