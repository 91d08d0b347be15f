// Microbenchmarks of the forward kernels on the active path (PARSCALE_KERNELS selects it) in the
// ParScale-1.8B shapes: matmul per weight dtype and row count M (decode M = B·P, prefill M large),
// attention over long caches with GQA, RMSNorm and SwiGLU. Counters: weight bytes/s and FLOP/s.
#include <benchmark/benchmark.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/kernels.h"

using namespace parscale;

namespace {

struct Matrix {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  WeightView view;
  Matrix(DType dt, int64_t rows, int64_t cols) {
    std::mt19937 g(42);
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    std::vector<float> f(static_cast<size_t>(rows * cols));
    for (auto& v : f) v = u(g);
    if (dt == DType::I8) {
      const int64_t block = 32;
      bytes.resize(f.size());
      scales.assign(static_cast<size_t>(rows * cols / block), 0.05f / 127.0f);
      for (size_t i = 0; i < f.size(); ++i) bytes[i] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(f[i] / 0.05f * 127.0f)));
      view = {dt, bytes.data(), rows, cols, scales.data(), block};
    } else {
      bytes.resize(f.size() * dtype_size(dt));
      convert_from_f32(dt, f.data(), bytes.data(), f.size());
      view = {dt, bytes.data(), rows, cols};
    }
  }
};

