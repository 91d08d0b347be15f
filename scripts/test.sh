#!/usr/bin/env bash
# Installs dependencies, builds Release, runs the whole test suite, then runs it again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
echo "== Release build"
scripts/build.sh build
echo "== Release tests"
(cd build && ctest --output-on-failure -j"$jobs")
echo "== ASan+UBSan build"
# Shared libraries: the ~35 test binaries link the concept libraries instead of each holding a
# sanitized copy of them (1.1 GB of disk for the build instead of 1.9 GB).
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARSCALE_SANITIZE=ON -DPARSCALE_BUILD_BENCH=OFF \
  -DBUILD_SHARED_LIBS=ON
echo "== ASan+UBSan tests"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && PARSCALE_SANITIZED=1 ctest --output-on-failure -j"$jobs")
