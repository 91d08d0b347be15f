#!/usr/bin/env bash
# Training throughput, parscale vs PyTorch (CPU, fp32, same model shape and step: forward,
# cross-entropy, backward, clipping, AdamW). Not part of the test suite.
# Usage: bench/train_bench.sh [BUILD_DIR] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${2:-$(nproc)}
cfg=bench/bench_config.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/parscale" init --config "$cfg" --out "$tmp/model" --seed 0 2>/dev/null
common="--batch 4 --seq-len 256 --threads $threads"
echo "model: $(tr -d '\n' < $cfg)"
echo "== full training, P = 1"
"$build/parscale" train --model "$tmp/model" --bench --train all --steps 6 $common --no-progress
/usr/bin/python3 bench/train_torch.py --config "$cfg" --mode full --steps 4 $common
echo "== frozen backbone, P = 4 (T = 16 prefix tokens)"
"$build/parscale" train --model "$tmp/model" --bench --streams 4 --prefix-tokens 16 --steps 4 $common --no-progress
/usr/bin/python3 bench/train_torch.py --config "$cfg" --streams 4 --prefix-tokens 16 --mode frozen --steps 3 $common
