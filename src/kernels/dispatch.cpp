// Run-time selection of the kernel path and the public entry points that forward to it.
#include "kernels/dispatch.h"
#include "kernels/gemm_f32.h"

#include "core/threads.h"
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <vector>
#include <string>

#include "core/error.h"

namespace parscale::kernels {

namespace detail {

const KernelTable& scalar_table() {
  static const KernelTable t{KernelPath::Scalar, matmul_scalar,       attention_paged_scalar, rmsnorm_scalar,
                             swiglu_scalar,      fma_chains_scalar,   1,                    read_sum_scalar,
                             matmul_multi_scalar, gate_up_swiglu_scalar, [](int64_t) { return false; }};
  return t;
}

namespace {

const KernelTable* table_for(KernelPath p) {
  switch (p) {
    case KernelPath::Scalar: return &scalar_table();
    case KernelPath::AVX2: return avx2_table();
    case KernelPath::AVX512: return avx512_table();
  }
  return nullptr;
}

#if defined(__x86_64__) || defined(__i386__)
// F16C from CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports does not know "f16c").
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}
#endif

bool cpu_has(KernelPath p) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (p) {
    case KernelPath::Scalar: return true;
    case KernelPath::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case KernelPath::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  }
  return false;
#else
  return p == KernelPath::Scalar;
#endif
}

std::atomic<const KernelTable*> g_active{nullptr};
std::atomic<ComputeMode> g_mode{ComputeMode::Auto};
std::once_flag g_init;

void init_from_environment() {
  std::call_once(g_init, [] {
    const char* env = std::getenv("PARSCALE_KERNELS");
    KernelPath p = best_kernel_path();
    if (env && *env && std::string(env) != "auto") {
      p = parse_kernel_path(env);
      if (!kernel_path_supported(p))
        throw Error(std::string("PARSCALE_KERNELS=") + env + ": this CPU (or build) does not support the " +
                    kernel_path_name(p) + " path");
    }
    const char* mode = std::getenv("PARSCALE_COMPUTE");
    if (mode && *mode) g_mode.store(parse_compute_mode(mode));
    const KernelTable* expected = nullptr;
    g_active.compare_exchange_strong(expected, table_for(p));
  });
}

bool cpu_has_bf16dot() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return cpu_has(KernelPath::AVX512) && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

}  // namespace

// The AVX-512 path active and, in fast mode, BF16 weights or q8 weights whose scale blocks are a
// multiple of 16 values (in fast and auto mode): the bf16 dot-product kernels.
bool use_bf16dot(const WeightView& W) {
  const bool q8 = W.dtype == DType::I8 && W.block > 0 && W.block % 16 == 0;
  if (W.dtype != DType::BF16 && !q8) return false;
  const KernelPath path = active().path;  // (reads the environment on the first call)
  const ComputeMode mode = g_mode.load(std::memory_order_relaxed);
  if (mode == ComputeMode::Exact) return false;
  static const bool ok = bf16dot_compiled() && cpu_has_bf16dot();
  return ok && path == KernelPath::AVX512;
}

const KernelTable& active() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (!t) {
    init_from_environment();
    t = g_active.load(std::memory_order_acquire);
  }
  return *t;
}

void matmul_multi_scalar(const float* x, int64_t M, const MatmulOut* outs, int count) {
  for (int i = 0; i < count; ++i) matmul_scalar(x, M, *outs[i].W, outs[i].bias, outs[i].y, false);
}

void gate_up_swiglu_scalar(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up,
                           float* out) {
  matmul_scalar(x, M, Wg, nullptr, gate, false);
  matmul_scalar(x, M, Wu, nullptr, up, false);
  swiglu_scalar(gate, up, out, M * Wg.rows);
}

float fma_chains_scalar(int64_t iters) {
  float a[16];
  for (int i = 0; i < 16; ++i) a[i] = static_cast<float>(i);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 16; ++i) a[i] = std::fma(a[i], 0.999999f, 1e-7f);
  float s = 0.0f;
  for (float v : a) s += v;
  return s;
}

float read_sum_scalar(const float* p, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += p[i + j];
  for (; i < n; ++i) s[0] += p[i];
  return s[0] + s[1] + s[2] + s[3];
}

}  // namespace detail

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

