#!/usr/bin/env bash
# Installs dependencies, builds Release and runs the main job: text generation with the
# bundled ParScale model (no download).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
MODEL=${PARSCALE_DEMO_MODEL:-tests/fixtures/models/ps4_t7_f32_tied_sharded}
echo "== parscale generate --model $MODEL (P = 4 streams)"
build/parscale generate --model "$MODEL" --ids 5,17,3,9 --max-tokens 16 --temperature 0 --ignore-eos --stats
