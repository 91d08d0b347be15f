// The Qwen2 decoder stack over a ragged batch of N token rows. It is unaware of ParScale streams:
// each token row names its RoPE position, the block table of its cache row (real tokens in pages
// of a KvPool), and optionally a fixed prefix of its cache row (slots ahead of the real tokens,
// read in place, e.g. a ParScale stream's learned prefix). A token at position p attends to the
// row's prefix slots and real slots [0, p].
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "model/backbone.h"
#include "model/kv_pool.h"

namespace parscale {

// Fixed slots ahead of a cache row's real tokens, per layer: k[l] + offset, v[l] + offset are
// [n_kv_heads][n][head_dim] fp32 (kv head h at + h * n * head_dim). n = 0: no prefix.
struct RowPrefix {
  const float* const* k = nullptr;  // [layers]
  const float* const* v = nullptr;  // [layers]
  int64_t offset = 0;
  int32_t n = 0;
};

// The N token rows of a pass. Token i: RoPE position pos[i] (= its real slot in the row), the
// row's block table pages[i] (holding at least pos[i] + 1 slots), its prefix prefix[i].
struct TokenRows {
  int64_t n = 0;
  const int32_t* pos = nullptr;
  const int32_t* const* pages = nullptr;
  const RowPrefix* prefix = nullptr;
};

// Scratch buffers of a forward pass, grown on demand (never inside a fixed-size decode loop
// once reserved). Sizes in floats; N = token rows in the pass. gate/up hold at most 512 rows: the
// MLP runs over row chunks of that size (bounded memory for long prefills). With taped = true
// only what every pass needs (RoPE tables, attention views): the layers' intermediates go to
// the caller's LayerTape instead of xn .. up.
struct ForwardWorkspace {
  std::vector<float> xn, q, k, v, attn, gate, up, cos_t, sin_t, inv_freq;
  std::vector<kernels::KvView> views;
  void reserve(const ModelConfig& c, int64_t n_tokens, bool taped = false);
};

// What the training backward needs of one layer's forward, recorded by decoder_layer_forward
// into caller-owned buffers of N token rows (H hidden, QD = q_dim, KD = kv_dim, I intermediate,
// NH attention heads). With a tape the layer computes exactly what it computes without one (same
// kernels, same order, bitwise the same x); it only keeps the intermediates instead of reusing
// scratch. qpre/kpre: only for qk_norm configs. k_unroped: optional (null = not kept).
struct LayerTape {
  float* xn1 = nullptr;        // [N, H]  input RMSNorm of x
  float* qpre = nullptr;       // [N, QD] q projection before the per-head norm (qk_norm)
  float* kpre = nullptr;       // [N, KD] k projection before the per-head norm (qk_norm)
  float* q = nullptr;          // [N, QD] q after the per-head norm and RoPE
  float* k = nullptr;          // [N, KD] k after the per-head norm and RoPE (what the cache holds)
  float* v = nullptr;          // [N, KD]
  float* k_unroped = nullptr;  // [N, KD] k after the per-head norm, before RoPE (optional)
  float* lse = nullptr;        // [N, NH] log-sum-exp of each head's scaled attention scores
  float* attn = nullptr;       // [N, QD] attention output (input of o_proj)
  float* hmid = nullptr;       // [N, H]  residual stream after the attention block
  float* xn2 = nullptr;        // [N, H]  post-attention RMSNorm of hmid
  float* gate = nullptr;       // [N, I]  gate projection
  float* up = nullptr;         // [N, I]  up projection
  float* act = nullptr;        // [N, I]  silu(gate) * up (input of down_proj)
};

// The paged-KV layer view of layer l of `pool`.
kernels::PagedKV paged_layer(KvPool& pool, const ModelConfig& c, int64_t layer);

// Runs every decoder layer on x [N, H] (the residual stream, updated in place), writing each
// token's K/V into its row's pages. Does not apply the final norm. Throws parscale::Error when a
// position is negative or beyond max_position_embeddings.
void decoder_forward(const Backbone& b, KvPool& pool, const TokenRows& rows, float* x, ForwardWorkspace& ws);

// Checks the rows' positions and readies ws for them (buffers, RoPE tables). decoder_forward
// calls it; a caller running the layers one by one calls it once before the first layer
// (taped = true when every layer will get a LayerTape: no scratch for the intermediates).
void decoder_prepare(const Backbone& b, const TokenRows& rows, ForwardWorkspace& ws, bool taped = false);

// One decoder layer on x [N, H] in place (after decoder_prepare). The one layer function of the
// project: inference passes no tape; training passes one to keep what its backward needs.
void decoder_layer_forward(const Backbone& b, int64_t layer, KvPool& pool, const TokenRows& rows, float* x,
                           ForwardWorkspace& ws, const LayerTape* tape = nullptr);

// Embedding lookup: x[i, :] = embed_tokens[ids[i], :] (fp32). Throws on an id outside the vocabulary.
void embed_tokens(const Backbone& b, const int32_t* ids, int64_t N, float* x);

}  // namespace parscale