namespace {
// Best rate over ~`seconds` of all pool threads running chains(iters) at once, in units of
// `units_per_iter` per call of chains per iteration (the round count calibrated on one thread).
double probe_chains(float (*chains)(int64_t), double units_per_iter, double seconds) {
  int64_t iters = 1 << 16;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float sink = chains(iters);
    (void)sink;
    if (seconds_since(t0) > 0.02 || iters > (int64_t{1} << 40)) break;
    iters *= 4;
  }
  double best = 0.0;
  const auto start = std::chrono::steady_clock::now();
  do {
    const int threads = num_threads();
    std::vector<float> part(static_cast<size_t>(threads));
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(threads, 1, [&](int64_t b, int64_t, int) { part[static_cast<size_t>(b)] = chains(iters); });
    float acc = 0.0f;
    for (float p : part) acc += p;
    volatile float sink = acc;
    (void)sink;
    const double dt = seconds_since(t0);
    best = std::max(best, static_cast<double>(threads) * static_cast<double>(iters) * units_per_iter / dt / 1e9);
  } while (seconds_since(start) < seconds);
  return best;
}
}  // namespace

double probe_fma_gflops(double seconds) {
  const detail::KernelTable& t = detail::active();
  // 16 chains of fma_lanes lanes, 2 FLOP each, per iteration.
  return probe_chains(t.fma_chains, 16.0 * static_cast<double>(t.fma_lanes) * 2.0, seconds);
}

double probe_bf16dot_gflops(double seconds) {
  if (!fast_bf16_supported()) return 0.0;
  return probe_chains(detail::bf16dot_chains, 16.0 * 64.0, seconds);  // 16 chains x 64 FLOP
}

double probe_read_bandwidth(size_t bytes, double seconds) {
  const detail::KernelTable& t = detail::active();
  const int64_t n = static_cast<int64_t>(bytes / sizeof(float));
  // Anonymous memory with transparent huge pages requested, as the weights get (WeightArena).
  const size_t huge = size_t{2} << 20, len = static_cast<size_t>(n) * sizeof(float) + huge;
  void* base = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(base != MAP_FAILED, "probe_read_bandwidth: cannot map " + std::to_string(len) + " bytes");
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + huge - 1) / huge * huge);
#ifdef MADV_HUGEPAGE
  ::madvise(aligned, static_cast<size_t>(n) * sizeof(float), MADV_HUGEPAGE);
#endif
  std::unique_ptr<void, std::function<void(void*)>> unmap(base, [len](void* p) { ::munmap(p, len); });
  float* buf_ptr = aligned;
  // First touch by the threads that read it (page placement), values that cannot be denormal.
  const int64_t nt = num_threads(), per = (n + nt - 1) / nt;
  parallel_for(n, per, [&](int64_t b, int64_t e, int) { std::fill(buf_ptr + b, buf_ptr + e, 1.0f); });
  std::vector<float> part(static_cast<size_t>(nt));
  double best = 0.0;
  const auto start = std::chrono::steady_clock::now();
  do {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(n, per, [&](int64_t b, int64_t e, int) { part[static_cast<size_t>(b / per)] = t.read_sum(buf_ptr + b, e - b); });
    float acc = 0.0f;
    for (float p : part) acc += p;
    volatile float sink = acc;
    (void)sink;
    best = std::max(best, static_cast<double>(n) * sizeof(float) / seconds_since(t0) / 1e9);
  } while (seconds_since(start) < seconds);
  return best;
}

const char* kernel_path_name(KernelPath p) {
  switch (p) {
    case KernelPath::Scalar: return "scalar";
    case KernelPath::AVX2: return "avx2";
    case KernelPath::AVX512: return "avx512";
  }
  return "?";
}

KernelPath parse_kernel_path(const char* name) {
  const std::string s = name ? name : "";
  if (s == "scalar") return KernelPath::Scalar;
  if (s == "avx2") return KernelPath::AVX2;
  if (s == "avx512") return KernelPath::AVX512;
  throw Error("kernel path \"" + s + "\" is not one of scalar, avx2, avx512");
}

bool kernel_path_supported(KernelPath p) { return detail::table_for(p) != nullptr && detail::cpu_has(p); }

KernelPath best_kernel_path() {
  if (kernel_path_supported(KernelPath::AVX512)) return KernelPath::AVX512;
  if (kernel_path_supported(KernelPath::AVX2)) return KernelPath::AVX2;
  return KernelPath::Scalar;
}

namespace {
std::atomic<bool> g_attention_tiling{true};
}  // namespace

void set_attention_tiling(bool enabled) { g_attention_tiling.store(enabled, std::memory_order_relaxed); }
bool attention_tiling() { return g_attention_tiling.load(std::memory_order_relaxed); }
bool attention_tiled(int64_t head_dim) { return detail::active().attention_tiled(head_dim); }

KernelPath active_kernel_path() { return detail::active().path; }

