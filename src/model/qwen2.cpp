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

void ForwardWorkspace::reserve(const ModelConfig& c, int64_t N, bool taped) {
  if (!taped) {
    grow(xn, N * c.hidden_size);
    grow(q, N * c.q_dim());
    grow(k, N * c.kv_dim());
    grow(v, N * c.kv_dim());
    grow(attn, N * c.q_dim());
    grow(gate, std::min(N, kMlpRows) * c.intermediate_size);
    grow(up, std::min(N, kMlpRows) * c.intermediate_size);
  }
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
                           ForwardWorkspace& ws, const LayerTape* tape) {
  const ModelConfig& c = b.config;
  const BackboneLayer& L = b.layers[static_cast<size_t>(l)];
  const int64_t N = rows.n, H = c.hidden_size, KD = c.kv_dim(), D = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const kernels::PagedKV kv = paged_layer(pool, c, l);
  // Where each intermediate goes: the tape's buffers when recording, else the workspace's.
  float* xn1 = tape ? tape->xn1 : ws.xn.data();
  float* q = tape ? tape->q : ws.q.data();
  float* k = tape ? tape->k : ws.k.data();
  float* v = tape ? tape->v : ws.v.data();
  float* attn = tape ? tape->attn : ws.attn.data();
  float* xn2 = tape ? tape->xn2 : ws.xn.data();

  // Attention block: x += o_proj(attn(rope(q), rope(k), v)) of rmsnorm(x).
  kernels::rmsnorm(x, L.input_norm, xn1, N, H, eps);
  if (c.qk_norm) {  // Qwen3: RMSNorm of every head's q and k (rows of D values), before RoPE
    float* qp = tape ? tape->qpre : q;  // without a tape the norm runs in place
    float* kp = tape ? tape->kpre : k;
    const kernels::MatmulOut qkv[3] = {{&L.q_proj, L.q_bias, qp}, {&L.k_proj, L.k_bias, kp}, {&L.v_proj, L.v_bias, v}};
    kernels::matmul_multi(xn1, N, qkv, 3);
    kernels::rmsnorm(qp, L.q_norm, q, N * c.num_attention_heads, D, eps);
    kernels::rmsnorm(kp, L.k_norm, k, N * c.num_key_value_heads, D, eps);
  } else {
    const kernels::MatmulOut qkv[3] = {{&L.q_proj, L.q_bias, q}, {&L.k_proj, L.k_bias, k}, {&L.v_proj, L.v_bias, v}};
    kernels::matmul_multi(xn1, N, qkv, 3);
  }
  if (tape && tape->k_unroped) std::copy_n(k, N * KD, tape->k_unroped);
  kernels::rope_apply(q, N, c.num_attention_heads, D, ws.cos_t.data(), ws.sin_t.data());
  kernels::rope_apply(k, N, c.num_key_value_heads, D, ws.cos_t.data(), ws.sin_t.data());
  // Every token's K/V goes into its row first: tokens of one chunk see each other causally.
  for (int64_t i = 0; i < N; ++i) kernels::kv_write(kv, rows.pages[i], rows.pos[i], k + i * KD, v + i * KD);
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
  kernels::attention_paged(q, N, c.num_attention_heads, ws.views.data(), kv, 1.0f / std::sqrt(static_cast<float>(D)), attn,
                           tape ? tape->lse : nullptr);
  kernels::matmul_add(attn, N, L.o_proj, x);
  if (tape) std::copy_n(x, N * H, tape->hmid);

  // MLP block: x += down(silu(gate(n)) * up(n)), n = rmsnorm(x).
  kernels::rmsnorm(x, L.post_norm, xn2, N, H, eps);
  if (tape) {  // every row at once, gate and up kept (the fused kernel may not write them)
    kernels::matmul(xn2, N, L.gate_proj, nullptr, tape->gate);
    kernels::matmul(xn2, N, L.up_proj, nullptr, tape->up);
    kernels::swiglu(tape->gate, tape->up, tape->act, N * c.intermediate_size);
    kernels::matmul_add(tape->act, N, L.down_proj, x);
    return;
  }
  // Rows go in chunks of at most kMlpRows so the [rows, I] gate/up buffers stay small for long
  // prefills (peak memory); each chunk still reuses every converted weight tile across its rows.
  for (int64_t m0 = 0; m0 < N; m0 += kMlpRows) {
    const int64_t mc = std::min(kMlpRows, N - m0);
    kernels::gate_up_swiglu(xn2 + m0 * H, mc, L.gate_proj, L.up_proj, ws.gate.data(), ws.up.data(), ws.gate.data());
    kernels::matmul_add(ws.gate.data(), mc, L.down_proj, x + m0 * H);
  }
}

void decoder_prepare(const Backbone& b, const TokenRows& rows, ForwardWorkspace& ws, bool taped) {
  const ModelConfig& c = b.config;
  for (int64_t i = 0; i < rows.n; ++i)
    if (rows.pos[i] < 0 || rows.pos[i] >= c.max_position_embeddings)
      throw Error("forward: position " + std::to_string(rows.pos[i]) + " is outside the context of " +
                  std::to_string(c.max_position_embeddings) + " tokens (max_position_embeddings)");
  ws.reserve(c, rows.n, taped);
  kernels::rope_tables(rows.pos, rows.n, ws.inv_freq.data(), c.head_dim, ws.cos_t.data(), ws.sin_t.data());
}

void decoder_forward(const Backbone& b, KvPool& pool, const TokenRows& rows, float* x, ForwardWorkspace& ws) {
  decoder_prepare(b, rows, ws);
  for (int64_t l = 0; l < b.config.num_hidden_layers; ++l) decoder_layer_forward(b, l, pool, rows, x, ws);
}

}  // namespace parscale
