#!/usr/bin/env bash
# Usage: scripts/tsan.sh [ctest-regex [ctest-exclude-regex]]
# Builds the thread-using tests with ThreadSanitizer in build-tsan/ and runs them. The default
# regex selects the tests whose code uses threads today (kernels; the tokenizer with its shared
# caches); add the engine / scheduler / server tests' names to it as they land.
#
# OpenMP: GCC's libgomp is not instrumented, so TSan cannot see its barriers and reports the
# hand-over between the threads of a parallel region and the code after it as a race (seen on
# BpeTrainer.ResultDoesNotDependOnThreadCount, which forces several OpenMP threads). OpenMP regions
# therefore run on one thread here (OMP_NUM_THREADS=1, unless TSAN_OMP_THREADS is set) and tests
# that force a thread count are excluded; TSan still checks every std::thread, mutex and atomic.
# CLI end-to-end tests are excluded too (they run the parscale binary, not built here).
set -euo pipefail
cd "$(dirname "$0")/.."
regex=${1:-'^(Kernel|Tokenizer\.|Qwen|Synthetic|BpeTrainer|Engine|Scheduler|Server)'}
exclude=${2:-'Cli|ThreadCount'}
dir=build-tsan
launcher=()
if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARSCALE_SANITIZE_THREAD=ON -DPARSCALE_BUILD_BENCH=OFF \
      "${launcher[@]}" >/dev/null
# Build only the test executables whose tests match (plus what they link).
targets=()
for src in tests/test_*.cpp; do
  name=$(basename "$src" .cpp)
  if grep -Eq "^(TEST|TEST_F|TEST_P|INSTANTIATE_TEST_SUITE_P)\(" "$src" &&
     grep -E "^(TEST|TEST_F|TEST_P)\(" "$src" | sed -E 's/^[A-Z_]+\(([A-Za-z0-9_]+), *([A-Za-z0-9_]+).*/\1.\2/' |
       grep -Eq "$regex"; then
    targets+=("$name")
  fi
done
echo "tsan: building ${targets[*]}"
cmake --build "$dir" -j"$(nproc)" --target "${targets[@]}"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/scripts/tsan.supp"
export OMP_NUM_THREADS=${TSAN_OMP_THREADS:-1} OMP_WAIT_POLICY=passive
cd "$dir" && ctest -R "$regex" -E "$exclude" --output-on-failure -j"$(nproc)"