void set_kernel_path(KernelPath p) {
  if (!kernel_path_supported(p))
    throw Error(std::string("kernel path ") + kernel_path_name(p) + " is not supported by this CPU or build");
  detail::init_from_environment();
  detail::g_active.store(detail::table_for(p), std::memory_order_release);
}

const char* compute_mode_name(ComputeMode m) {
  return m == ComputeMode::Fast ? "fast" : m == ComputeMode::Auto ? "auto" : "exact";
}

ComputeMode parse_compute_mode(const char* name) {
  const std::string s = name ? name : "";
  if (s == "exact") return ComputeMode::Exact;
  if (s == "fast") return ComputeMode::Fast;
  if (s == "auto") return ComputeMode::Auto;
  throw Error("compute mode \"" + s + "\" is not one of exact, fast, auto");
}

ComputeMode active_compute_mode() {
  detail::init_from_environment();
  return detail::g_mode.load();
}

void set_compute_mode(ComputeMode m) {
  detail::init_from_environment();
  detail::g_mode.store(m);
}

bool fast_bf16_supported() { return detail::bf16dot_compiled() && detail::cpu_has_bf16dot(); }

bool uses_bf16dot(const WeightView& W) { return detail::use_bf16dot(W); }

namespace {
// A matrix whose plain copy was released after packing (model/weights.h, pack_fast_weights) can only
// run on the fast mode's packed kernels.
void require_plain(const WeightView& W) {
  if (!W.data && W.packed)
    throw Error("matmul: a " + std::to_string(W.rows) + " x " + std::to_string(W.cols) +
                " matrix was packed for the fast compute mode without its plain copy; the " +
                compute_mode_name(active_compute_mode()) + " mode cannot run it (set the compute mode before loading)");
}
}  // namespace

namespace {
// Training's fp32 products (gemm_f32.h): y[M, N] (+)= x[M, K]·Wᵀ (+ bias) on oneDNN's sgemm.
bool training_f32(const WeightView& W) { return W.dtype == DType::F32 && W.data && training_gemm_active(); }
void matmul_training(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate) {
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias) {
    if (accumulate) throw Error("matmul_training: bias with accumulate");
    for (int64_t m = 0; m < M; ++m) std::copy_n(bias, W.rows, y + m * W.rows);
    beta = 1.0f;
  }
  sgemm_tiled(false, true, M, W.rows, W.cols, x, W.cols, W.f32(), W.cols, beta, y, W.rows);
}
}  // namespace

void matmul(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  if (training_f32(W)) return matmul_training(x, M, W, bias, y, false);
  if (detail::use_bf16dot(W)) return detail::matmul_bf16dot(x, M, W, bias, y, false);
  require_plain(W);
  detail::active().matmul(x, M, W, bias, y, false);
}

void matmul_add(const float* x, int64_t M, const WeightView& W, float* y) {
  if (training_f32(W)) return matmul_training(x, M, W, nullptr, y, true);
  if (detail::use_bf16dot(W)) return detail::matmul_bf16dot(x, M, W, nullptr, y, true);
  require_plain(W);
  detail::active().matmul(x, M, W, nullptr, y, true);
}

void matmul_multi(const float* x, int64_t M, const MatmulOut* outs, int count) {
  if (count < 0 || count > 8) throw Error("matmul_multi: at most 8 outputs");  // (no string built per call)
  bool bf16dot = count > 0;
  for (int i = 0; i < count; ++i) bf16dot = bf16dot && detail::use_bf16dot(*outs[i].W) && outs[i].W->cols == outs[0].W->cols;
  if (bf16dot) return detail::matmul_multi_bf16dot(x, M, outs, count);
  bool training = count > 0;
  for (int i = 0; i < count; ++i) training = training && training_f32(*outs[i].W);
  if (training) {
    for (int i = 0; i < count; ++i) matmul_training(x, M, *outs[i].W, outs[i].bias, outs[i].y, false);
    return;
  }
  for (int i = 0; i < count; ++i) require_plain(*outs[i].W);
  detail::active().matmul_multi(x, M, outs, count);
}

void gate_up_swiglu(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up, float* out) {
  if (detail::use_bf16dot(Wg) && detail::use_bf16dot(Wu)) return detail::gate_up_swiglu_bf16dot(x, M, Wg, Wu, gate, up, out);
  require_plain(Wg);
  require_plain(Wu);
  detail::active().gate_up_swiglu(x, M, Wg, Wu, gate, up, out);
}

void rmsnorm(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps) {
  detail::active().rmsnorm(x, w, y, M, H, eps);
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) { detail::active().swiglu(gate, up, out, n); }

}  // namespace parscale::kernels
