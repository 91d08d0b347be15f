// Backward kernels (see backward.h), dispatched at run time like the forward kernels: the bodies
// (backward_impl.inc) are compiled once per instruction set under a target pragma, and every entry
// point calls the copy of the active kernel path (PARSCALE_KERNELS, else the best the CPU has).
// So the binary runs on any x86-64 CPU (no -march=native) and still uses AVX2 / AVX-512 with FMA
// where available. Each copy keeps its fixed summation order: for a given path and binary the
// gradients are bitwise reproducible whatever the thread count.
#include "kernels/backward.h"

#include "core/threads.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/gemm_f32.h"
#include "kernels/kernels.h"

// The 16-float vector helpers of backward_impl.inc are always inlined: no vector crosses a call, so
// GCC's note that their ABI differs between the copies does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace parscale::kernels {

namespace bw_scalar {
#include "kernels/backward_impl.inc"
}  // namespace bw_scalar

#if defined(__x86_64__) && defined(__GNUC__)
#define PARSCALE_BACKWARD_SIMD 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace bw_avx2 {
#include "kernels/backward_impl.inc"
}  // namespace bw_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#define PARSCALE_BW_REGISTER_TILE 1
namespace bw_avx512 {
#include "kernels/backward_impl.inc"
}  // namespace bw_avx512
#undef PARSCALE_BW_REGISTER_TILE
#pragma GCC pop_options
#endif

// Calls fn<T>(args...) of the active path's copy.
#ifdef PARSCALE_BACKWARD_SIMD
#define PARSCALE_BACKWARD_DISPATCH(fn, ...)                                   \
  switch (active_kernel_path()) {                                             \
    case KernelPath::AVX512: return bw_avx512::fn<T>(__VA_ARGS__);            \
    case KernelPath::AVX2: return bw_avx2::fn<T>(__VA_ARGS__);                \
    case KernelPath::Scalar: break;                                           \
  }                                                                           \
  return bw_scalar::fn<T>(__VA_ARGS__)
#else
#define PARSCALE_BACKWARD_DISPATCH(fn, ...) return bw_scalar::fn<T>(__VA_ARGS__)
#endif

// Under a TrainingGemmScope the float products run on oneDNN's sgemm (gemm_f32.h); the bias
// gradient keeps its in-order column sums.
template <typename T>
void matmul_backward_input(const T* dy, int64_t M, const T* W, int64_t N, int64_t K, T* dx, bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    if (training_gemm_active()) return sgemm_tiled(false, false, M, K, N, dy, N, W, K, accumulate ? 1.0f : 0.0f, dx, K);
  }
  PARSCALE_BACKWARD_DISPATCH(matmul_backward_input, dy, M, W, N, K, dx, accumulate);
}

namespace {
template <typename T>
void weight_gradient(const T* dy, const T* x, int64_t M, int64_t N, int64_t K, T* dW) {
  if constexpr (std::is_same_v<T, float>) {
    if (training_gemm_active()) return sgemm_tiled(true, false, N, K, M, dy, N, x, K, 1.0f, dW, K);
  }
  PARSCALE_BACKWARD_DISPATCH(matmul_backward_weight, dy, x, M, N, K, dW);
}
}  // namespace

template <typename T>
void matmul_backward_weight(const T* dy, const T* x, int64_t M, int64_t N, int64_t K, T* dW, T* db) {
  weight_gradient(dy, x, M, N, K, dW);
  if (!db) return;
  // db[n] += Σ_m dy[m, n], each column summed in order (plain adds: the same bits on every path).
  parallel_for_each(N, grain_if(M * N > 65536, N), [&](int64_t n) {
    T s = T(0);
    for (int64_t m = 0; m < M; ++m) s += dy[m * N + n];
    db[n] += s;
  });
}

template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, int64_t M, int64_t H, T eps, bool accumulate,
                      T* rstd) {
  PARSCALE_BACKWARD_DISPATCH(rmsnorm_backward, x, w, dy, dx, dw, M, H, eps, accumulate, rstd);
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n) {
  PARSCALE_BACKWARD_DISPATCH(swiglu_backward, gate, up, dout, dgate, dup, n);
}

template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n) {
  PARSCALE_BACKWARD_DISPATCH(silu_backward, x, dy, dx, n);
}

template <typename T>
void rope_backward(T* d, int64_t N, int64_t n_heads, int64_t head_dim, const float* cos_t, const float* sin_t) {
  PARSCALE_BACKWARD_DISPATCH(rope_backward, d, N, n_heads, head_dim, cos_t, sin_t);
}

template <typename T>
void attention_lse(const T* q, const T* k, int64_t rows, const int64_t* row_begin, const int32_t* n_visible,
                   int64_t n_heads, int64_t n_kv_heads, int64_t capacity, int64_t head_dim, T scale, T* lse) {
  PARSCALE_BACKWARD_DISPATCH(attention_lse, q, k, rows, row_begin, n_visible, n_heads, n_kv_heads, capacity, head_dim,
                             scale, lse);
}

template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout, int64_t rows,
                        const int64_t* row_begin, const int32_t* n_visible, int64_t n_heads, int64_t n_kv_heads,
                        int64_t capacity, int64_t head_dim, T scale, T* dq, T* dk, T* dv, T* scratch) {
  PARSCALE_BACKWARD_DISPATCH(attention_backward, q, k, v, out, lse, dout, rows, row_begin, n_visible, n_heads,
                             n_kv_heads, capacity, head_dim, scale, dq, dk, dv, scratch);
}

template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int64_t M, int64_t V, T scale, double* row_loss) {
  PARSCALE_BACKWARD_DISPATCH(cross_entropy_forward_backward, logits, target, M, V, scale, row_loss);
}

template <typename T>
double cross_entropy_loss(const T* logits, const int32_t* target, int64_t M, int64_t V, double* row_loss) {
  PARSCALE_BACKWARD_DISPATCH(cross_entropy_loss, logits, target, M, V, row_loss);
}

template <typename T>
void smoothed_softmax_backward(const T* p, const T* dw, T* da, int64_t M, int64_t P, T eps) {
  PARSCALE_BACKWARD_DISPATCH(smoothed_softmax_backward, p, dw, da, M, P, eps);
}

#undef PARSCALE_BACKWARD_DISPATCH

#define PARSCALE_INSTANTIATE(T)                                                                                       \
  template void matmul_backward_input<T>(const T*, int64_t, const T*, int64_t, int64_t, T*, bool);                    \
  template void matmul_backward_weight<T>(const T*, const T*, int64_t, int64_t, int64_t, T*, T*);                     \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, T, bool, T*);             \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);                                    \
  template void silu_backward<T>(const T*, const T*, T*, int64_t);                                                    \
  template void rope_backward<T>(T*, int64_t, int64_t, int64_t, const float*, const float*);                          \
  template void attention_lse<T>(const T*, const T*, int64_t, const int64_t*, const int32_t*, int64_t, int64_t,      \
                                 int64_t, int64_t, T, T*);                                                            \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, int64_t,            \
                                      const int64_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, T, T*, T*,  \
                                      T*, T*);                                                                        \
  template double cross_entropy_forward_backward<T>(T*, const int32_t*, int64_t, int64_t, T, double*);               \
  template double cross_entropy_loss<T>(const T*, const int32_t*, int64_t, int64_t, double*);                         \
  template void smoothed_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, T);

PARSCALE_INSTANTIATE(float)
PARSCALE_INSTANTIATE(double)

}  // namespace parscale::kernels
