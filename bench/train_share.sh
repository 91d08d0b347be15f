#!/usr/bin/env bash
# Training throughput on bench/bench_config.json (H 256, 4 layers, I 704, V 8192; batch 4 x 256),
# as tokens/s, model GFLOP/s and share of the fp32 FMA peak that `parscale bench` probes with the
# same thread count. Rows: this build, this build with --activation-memory 0 (recompute each layer
# in the backward), and optionally another binary (e.g. an older build) for comparison.
# Usage: bench/train_share.sh [BUILD_DIR] [OTHER_BINARY]     (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build}/parscale
other=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" init --config bench/bench_config.json --out "$tmp/model" --seed 0 2>/dev/null
# Model FLOPs per token (docs/TRAINING.md): full training P = 1; frozen backbone P = 4, T = 16.
FULL=31.8e6
FROZEN=64.2e6
tok_s() { "$@" 2>&1 | tail -1 | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_second'])"; }
for t in 1 2; do
  peak=$("$bin" bench --shape tiny --threads $t --decode-steps 1 --prompt-len 8 --json 2>/dev/null |
         python3 -c "import json,sys; print(json.load(sys.stdin)['machine']['fma_peak_gflops'])")
  echo "threads $t: fp32 FMA peak (probe) $peak GFLOP/s; $(uptime | sed 's/.*load/load/')"
  rows=("this build|$bin|" "this build, recompute|$bin|--activation-memory 0")
  [ -n "$other" ] && rows+=("other: $other|$other|")
  for row in "${rows[@]}"; do
    IFS='|' read -r name b extra <<< "$row"
    f=$(tok_s "$b" train --model "$tmp/model" --bench --train all --steps 6 --batch 4 --seq-len 256 --threads $t --no-progress $extra)
    z=$(tok_s "$b" train --model "$tmp/model" --bench --streams 4 --prefix-tokens 16 --steps 4 --batch 4 --seq-len 256 --threads $t --no-progress $extra)
    python3 -c "
p, f, z = $peak, $f, $z
print(f'  {\"$name\":24s} full P=1 {f:6.0f} tok/s {f*$FULL/1e9:6.1f} GFLOP/s {100*f*$FULL/1e9/p:5.1f} % | frozen P=4 {z:6.0f} tok/s {z*$FROZEN/1e9:6.1f} GFLOP/s {100*z*$FROZEN/1e9/p:5.1f} %')"
  done
done
