// Run-time selection of the kernel path and the public entry points that forward to it.
#include "kernels/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "core/error.h"

namespace parscale::kernels {

namespace detail {

const KernelTable& scalar_table() {
  static const KernelTable t{KernelPath::Scalar, matmul_scalar, attention_scalar, rmsnorm_scalar, swiglu_scalar};
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

bool cpu_has(KernelPath p) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (p) {
    case KernelPath::Scalar: return true;
    case KernelPath::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case KernelPath::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }
  return false;
#else
  return p == KernelPath::Scalar;
#endif
}

std::atomic<const KernelTable*> g_active{nullptr};
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
    const KernelTable* expected = nullptr;
    g_active.compare_exchange_strong(expected, table_for(p));
  });
}

}  // namespace

const KernelTable& active() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (!t) {
    init_from_environment();
    t = g_active.load(std::memory_order_acquire);
  }
  return *t;
}

}  // namespace detail

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

KernelPath active_kernel_path() { return detail::active().path; }

void set_kernel_path(KernelPath p) {
  if (!kernel_path_supported(p))
    throw Error(std::string("kernel path ") + kernel_path_name(p) + " is not supported by this CPU or build");
  detail::init_from_environment();
  detail::g_active.store(detail::table_for(p), std::memory_order_release);
}

void matmul(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  detail::active().matmul(x, M, W, bias, y, false);
}

void matmul_add(const float* x, int64_t M, const WeightView& W, float* y) {
  detail::active().matmul(x, M, W, nullptr, y, true);
}

void attention(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
               const KVLayer& kv, float scale, float* out, float* scratch, float* lse) {
  detail::active().attention(q, N, n_heads, row, n_visible, kv, scale, out, scratch, lse);
}

void rmsnorm(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps) {
  detail::active().rmsnorm(x, w, y, M, H, eps);
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) { detail::active().swiglu(gate, up, out, n); }

}  // namespace parscale::kernels
