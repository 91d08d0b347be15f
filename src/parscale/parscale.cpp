#include "parscale/parscale.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace parscale {

void load_stream_prefixes_for(const ModelWeights& w, KVCache& cache, int64_t B, int64_t b) {
  const ModelConfig& c = w.config;
  const int64_t P = c.streams(), T = c.prefix_tokens(), D = c.head_dim, KVH = c.num_key_value_heads;
  for (int64_t s = 0; s < P; ++s) {
    const int64_t r = s * B + b;
    cache.n_prefix[static_cast<size_t>(r)] = static_cast<int32_t>(T);
    cache.length[static_cast<size_t>(r)] = 0;
    if (T == 0) continue;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const LayerWeights& L = w.layers[static_cast<size_t>(l)];
      kernels::KVLayer kv = cache.layer(l);
      for (int64_t h = 0; h < KVH; ++h) {
        // prefix [P, KVH, T, D]: the T slots of (s, h) are contiguous, as are the cache slots.
        const int64_t off = ((s * KVH + h) * T) * D;
        std::copy_n(L.prefix_k + off, T * D, kv.k_at(r, h, 0));
        std::copy_n(L.prefix_v + off, T * D, kv.v_at(r, h, 0));
      }
    }
  }
}

void load_stream_prefixes(const ModelWeights& w, KVCache& cache, int64_t B) {
  for (int64_t b = 0; b < B; ++b) load_stream_prefixes_for(w, cache, B, b);
}

void aggregate_streams(const ModelWeights& w, const float* h, int64_t M, float* out, AggregateWorkspace& ws,
                       float* stream_weights) {
  const ModelConfig& c = w.config;
  const int64_t P = c.streams(), H = c.hidden_size;
  if (P == 1) {
    std::copy_n(h, M * H, out);
    if (stream_weights) std::fill_n(stream_weights, M, 1.0f);
    return;
  }
  ws.concat.resize(static_cast<size_t>(M * P * H));
  ws.hidden.resize(static_cast<size_t>(M * H));
  ws.logits.resize(static_cast<size_t>(M * P));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t s = 0; s < P; ++s) {
      const float* src = h + (s * M + m) * H;
      float* dst = ws.concat.data() + m * P * H + s;
      for (int64_t k = 0; k < H; ++k) dst[k * P] = src[k];
    }
  kernels::matmul(ws.concat.data(), M, w.aggregate0, w.aggregate0_bias, ws.hidden.data());
  for (auto& v : ws.hidden) v = v / (1.0f + std::exp(-v));  // SiLU
  kernels::matmul(ws.hidden.data(), M, w.aggregate2, w.aggregate2_bias, ws.logits.data());
  kernels::softmax_rows(ws.logits.data(), M, P);
  const float eps = static_cast<float>(c.parscale_attn_smooth);
  if (eps != 0.0f)
    for (auto& v : ws.logits) v = v * (1.0f - eps) + eps / static_cast<float>(P);
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
