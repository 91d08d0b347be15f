#!/usr/bin/env bash
# Usage: scripts/soak.sh [minutes] [clients]   (default 10 minutes, 4 concurrent clients)
# Soak test of `parscale serve` under ASan + UBSan: builds build-asan/parscale (or reuses it),
# serves the demo model with its P = 2 and P = 4 adapters on 127.0.0.1 (a free port), drives it
# with scripts/soak.mjs (valid completions / chat, streaming or not, mixed P; malformed bodies;
# oversized bodies; slow senders and readers; mid-stream disconnects) for the given minutes, then
# stops it with SIGTERM. Prints requests served, responses by status, 5xx, unexpected outcomes,
# RSS at start and end, whether the server was alive at the end, its exit status, and the
# sanitizer reports (leaks / UB / memory errors) written during the run and the shutdown.
# Logs: build-asan/soak/ (server.log, asan.*, summary.json). Exit status 0 only when clean.
# SOAK_RELEASE=1: the same load against the Release build (build/, logs in build/soak/), whose
# RSS curve is the one to read for leaks and growth (ASan's quarantine of freed memory makes the
# sanitized server's RSS climb by design).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
clients=${2:-4}
launcher=()
if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
if [ -n "${SOAK_RELEASE:-}" ]; then
  dir=build
  [ -f "$dir/build.ninja" ] || cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
else
  dir=build-asan
  [ -f "$dir/build.ninja" ] ||
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARSCALE_SANITIZE=ON -DPARSCALE_BUILD_BENCH=OFF \
      -DBUILD_SHARED_LIBS=ON "${launcher[@]}" >/dev/null
fi
cmake --build "$dir" -j"$(nproc)" --target parscale
logs=$dir/soak
rm -rf "$logs"
mkdir -p "$logs"
# Sanitizer reports go to files (asan.PID, one per report-writing process); UB aborts the server.
export ASAN_OPTIONS="detect_leaks=1:log_path=$PWD/$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$PWD/$logs/asan"
export OMP_WAIT_POLICY=passive
max_body_mib=1
"$dir/parscale" serve --model models/demo --adapter models/demo/adapter-p2.safetensors \
    --adapter models/demo/adapter-p4.safetensors --host 127.0.0.1 --port 0 --threads 2 \
    --max-body-mib "$max_body_mib" 2>"$logs/server.log" &
pid=$!
cleanup() { if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
port=
for _ in $(seq 1 600); do
  port=$(grep -o 'on http://127\.0\.0\.1:[0-9]*' "$logs/server.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "soak: the server exited before listening:"; cat "$logs/server.log"; exit 1; }
  sleep 0.5
done
[ -n "$port" ] || { echo "soak: the server did not listen within 5 minutes"; exit 1; }
echo "soak: serving on 127.0.0.1:$port (pid $pid); $minutes min, $clients clients"
node scripts/soak.mjs --port "$port" --pid "$pid" --minutes "$minutes" --clients "$clients" \
    --max-body-mib "$max_body_mib" >"$logs/summary.json"
alive=no
kill -0 "$pid" 2>/dev/null && alive=yes
rc=
if [ "$alive" = yes ]; then
  kill -TERM "$pid"
  rc=0
  wait "$pid" || rc=$?
else
  rc=0
  wait "$pid" || rc=$?
fi
trap - EXIT
reports=$(ls "$logs" | grep -c '^asan\.' || true)
python3 - "$logs/summary.json" "$alive" "$rc" "$reports" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"requests: {s['requests']} in {s['seconds']} s")
print("responses by status:", dict(sorted(s['by_status'].items())), "(0 = no status line: the client cut or was cut)")
print("requests by kind:", s['by_kind'])
print(f"5xx: {s['server_errors_5xx']}   unexpected outcomes: {len(s['unexpected']) + s.get('unexpected_more', 0)}")
for u in s['unexpected'][:5]: print("  ", u)
mib = lambda k: f"{k / 1024:.1f} MiB" if k else "gone"
print(f"RSS start {mib(s['rss_start_kib'])}, end {mib(s['rss_end_kib'])}, max {mib(max(v for _, v in s['rss_kib'] if v))}")
print(f"server alive at the end: {sys.argv[2]}; exit status after SIGTERM: {sys.argv[3]}; sanitizer report files: {sys.argv[4]}")
PY
for f in "$logs"/asan.*; do [ -e "$f" ] && { echo "== $f"; head -40 "$f"; }; done
if [ "$alive" != yes ] || [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ] ||
   ! python3 -c "import json,sys; s=json.load(open('$logs/summary.json')); sys.exit(1 if s['server_errors_5xx'] or s['unexpected'] else 0)"; then
  exit 1
fi
