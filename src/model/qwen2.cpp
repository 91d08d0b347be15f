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

void ForwardWorkspace::reserve(const ModelConfig& c, int64_t N) {
  grow(xn, N * c.hidden_size);
  grow(q, N * c.q_dim());
  grow(k, N * c.kv_dim());
  grow(v, N * c.kv_dim());
  grow(attn, N * c.q_dim());
  grow(gate, std::min(N, kMlpRows) * c.intermediate_size);
  grow(up, std::min(N, kMlpRows) * c.intermediate_size);
  grow(cos_t, N * c.head_dim / 2);
  grow(sin_t, N * c.head_dim / 2);
  grow(views, N);
  if (static_cast<int64_t>(inv_freq.size()) != c.head_dim / 2) {
    inv_freq.resize(static_cast<size_t>(c.head_dim / 2));
    kernels::rope_inv_freq(c.rope_theta, c.head_dim, inv_freq.data());
  }
}

kernels::PagedKV paged_layer(KvPool& pool, const ModelConfig& c, int64_t l) {
  return {pool.k_layer(l), pool.v_layer(l), pool.dtype(), c.num_key_value_heads, pool.page_tokens(), c.head_dim};
}

void embed_tokens(const Backbone& b, const int32_t* ids, int64_t N, float* x) {
  const int64_t H = b.config.hidden_size;
  for (int64_t i = 0; i < N; ++i) {
    if (ids[i] < 0 || ids[i] >= b.config.vocab_size)
      throw Error("token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                  std::to_string(b.config.vocab_size) + ")");
    kernels::weight_row_f32(b.embed_tokens, ids[i], x + i * H);
  }
}

void decoder_layer_forward(const Backbone& b, int64_t l, KvPool& pool, const TokenRows& rows, float* x,
                           ForwardWorkspace& ws) {
  const ModelConfig& c = b.config;
  const BackboneLayer& L = b.layers[static_cast<size_t>(l)];
  const int64_t N = rows.n, H = c.hidden_size, KD = c.kv_dim(), D = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const kernels::PagedKV kv = paged_layer(pool, c, l);

  // Attention block: x += o_proj(attn(rope(q), rope(k), v)) of rmsnorm(x).
  kernels::rmsnorm(x, L.input_norm, ws.xn.data(), N, H, eps);
  const kernels::MatmulOut qkv[3] = {{&L.q_proj, L.q_bias, ws.q.data()},
                                     {&L.k_proj, L.k_bias, ws.k.data()},
                                     {&L.v_proj, L.v_bias, ws.v.data()}};
  kernels::matmul_multi(ws.xn.data(), N, qkv, 3);
  kernels::rope_apply(ws.q.data(), N, c.num_attention_heads, D, ws.cos_t.data(), ws.sin_t.data());
  kernels::rope_apply(ws.k.data(), N, c.num_key_value_heads, D, ws.cos_t.data(), ws.sin_t.data());
  // Every token's K/V goes into its row first: tokens of one chunk see each other causally.
  for (int64_t i = 0; i < N; ++i) kernels::kv_write(kv, rows.pages[i], rows.pos[i], ws.k.data() + i * KD, ws.v.data() + i * KD);
  for (int64_t i = 0; i < N; ++i) {
    const RowPrefix& pre = rows.prefix[i];
    kernels::KvView& view = ws.views[static_cast<size_t>(i)];
    view.n_prefix = pre.n;
    view.prefix_k = pre.n ? pre.k[l] + pre.offset : nullptr;
    view.prefix_v = pre.n ? pre.v[l] + pre.offset : nullptr;
    view.prefix_head_stride = static_cast<int64_t>(pre.n) * D;
    view.n_real = rows.pos[i] + 1;
    view.pages = rows.pages[i];
  }
  kernels::attention_paged(ws.q.data(), N, c.num_attention_heads, ws.views.data(), kv,
                           1.0f / std::sqrt(static_cast<float>(D)), ws.attn.data());
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

void decoder_forward(const Backbone& b, KvPool& pool, const TokenRows& rows, float* x, ForwardWorkspace& ws) {
  const ModelConfig& c = b.config;
  for (int64_t i = 0; i < rows.n; ++i)
    if (rows.pos[i] < 0 || rows.pos[i] >= c.max_position_embeddings)
      throw Error("forward: position " + std::to_string(rows.pos[i]) + " is outside the context of " +
                  std::to_string(c.max_position_embeddings) + " tokens (max_position_embeddings)");
  ws.reserve(c, rows.n);
  kernels::rope_tables(rows.pos, rows.n, ws.inv_freq.data(), c.head_dim, ws.cos_t.data(), ws.sin_t.data());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) decoder_layer_forward(b, l, pool, rows, x, ws);
}

}  // namespace parscale
