# shellcheck shell=bash
# Source this file (`. scripts/cuda-env.sh`) before building with `--features cuda` on a machine
# without a system CUDA toolkit. It
#   - installs (once) NVIDIA's PyPI CUDA 13.4 wheels into a virtual environment at
#     ${CASTREAM_CUDA_VENV:-$HOME/.cache/castream/cuda-venv} (nvcc, nvvm, crt, cudart, nvrtc, cccl,
#     cuBLAS, cuRAND: the versions the `cuda-toolkit==13.4.3` metapackage pins; candle-core 0.11.1's
#     cudarc accepts CUDA up to 13.4, and a 13.5 nvvm with a 13.4 ptxas fails);
#   - gives the linker unversioned names (libcudart.so -> libcudart.so.13, ...);
#   - exports PATH, CUDA_ROOT, CUDA_PATH, LD_LIBRARY_PATH, LIBRARY_PATH and CUDA_COMPUTE_CAP (kept
#     when set, else from nvidia-smi, else 90 = H100).
# Where `nvcc` is already on PATH (a system toolkit) it changes nothing and says so.
# The wheels hold no driver (libcuda): without one, `cargo check`/`cargo build --lib` work and
# executables fail to link with "unable to find library -lcuda" (docs: ENGINEERING notes).

_castream_cuda_env() {
  local say="cuda-env:"
  if [ -z "${CASTREAM_CUDA_ENV_FORCE:-}" ] && command -v nvcc >/dev/null 2>&1; then
    echo "$say nvcc already on PATH ($(command -v nvcc): $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')); nothing changed" >&2
    return 0
  fi

  local venv="${CASTREAM_CUDA_VENV:-$HOME/.cache/castream/cuda-venv}"
  local pins=(
    "nvidia-cuda-nvcc==13.4.92"
    "nvidia-nvvm==13.4.92"
    "nvidia-cuda-crt==13.4.92"
    "nvidia-cuda-runtime==13.4.92"
    "nvidia-cuda-nvrtc==13.4.92"
    "nvidia-cuda-cccl==13.3.4.3.1"
    "nvidia-cublas==13.8.0.4"
    "nvidia-curand==10.4.4.72"
  )
  local marker="$venv/.castream-cuda-pins"
  if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "${pins[*]}" ]; then
    local python
    python="$(command -v python3 || command -v python || true)"
    if [ -z "$python" ]; then
      echo "$say no python3 here to install the CUDA wheels. Fix: install python3 (with venv), or a CUDA toolkit <= 13.4" >&2
      return 1
    fi
    echo "$say installing the CUDA 13.4 wheels into $venv (about 1 GB)" >&2
    if ! { [ -x "$venv/bin/pip" ] || "$python" -m venv "$venv"; }; then
      echo "$say cannot create a virtual environment at $venv. Fix: install python3-venv, or set CASTREAM_CUDA_VENV" >&2
      return 1
    fi
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"; then
      echo "$say pip failed to install ${pins[*]}" >&2
      return 1
    fi
    echo "${pins[*]}" >"$marker"
  fi

  local root
  root="$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n 1)"
  if [ -z "$root" ] || [ ! -x "$root/bin/nvcc" ]; then
    echo "$say no nvcc under $venv/lib/python3*/site-packages/nvidia/cu13. Fix: remove $venv and source this file again" >&2
    return 1
  fi

  # Unversioned names for the linker (the wheels ship libcudart.so.13, libcublas.so.13, ...).
  local lib base
  for lib in "$root"/lib/lib*.so.*; do
    [ -e "$lib" ] || continue
    base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
  done

  if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    local cap=""
    if command -v nvidia-smi >/dev/null 2>&1; then
      cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')"
    fi
    export CUDA_COMPUTE_CAP="${cap:-90}"
  fi

  export CUDA_ROOT="$root"
  export CUDA_PATH="$root"
  case ":$PATH:" in *":$root/bin:"*) ;; *) export PATH="$root/bin:$PATH" ;; esac
  case ":${LD_LIBRARY_PATH:-}:" in *":$root/lib:"*) ;; *) export LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
  case ":${LIBRARY_PATH:-}:" in *":$root/lib:"*) ;; *) export LIBRARY_PATH="$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}" ;; esac
  echo "$say CUDA $("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at $root; CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
}

if ! (return 0 2>/dev/null); then
  echo "cuda-env: source this file (. scripts/cuda-env.sh) so that its exports reach your shell" >&2
  exit 1
fi
_castream_cuda_env
