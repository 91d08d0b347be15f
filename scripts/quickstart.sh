#!/usr/bin/env bash
# Installs dependencies, builds Release and runs the main job: Python code generation with the
# bundled demo model (models/demo, trained from scratch by this repository's trainer on Debian's
# Python standard library) run as P = 4 parallel streams through its adapter. No download.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
MODEL=${PARSCALE_DEMO_MODEL:-models/demo}
ADAPTER=${PARSCALE_DEMO_ADAPTER:-models/demo/adapter-p4.safetensors}
# The prompt ends with a newline, as a line of source does (a model of source code continues a
# `def` line on the next line; ending a prompt mid-line or in spaces makes it invent odd tokens).
PROMPT=${PARSCALE_DEMO_PROMPT:-$'def fibonacci(n):\n'}
echo "== parscale generate --model $MODEL --adapter $ADAPTER (P = 4 streams)"
build/parscale generate --model "$MODEL" --adapter "$ADAPTER" --prompt "$PROMPT" \
    --max-tokens 80 --temperature 0.7 --top-k 40 --seed 1 --stats
