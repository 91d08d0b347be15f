// The trainer's fp32 products on oneDNN's sgemm (see gemm_f32.h).
#include "kernels/gemm_f32.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/kernels.h"

#if defined(PARSCALE_HAVE_DNNL)
#include <omp.h>

#include <dnnl.h>
#endif

namespace parscale::kernels {

namespace {
std::atomic<int> g_scopes{0};
std::atomic<bool> g_allowed{true};

// Output tiles: at most kTileRows x kTileCols (oneDNN packs each tile's operands itself; at these
// sizes that costs a few per cent of the product, measured). Depends on the shape only.
constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCols = 256;
}  // namespace

bool onednn_sgemm_available() {
#if defined(PARSCALE_HAVE_DNNL)
  static const bool env_ok = [] {
    const char* e = std::getenv("PARSCALE_ONEDNN");
    return !(e && std::string(e) == "0");
  }();
  return env_ok && g_allowed.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void set_onednn_sgemm_allowed(bool allowed) { g_allowed.store(allowed, std::memory_order_relaxed); }

TrainingGemmScope::TrainingGemmScope() { g_scopes.fetch_add(1, std::memory_order_relaxed); }
TrainingGemmScope::~TrainingGemmScope() { g_scopes.fetch_sub(1, std::memory_order_relaxed); }

// A kernel path forced below the CPU's best (PARSCALE_KERNELS, set_kernel_path) keeps every product
// on our own kernels, so the suite's per-path runs test them end to end.
bool training_gemm_active() {
  return g_scopes.load(std::memory_order_relaxed) > 0 && onednn_sgemm_available() && active_kernel_path() == best_kernel_path();
}

void sgemm_tiled(bool trans_a, bool trans_b, int64_t R, int64_t Cn, int64_t Kr, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (R <= 0 || Cn <= 0) return;
  if (beta != 0.0f && beta != 1.0f) throw Error("sgemm_tiled: beta must be 0 or 1");
  if (Kr <= 0) {
    if (beta == 0.0f)
      for (int64_t r = 0; r < R; ++r) std::fill_n(C + r * ldc, Cn, 0.0f);
    return;
  }
#if defined(PARSCALE_HAVE_DNNL)
  const int64_t row_tiles = (R + kTileRows - 1) / kTileRows, col_tiles = (Cn + kTileCols - 1) / kTileCols;
  const int64_t tiles = row_tiles * col_tiles;
  parallel_for_each(tiles, grain_if(R * Cn * Kr > 65536, tiles), [&](int64_t t) {
    const int64_t r0 = t / col_tiles * kTileRows, c0 = t % col_tiles * kTileCols;
    const int64_t m = std::min(kTileRows, R - r0), n = std::min(kTileCols, Cn - c0);
    const float* a = trans_a ? A + r0 : A + r0 * lda;
    const float* b = trans_b ? B + c0 * ldb : B + c0;
    // One thread per call: the pool block is the unit of parallelism (no OpenMP team beside it).
    const int before = omp_get_max_threads();
    omp_set_num_threads(1);
    const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, Kr, 1.0f, a, lda, b, ldb, beta,
                                        C + r0 * ldc + c0, ldc);
    omp_set_num_threads(before);
    if (st != dnnl_success)
      throw Error("oneDNN sgemm failed (" + std::to_string(m) + " x " + std::to_string(Kr) + " x " + std::to_string(n) +
                  ", status " + std::to_string(static_cast<int>(st)) + ")");
  });
#else
  (void)trans_a, (void)trans_b, (void)A, (void)lda, (void)B, (void)ldb, (void)C, (void)ldc;
  throw Error("sgemm_tiled: this build has no oneDNN");
#endif
}

}  // namespace parscale::kernels
