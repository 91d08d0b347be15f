#include "research/hardware_probe.h"

#include "core/threads.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "core/error.h"

namespace parscale::research {
namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

constexpr int kChains = 64;  // independent accumulators: enough to hide FMA latency with SIMD

// `steps` rounds of acc = acc * mul + add on kChains accumulators (one FMA each); returns their sum.
// Built for several ISAs (chosen at load time), so the probe uses the machine's FMA units even
// though the project compiles for baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "arch=haswell", "default")))
#endif
float fma_chains(long steps, float seed) {
  float acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = seed + 1e-3f * static_cast<float>(j);
  const float mul = 0.999999f, add = 1e-7f;
  for (long it = 0; it < steps; ++it) {
#pragma omp simd
    for (int j = 0; j < kChains; ++j) acc[j] = __builtin_fmaf(acc[j], mul, add);
  }
  float sum = 0;
  for (int j = 0; j < kChains; ++j) sum += acc[j];
  return sum;
}
}  // namespace

BandwidthProbe measure_memory_bandwidth(long elements, int repeats) {
  check(elements > 0 && repeats > 0, "measure_memory_bandwidth: elements and repeats must be > 0");
  std::unique_ptr<float[]> a(new float[elements]), b(new float[elements]), c(new float[elements]);
  // First touch in parallel, so pages land near the threads that stream them.
  parallel_for_each(elements, grain_for(elements), [&](int64_t i) {
    a[i] = 0.0f;
    b[i] = 1.0f;
    c[i] = 2.0f;
  });
  BandwidthProbe probe;
  probe.threads = num_threads();
  probe.bytes_moved = 3.0 * sizeof(float) * static_cast<double>(elements);
  const float scalar = 3.0f;
  double best = 0;
  float* pa = a.get();
  const float* pb = b.get();
  const float* pc = c.get();
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    parallel_for(elements, grain_for(elements, 1), [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) pa[i] = pb[i] + scalar * pc[i];
    });
    const double t = seconds_since(start);
    best = std::max(best, probe.bytes_moved / t);
  }
  // Read the result so the triad cannot be optimised away.
  check(pa[elements / 2] == 7.0f, "measure_memory_bandwidth: triad produced a wrong value");
  probe.bytes_per_second = best;
  return probe;
}

FlopProbe measure_fp32_fma_flops(long iterations, int repeats) {
  check(iterations > 0 && repeats > 0, "measure_fp32_fma_flops: iterations and repeats must be > 0");
  FlopProbe probe;
  probe.threads = num_threads();
  double best = 0;
  float sink = 0;
  std::vector<float> part(static_cast<size_t>(probe.threads));
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    const long steps = iterations;
    parallel_for(probe.threads, 1, [&](int64_t b, int64_t, int) {
      part[static_cast<size_t>(b)] = fma_chains(steps, 1.0f + 1e-3f * static_cast<float>(b));
    });
    for (float p : part) sink += p;
    const double t = seconds_since(start);
    const double flops = 2.0 * kChains * static_cast<double>(steps) *
                         static_cast<double>(probe.threads);
    best = std::max(best, flops / t);
  }
  check(sink > 0, "measure_fp32_fma_flops: accumulators lost");
  probe.flops_per_second = best;
  return probe;
}

}  // namespace parscale::research