// Args: dtype (0 F32, 1 BF16, 2 F16, 3 I8), M, N, K.
void BM_Matmul(benchmark::State& state) {
  const DType dts[] = {DType::F32, DType::BF16, DType::F16, DType::I8};
  const DType dt = dts[state.range(0)];
  const int64_t M = state.range(1), N = state.range(2), K = state.range(3);
  Matrix w(dt, N, K);
  std::vector<float> x(static_cast<size_t>(M * K), 0.5f), y(static_cast<size_t>(M * N));
  for (auto _ : state) {
    kernels::matmul(x.data(), M, w.view, nullptr, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(std::string(kernels::kernel_path_name(kernels::active_kernel_path())) + " " + dtype_name(dt));
  state.counters["weight_GBps"] = benchmark::Counter(static_cast<double>(w.bytes.size()), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * static_cast<double>(M * N * K) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Matmul)
    ->ArgNames({"dtype", "M", "N", "K"})
    ->ArgsProduct({{0, 1, 2, 3}, {1, 8}, {8320}, {1536}})
    ->ArgsProduct({{1}, {1, 2, 4, 8, 16, 32}, {1536}, {8320}})
    ->ArgsProduct({{1}, {1, 8}, {1536}, {1536}})
    ->ArgsProduct({{0, 1, 3}, {512}, {8320}, {1536}})
    ->ArgsProduct({{1}, {512}, {1536}, {8320}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Decode as the model sees it: the weights come from DRAM, not cache. Cycles through 24 gate-shaped
// matrices (600 MB in BF16). Args: dtype, M.
void BM_MatmulFromDram(benchmark::State& state) {
  const DType dts[] = {DType::F32, DType::BF16, DType::F16, DType::I8};
  const DType dt = dts[state.range(0)];
  const int64_t M = state.range(1), N = 8320, K = 1536;
  static std::vector<std::unique_ptr<Matrix>> mats[4];
  auto& ms = mats[state.range(0)];
  while (ms.size() < 24) ms.push_back(std::make_unique<Matrix>(dt, N, K));
  std::vector<float> x(static_cast<size_t>(M * K), 0.5f), y(static_cast<size_t>(M * N));
  size_t i = 0;
  for (auto _ : state) {
    kernels::matmul(x.data(), M, ms[i++ % ms.size()]->view, nullptr, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(std::string(kernels::kernel_path_name(kernels::active_kernel_path())) + " " + dtype_name(dt));
  state.counters["weight_GBps"] = benchmark::Counter(static_cast<double>(ms[0]->bytes.size()), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * static_cast<double>(M * N * K) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MatmulFromDram)->ArgNames({"dtype", "M"})->ArgsProduct({{1, 3}, {1, 4, 8}})->Unit(benchmark::kMillisecond)->UseRealTime();

// Args: query rows N (tokens × streams), visible slots. 16 heads, 2 kv heads, D = 96.
void BM_Attention(benchmark::State& state) {
  const int64_t N = state.range(0), ctx = state.range(1), H = 16, KVH = 2, D = 96;
  std::vector<float> k(static_cast<size_t>(N * KVH * ctx * D), 0.01f), v(k.size(), 0.02f);
  std::vector<float> q(static_cast<size_t>(N * H * D), 0.1f), out(q.size());
  std::vector<float> scratch(static_cast<size_t>(64 * ctx));
  std::vector<int32_t> row(static_cast<size_t>(N)), nvis(static_cast<size_t>(N), static_cast<int32_t>(ctx));
  for (int64_t i = 0; i < N; ++i) row[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  kernels::KVLayer kv{k.data(), v.data(), KVH, ctx, D};
  for (auto _ : state) {
    kernels::attention(q.data(), N, H, row.data(), nvis.data(), kv, 0.1f, out.data(), scratch.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["kv_GBps"] = benchmark::Counter(static_cast<double>(2 * k.size() * sizeof(float)), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)->ArgNames({"N", "ctx"})->ArgsProduct({{1, 8}, {512, 4096}})->Unit(benchmark::kMicrosecond)->UseRealTime();

// Paged attention as the serving engine runs it. Args: query rows N (each its own sequence: decode
// of N stream rows), real slots per row, KV dtype (0 f32, 1 bf16), tiled (1: the register-tiled
// block, the default; 0: the generic one, set_attention_tiling(false)); 16 heads, 2 kv heads,
// D = 96, 48 fp32 prefix slots, pages of 64. Counter: attention FLOP/s (QK and PV, 4·D per head and
// slot). Rows past ~8 at 2,000 slots no longer fit the last-level cache: KV comes from DRAM.
void BM_AttentionPaged(benchmark::State& state) {
  const int64_t N = state.range(0), ctx = state.range(1), H = 16, KVH = 2, D = 96, PT = 64, T = 48;
  const DType dt = state.range(2) ? DType::BF16 : DType::F32;
  const int64_t pages_per_row = (ctx + PT - 1) / PT;
  std::vector<uint8_t> k(static_cast<size_t>(N * pages_per_row * KVH * PT * D) * dtype_size(dt)), v(k.size());
  std::mt19937 g(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  kernels::PagedKV kv{k.data(), v.data(), dt, KVH, PT, D};
  std::vector<float> prefix(static_cast<size_t>(N * KVH * T * D));
  for (auto& x : prefix) x = nd(g);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(N));
  std::vector<float> kt(static_cast<size_t>(KVH * D)), vt(kt.size());
  std::vector<kernels::KvView> views(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    auto& t = tables[static_cast<size_t>(i)];
    for (int64_t p = 0; p < pages_per_row; ++p) t.push_back(static_cast<int32_t>(i * pages_per_row + p));
    for (int64_t j = 0; j < ctx; ++j) {
      for (auto& x : kt) x = nd(g);
      for (auto& x : vt) x = nd(g);
      kernels::kv_write(kv, t.data(), j, kt.data(), vt.data());
    }
    kernels::KvView& view = views[static_cast<size_t>(i)];
    view.prefix_k = view.prefix_v = prefix.data() + i * KVH * T * D;
    view.prefix_head_stride = T * D;
    view.n_prefix = static_cast<int32_t>(T);
    view.n_real = static_cast<int32_t>(ctx);
    view.pages = t.data();
  }
  std::vector<float> q(static_cast<size_t>(N * H * D)), out(q.size());
  for (auto& x : q) x = nd(g);
  kernels::set_attention_tiling(state.range(3) != 0);
  for (auto _ : state) {
    kernels::attention_paged(q.data(), N, H, views.data(), kv, 0.1f, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  kernels::set_attention_tiling(true);
  state.SetLabel(std::string(kernels::kernel_path_name(kernels::active_kernel_path())) + " kv " + dtype_name(dt) +
                 (state.range(3) ? " tiled" : " generic"));
  state.counters["GFLOPs"] =
      benchmark::Counter(4.0 * static_cast<double>(N * H * (ctx + T) * D) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_AttentionPaged)->ArgNames({"N", "ctx", "bf16", "tiled"})->ArgsProduct({{1, 8, 64}, {128, 600, 2000}, {0, 1}, {0, 1}})->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Swiglu(benchmark::State& state) {
  const int64_t n = state.range(0);
  std::vector<float> g(static_cast<size_t>(n), 0.3f), u(static_cast<size_t>(n), 0.7f);
  for (auto _ : state) {
    kernels::swiglu(g.data(), u.data(), g.data(), n);
    benchmark::DoNotOptimize(g.data());
  }
}
BENCHMARK(BM_Swiglu)->Arg(8320)->Arg(512 * 8320)->UseRealTime();

void BM_Rmsnorm(benchmark::State& state) {
  const int64_t M = state.range(0), H = 1536;
  std::vector<float> x(static_cast<size_t>(M * H), 0.3f), w(static_cast<size_t>(H), 1.0f), y(x.size());
  for (auto _ : state) {
    kernels::rmsnorm(x.data(), w.data(), y.data(), M, H, 1e-6f);
    benchmark::DoNotOptimize(y.data());
  }
}
BENCHMARK(BM_Rmsnorm)->Arg(1)->Arg(512)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
