#include "model/qwen2.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/threads.h"

namespace parscale {

namespace {
// Token rows per MLP chunk (bounds the gate/up scratch to kMlpRows x intermediate floats each).
constexpr int64_t kMlpRows = 512;

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}
}  // namespace

void ForwardWorkspace::reserve(const ModelConfig& c, int64_t N, int64_t max_visible) {
  grow(xn, N * c.hidden_size);
  grow(q, N * c.q_dim());
  grow(k, N * c.kv_dim());
  grow(v, N * c.kv_dim());
  grow(attn, N * c.q_dim());
  grow(gate, std::min(N, kMlpRows) * c.intermediate_size);
  grow(up, std::min(N, kMlpRows) * c.intermediate_size);
  grow(cos_t, N * c.head_dim / 2);
  grow(sin_t, N * c.head_dim / 2);
  grow(n_visible, N);
  grow(scratch, static_cast<int64_t>(num_threads()) * std::max<int64_t>(max_visible, 1));
  if (static_cast<int64_t>(inv_freq.size()) != c.head_dim / 2) {
    inv_freq.resize(static_cast<size_t>(c.head_dim / 2));
    kernels::rope_inv_freq(c.rope_theta, c.head_dim, inv_freq.data());
  }
}

void embed_tokens(const ModelWeights& w, const int32_t* ids, int64_t N, float* x) {
  const int64_t H = w.config.hidden_size;
  for (int64_t i = 0; i < N; ++i) {
    if (ids[i] < 0 || ids[i] >= w.config.vocab_size)
      throw Error("token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                  std::to_string(w.config.vocab_size) + ")");
    kernels::weight_row_f32(w.embed_tokens, ids[i], x + i * H);
  }
}

void qwen2_layer_forward(const ModelWeights& w, int64_t l, KVCache& cache, const int32_t* row, const int32_t* pos,
                         int64_t N, float* x, ForwardWorkspace& ws) {
  const ModelConfig& c = w.config;
  const LayerWeights& L = w.layers[static_cast<size_t>(l)];
  const int64_t H = c.hidden_size, KD = c.kv_dim(), D = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  kernels::KVLayer kv = cache.layer(l);

  // Attention block: x += o_proj(attn(rope(q), rope(k), v)) of rmsnorm(x).
  kernels::rmsnorm(x, L.input_norm, ws.xn.data(), N, H, eps);
  const kernels::MatmulOut qkv[3] = {{&L.q_proj, L.q_bias, ws.q.data()},
                                     {&L.k_proj, L.k_bias, ws.k.data()},
                                     {&L.v_proj, L.v_bias, ws.v.data()}};
  kernels::matmul_multi(ws.xn.data(), N, qkv, 3);
  if (c.qk_norm) {  // Qwen3: RMSNorm of every head's q and k (rows of D values), before RoPE
    kernels::rmsnorm(ws.q.data(), L.q_norm, ws.q.data(), N * c.num_attention_heads, D, eps);
    kernels::rmsnorm(ws.k.data(), L.k_norm, ws.k.data(), N * c.num_key_value_heads, D, eps);
  }
  kernels::rope_apply(ws.q.data(), N, c.num_attention_heads, D, ws.cos_t.data(), ws.sin_t.data());
  kernels::rope_apply(ws.k.data(), N, c.num_key_value_heads, D, ws.cos_t.data(), ws.sin_t.data());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t slot = cache.n_prefix[static_cast<size_t>(row[i])] + pos[i];
    for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
      std::copy_n(ws.k.data() + i * KD + h * D, D, kv.k_at(row[i], h, slot));
      std::copy_n(ws.v.data() + i * KD + h * D, D, kv.v_at(row[i], h, slot));
    }
  }
  kernels::attention(ws.q.data(), N, c.num_attention_heads, row, ws.n_visible.data(), kv,
                     1.0f / std::sqrt(static_cast<float>(D)), ws.attn.data(), ws.scratch.data());
  kernels::matmul_add(ws.attn.data(), N, L.o_proj, x);

  // MLP block: x += down(silu(gate(n)) * up(n)), n = rmsnorm(x). Rows go in chunks of at most
  // kMlpRows so the [rows, I] gate/up buffers stay small for long prefills (peak memory); each
  // chunk still reuses every converted weight tile across its rows.
  kernels::rmsnorm(x, L.post_norm, ws.xn.data(), N, H, eps);
  for (int64_t m0 = 0; m0 < N; m0 += kMlpRows) {
    const int64_t mc = std::min(kMlpRows, N - m0);
    kernels::gate_up_swiglu(ws.xn.data() + m0 * H, mc, L.gate_proj, L.up_proj, ws.gate.data(), ws.up.data(), ws.gate.data());
    kernels::matmul_add(ws.gate.data(), mc, L.down_proj, x + m0 * H);
  }
}

void qwen2_layers_forward(const ModelWeights& w, KVCache& cache, const int32_t* row, const int32_t* pos, int64_t N,
                          float* x, ForwardWorkspace& ws) {
  const ModelConfig& c = w.config;
  int64_t max_visible = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (row[i] < 0 || row[i] >= cache.rows()) throw Error("forward: cache row " + std::to_string(row[i]) + " out of range");
    const int64_t visible = cache.n_prefix[static_cast<size_t>(row[i])] + static_cast<int64_t>(pos[i]) + 1;
    if (pos[i] < 0 || visible > cache.capacity())
      throw Error("forward: position " + std::to_string(pos[i]) + " does not fit the KV cache (" +
                  std::to_string(cache.capacity()) + " slots per row)");
    max_visible = std::max(max_visible, visible);
  }
  ws.reserve(c, N, max_visible);
  for (int64_t i = 0; i < N; ++i)
    ws.n_visible[static_cast<size_t>(i)] = cache.n_prefix[static_cast<size_t>(row[i])] + pos[i] + 1;
  kernels::rope_tables(pos, N, ws.inv_freq.data(), c.head_dim, ws.cos_t.data(), ws.sin_t.data());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) qwen2_layer_forward(w, l, cache, row, pos, N, x, ws);
}

}  // namespace parscale
