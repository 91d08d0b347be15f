// Attention of N query tokens over their rows of a KV cache (prefix slots + causal real tokens).
// One (token, head) pair per task: scores -> stable softmax -> weighted sum of V.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/dispatch.h"

namespace parscale::kernels {

void detail::attention_scalar(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
                              const KVLayer& kv, float scale, float* out, float* scratch, float* lse) {
  const int64_t D = kv.head_dim;
  const int64_t group = n_heads / kv.n_kv_heads;
  int64_t max_visible = 0;
  for (int64_t i = 0; i < N; ++i) max_visible = std::max<int64_t>(max_visible, n_visible[i]);
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t h = 0; h < n_heads; ++h) {
      float* scores = scratch + static_cast<int64_t>(omp_get_thread_num()) * max_visible;
      const float* qh = q + (i * n_heads + h) * D;
      const int64_t kvh = h / group;
      const int64_t n = n_visible[i];
      const float* kbase = kv.k_at(row[i], kvh, 0);
      const float* vbase = kv.v_at(row[i], kvh, 0);
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = kbase + j * D;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; ++d) s += qh[d] * kj[d];
        s *= scale;
        scores[j] = s;
        mx = std::max(mx, s);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      const float inv = 1.0f / sum;
      float* o = out + (i * n_heads + h) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        const float p = scores[j] * inv;
        const float* vj = vbase + j * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * vj[d];
      }
      if (lse) lse[i * n_heads + h] = mx + std::log(sum);
    }
  }
}

void attention_ref(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
                   const KVLayer& kv, float scale, float* out) {
  const int64_t D = kv.head_dim;
  const int64_t group = n_heads / kv.n_kv_heads;
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t h = 0; h < n_heads; ++h) {
      const int64_t n = n_visible[i];
      std::vector<double> s(static_cast<size_t>(n));
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        const float* kj = kv.k_at(row[i], h / group, j);
        for (int64_t d = 0; d < D; ++d) acc += static_cast<double>(q[(i * n_heads + h) * D + d]) * kj[d];
        s[static_cast<size_t>(j)] = acc * scale;
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      double sum = 0.0;
      for (auto& v : s) sum += (v = std::exp(v - mx));
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j < n; ++j) acc += s[static_cast<size_t>(j)] / sum * kv.v_at(row[i], h / group, j)[d];
        out[(i * n_heads + h) * D + d] = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace parscale::kernels
