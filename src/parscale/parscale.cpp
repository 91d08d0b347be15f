#include "parscale/parscale.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace parscale {

RowPrefix stream_prefix(const Adapter* a, int64_t n_kv_heads, int64_t head_dim, int64_t s) {
  RowPrefix p;
  if (!a) return p;
  p.k = a->prefix_k.data();
  p.v = a->prefix_v.data();
  p.offset = s * n_kv_heads * a->prefix_tokens * head_dim;
  p.n = static_cast<int32_t>(a->prefix_tokens);
  return p;
}

void aggregate_streams(const Adapter* a, int64_t H, const float* h, int64_t M, float* out, AggregateWorkspace& ws,
                       float* stream_weights) {
  if (!a) {
    std::copy_n(h, M * H, out);
    if (stream_weights) std::fill_n(stream_weights, M, 1.0f);
    return;
  }
  const int64_t P = a->streams;
  ws.concat.resize(static_cast<size_t>(M * P * H));
  ws.hidden.resize(static_cast<size_t>(M * H));
  ws.logits.resize(static_cast<size_t>(M * P));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t s = 0; s < P; ++s) {
      const float* src = h + (s * M + m) * H;
      float* dst = ws.concat.data() + m * P * H + s;
      for (int64_t k = 0; k < H; ++k) dst[k * P] = src[k];
    }
  kernels::matmul(ws.concat.data(), M, a->aggregate0, a->aggregate0_bias, ws.hidden.data());
  if (ws.record) ws.pre_silu.assign(ws.hidden.begin(), ws.hidden.end());
  for (int64_t i = 0; i < M * H; ++i) {
    const float v = ws.hidden[static_cast<size_t>(i)];
    ws.hidden[static_cast<size_t>(i)] = v / (1.0f + std::exp(-v));  // SiLU
  }
  kernels::matmul(ws.hidden.data(), M, a->aggregate2, a->aggregate2_bias, ws.logits.data());
  kernels::softmax_rows(ws.logits.data(), M, P);
  if (ws.record) ws.probs.assign(ws.logits.begin(), ws.logits.end());
  const float eps = static_cast<float>(a->smooth);
  if (eps != 0.0f)
    for (int64_t i = 0; i < M * P; ++i) {
      float& v = ws.logits[static_cast<size_t>(i)];
      v = v * (1.0f - eps) + eps / static_cast<float>(P);
    }
  for (int64_t m = 0; m < M; ++m) {
    float* o = out + m * H;
    std::fill_n(o, H, 0.0f);
    for (int64_t s = 0; s < P; ++s) {
      const float ws_ = ws.logits[static_cast<size_t>(m * P + s)];
      const float* src = h + (s * M + m) * H;
      for (int64_t k = 0; k < H; ++k) o[k] += ws_ * src[k];
    }
  }
  if (stream_weights) std::copy_n(ws.logits.data(), M * P, stream_weights);
}

}  // namespace parscale
