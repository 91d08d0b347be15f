#!/usr/bin/env bash
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]   (default 60 s, every fuzz/fuzz_*.cpp)
# Builds the libFuzzer harnesses with clang (-fsanitize=fuzzer,address,undefined) in build-fuzz/
# and runs each target in turn, starting from its committed seed corpus (fuzz/corpus/<target>);
# new inputs go to build-fuzz/corpus/<target>, crashes to build-fuzz/crashes/<target>/, logs to
# build-fuzz/logs/<target>.log. Prints executions, coverage (cov / ft) and findings per target.
# Needs clang, libclang-rt-14-dev and libomp-14-dev (Debian 12; not needed by CI, which replays
# the corpora with the g++ ASan build as ctest tests fuzz_replay_<target>).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}; shift || true
dir=build-fuzz
launcher=()
if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
      -DPARSCALE_FUZZ=ON -DPARSCALE_BUILD_TESTS=OFF -DPARSCALE_BUILD_BENCH=OFF "${launcher[@]}" >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cpp; do t=$(basename "$f" .cpp); targets+=("${t#fuzz_}"); done
fi
cmake --build "$dir" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
mkdir -p "$dir/logs"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
status=0
printf '%-18s %8s %12s %8s %8s %s\n' target seconds executions cov ft findings
for t in "${targets[@]}"; do
  mkdir -p "$dir/corpus/$t" "$dir/crashes/$t"
  log="$dir/logs/$t.log"
  rc=0
  start=$(date +%s)
  # -rss_limit_mb: a parser must refuse a huge declared size before allocating it.
  "$dir/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$dir/crashes/$t/" "$dir/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  ran=$(( $(date +%s) - start ))  # libFuzzer stops at the first finding
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  [ -n "$execs" ] || execs=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o '^#[0-9]*' | tr -d '#' || echo '?')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo '?')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo '?')
  findings=$(find "$dir/crashes/$t" -type f -newermt "@$start" | wc -l)  # of this run
  printf '%-18s %8s %12s %8s %8s %s\n' "$t" "$ran" "$execs" "$cov" "$ft" "$findings"
  if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ]; then status=1; fi
done
exit $status
