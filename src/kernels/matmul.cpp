// Scalar matmul y = x · W^T for W stored as F32, BF16, F16 or I8 (per-block scales), and its
// double-precision reference. Parallel over blocks of W rows, so each weight byte is read once per call whatever M is:
// this is what makes P streams (M = B·P rows) cost about as much as one during decoding.
#include "core/threads.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/packed.h"

namespace parscale::kernels {

namespace {

constexpr int64_t kRowBlock = 4;    // W rows converted together
constexpr int64_t kKChunk = 512;    // K elements converted at a time (stack buffer)

inline void convert_chunk(const WeightView& W, int64_t r, int64_t k0, int64_t kc, float* dst) {
  const int64_t off = r * W.cols + k0;
  switch (W.dtype) {
    case DType::F32:
      std::memcpy(dst, W.f32() + off, static_cast<size_t>(kc) * sizeof(float));
      return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(W.data) + off;
      for (int64_t i = 0; i < kc; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(W.data) + off;
      for (int64_t i = 0; i < kc; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::I8: {
      const int8_t* s = static_cast<const int8_t*>(W.data) + off;
      const float* sc = W.scales + r * (W.cols / W.block);
      for (int64_t i = 0; i < kc; ++i) dst[i] = static_cast<float>(s[i]) * sc[(k0 + i) / W.block];
      return;
    }
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

}  // namespace

void weight_row_f32(const WeightView& W, int64_t r, float* dst) {
  if (!W.data && W.packed) return packed_row_f32(*W.packed, r, dst);  // plain copy released
  for (int64_t k0 = 0; k0 < W.cols; k0 += kKChunk) convert_chunk(W, r, k0, std::min(kKChunk, W.cols - k0), dst + k0);
}

namespace detail {
void matmul_scalar(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate) {
  const int64_t N = W.rows, K = W.cols;
  const int64_t n_blocks = (N + kRowBlock - 1) / kRowBlock;
  parallel_for(n_blocks, 1, [&](int64_t bb, int64_t be, int) {
  for (int64_t nb = bb; nb < be; ++nb) {
    alignas(64) float wbuf[kRowBlock][kKChunk];
    const int64_t n0 = nb * kRowBlock;
    const int64_t nr = std::min(kRowBlock, N - n0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < nr; ++j)
        if (!accumulate) y[m * N + n0 + j] = bias ? bias[n0 + j] : 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += kKChunk) {
      const int64_t kc = std::min(kKChunk, K - k0);
      for (int64_t j = 0; j < nr; ++j) convert_chunk(W, n0 + j, k0, kc, wbuf[j]);
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + k0;
        float* ym = y + m * N + n0;
        for (int64_t j = 0; j < nr; ++j) ym[j] += dot(xm, wbuf[j], kc);
      }
    }
  }
  });
}
}  // namespace detail

void matmul_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  const int64_t N = W.rows, K = W.cols;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        float w;
        convert_chunk(W, n, k, 1, &w);
        acc += static_cast<double>(x[m * K + k]) * w;
      }
      y[m * N + n] = static_cast<float>(acc);
    }
  }
}

}  // namespace parscale::kernels
