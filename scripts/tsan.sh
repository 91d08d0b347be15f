#!/usr/bin/env bash
# Usage: scripts/tsan.sh [ctest-regex [ctest-exclude-regex]]
# Builds the thread-using tests with ThreadSanitizer and runs them: the thread pool, kernels,
# tokenizer caches, engine, scheduler (engine thread + kernel thread pool + submitting threads)
# and server. The kernels' pool (src/core/threads) is std::thread + atomics, which TSan sees
# natively; it runs on TSAN_POOL_THREADS threads (default 2).
#
# OpenMP (only the BPE trainer uses it). GCC's libgomp is not instrumented: TSan cannot see its barriers and would report the
# hand-over between the threads of a parallel region and the code after it as a race. So, where
# clang and LLVM's OpenMP runtime with its Archer tool are installed (Debian: clang,
# libomp-14-dev, libclang-rt-14-dev), the tests are built with clang in build-tsan-omp/ and run
# with OMP_TOOL_LIBRARIES=libarcher.so, which tells TSan about every OpenMP barrier, task and
# lock: OpenMP regions then run on TSAN_OMP_THREADS threads (default 2) and the thread-count
# tests run too. Without them (or with TSAN_GCC=1) the g++ build in build-tsan/ runs OpenMP on
# one thread and leaves the thread-count tests out; TSan still checks every std::thread, mutex
# and atomic. CLI end-to-end tests are excluded (they run the parscale binary, not built here).
set -euo pipefail
cd "$(dirname "$0")/.."
regex=${1:-'^(ThreadPool|Kernel|Tokenizer\.|Qwen|Synthetic|BpeTrainer|Engine|Scheduler|Server)'}
exclude=${2:-'Cli|Qwen3Chat'}  # (tests that run the parscale binary)
launcher=()
if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
archer=$(ls /usr/lib/llvm-*/lib/libarcher.so 2>/dev/null | sort -V | tail -1 || true)
if [ -z "${TSAN_GCC:-}" ] && command -v clang++ >/dev/null 2>&1 && [ -n "$archer" ]; then
  omp_mode=archer
  dir=build-tsan-omp
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARSCALE_SANITIZE_THREAD=ON -DPARSCALE_BUILD_BENCH=OFF \
        -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
else
  omp_mode=single
  dir=build-tsan
  exclude="$exclude|BpeTrainer.*ThreadCount"
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARSCALE_SANITIZE_THREAD=ON -DPARSCALE_BUILD_BENCH=OFF \
        "${launcher[@]}" >/dev/null
fi
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
if [ "$omp_mode" = archer ]; then
  # The OpenMP runtime itself is not instrumented: its internal bookkeeping is ignored, its
  # synchronisation is what Archer reports to TSan.
  export TSAN_OPTIONS="$TSAN_OPTIONS ignore_noninstrumented_modules=1"
  export OMP_TOOL_LIBRARIES="$archer" ARCHER_OPTIONS="verbose=1" OMP_NUM_THREADS=${TSAN_OMP_THREADS:-2}
else
  export OMP_NUM_THREADS=${TSAN_OMP_THREADS:-1} OMP_WAIT_POLICY=passive
fi
export PARSCALE_NUM_THREADS=${TSAN_POOL_THREADS:-2}
echo "tsan: pool $PARSCALE_NUM_THREADS threads, OpenMP $omp_mode, OMP_NUM_THREADS=$OMP_NUM_THREADS, build $dir"
cd "$dir" && ctest -R "$regex" -E "$exclude" --output-on-failure -j"$(nproc)"
