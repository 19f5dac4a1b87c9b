#!/usr/bin/env bash
# The paper profile's commands, end to end, on a miniature ImageNet built in a temporary folder
# (`castream paper-fixture`): every target pending without its streams, `train-stream` for every
# stream recipe, then every paper-profile target, and `explain` with a trained stream. Exits 0
# when all of it works. DEVICE=cuda runs on the GPU (with CASTREAM_FEATURES=cuda); KEEP=1 keeps
# the folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
device="${DEVICE:-cpu}"
features=()
[[ -n "${CASTREAM_FEATURES:-}" ]] && features=(--features "$CASTREAM_FEATURES")
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p castream-cli "${features[@]}"
castream="$repo/target/release/castream"
dir="$(mktemp -d "${TMPDIR:-/tmp}/castream-paper-smoke.XXXXXX")"
if [[ "${KEEP:-0}" == 1 ]]; then echo "paper smoke: working in $dir (kept)"; else trap 'rm -rf "$dir"' EXIT; fi

# The fixture is made of the quick profile's scenes: install their datasets if they are missing.
bash "$repo/scripts/setup-data.sh" > /dev/null
(cd "$repo" && "$castream" paper-fixture "$dir" > /dev/null)
cd "$dir"
export HF_HUB_CACHE="$dir/hf-cache" HF_HUB_OFFLINE=1
unset HF_HOME

echo "== before training: every target names what it needs"
if "$castream" reproduce all --profile paper > pending.log 2>&1; then
  echo "paper smoke: the paper profile ran without its trained streams" >&2; exit 1
fi
pending="$(grep -c "pending: not yet available, needs" pending.log || true)"
targets="$(ls experiments/*.toml | grep -vc paper-values)"
if [[ "$pending" != "$((targets - 1))" ]]; then  # every target but the data card
  echo "paper smoke: $pending of $((targets - 1)) targets named what they lack:" >&2; cat pending.log >&2; exit 1
fi
echo "$pending targets pending, each naming its missing streams"

echo "== train-stream"
for recipe in experiments/streams/*.toml; do
  "$castream" train-stream "$recipe" --device "$device"
done

echo "== cargo xtask reproduce all --profile paper, from the repository, on the fixture's specs"
(cd "$repo" && cargo xtask reproduce all --profile paper --device "$device" \
  --experiments "$dir/experiments" --results "$dir/results")

echo "== explain with a trained stream"
"$castream" explain --image data/val/ILSVRC2012_val_00000001.JPEG --stream streams/resnet.safetensors \
  --pooling gap,ca --method grad-cam,score-cam --out explained --device "$device"

echo "paper smoke: passed ($device)"
