// RMSNorm, SwiGLU, softmax and RoPE kernels (fp32), each with its scalar reference where the
// fast path differs from the plain formula. Threads: the pool (core/threads.h), never an OpenMP
// team (whose idle threads would spin beside the pool's).
#include <cmath>

#include "core/threads.h"
#include "kernels/dispatch.h"

namespace parscale::kernels {

void detail::rmsnorm_scalar(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps) {
  parallel_for(M, grain_if(M * H > 16384, M), [&](int64_t mb, int64_t me, int) {
    for (int64_t m = mb; m < me; ++m) {
      const float* xm = x + m * H;
      float* ym = y + m * H;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < H; ++i) ss += xm[i] * xm[i];
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) ym[i] = w[i] * (xm[i] * r);
    }
  });
}

void rmsnorm_ref(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps) {
  for (int64_t m = 0; m < M; ++m) {
    double ss = 0.0;
    for (int64_t i = 0; i < H; ++i) ss += static_cast<double>(x[m * H + i]) * x[m * H + i];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(H) + eps);
    for (int64_t i = 0; i < H; ++i) y[m * H + i] = static_cast<float>(w[i] * (x[m * H + i] * r));
  }
}

void detail::swiglu_scalar(const float* gate, const float* up, float* out, int64_t n) {
  parallel_for(n, grain_if(n > 65536, n), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

void softmax_rows(float* x, int64_t M, int64_t N) {
  for (int64_t m = 0; m < M; ++m) {
    float* r = x + m * N;
    float mx = r[0];
    for (int64_t i = 1; i < N; ++i) mx = std::max(mx, r[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      r[i] = std::exp(r[i] - mx);
      sum += r[i];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t i = 0; i < N; ++i) r[i] *= inv;
  }
}

void rope_inv_freq(double theta, int64_t head_dim, float* inv_freq) {
  // HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in fp32.
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), expo);
  }
}

void rope_tables(const int32_t* positions, int64_t N, const float* inv_freq, int64_t head_dim, float* cos_t, float* sin_t) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < N; ++t) {
    const float p = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = p * inv_freq[i];  // fp32 product, as HF's fp32 matmul of inv_freq and positions
      cos_t[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_t[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

void rope_apply(float* x, int64_t N, int64_t n_heads, int64_t head_dim, const float* cos_t, const float* sin_t) {
  const int64_t half = head_dim / 2;
  parallel_for(N, grain_if(N * n_heads * head_dim > 65536, N), [&](int64_t tb, int64_t te, int) {
    for (int64_t t = tb; t < te; ++t) {
      const float* c = cos_t + t * half;
      const float* s = sin_t + t * half;
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = v[i], x2 = v[i + half];
          v[i] = x1 * c[i] - x2 * s[i];
          v[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  });
}

}  // namespace parscale::kernels
