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
// MLP runs over row chunks of that size (bounded memory for long prefills).
struct ForwardWorkspace {
  std::vector<float> xn, q, k, v, attn, gate, up, cos_t, sin_t, inv_freq;
  std::vector<kernels::KvView> views;
  void reserve(const ModelConfig& c, int64_t n_tokens);
};

// The paged-KV layer view of layer l of `pool`.
kernels::PagedKV paged_layer(KvPool& pool, const ModelConfig& c, int64_t layer);

// Runs every decoder layer on x [N, H] (the residual stream, updated in place), writing each
// token's K/V into its row's pages. Does not apply the final norm. Throws parscale::Error when a
// position is negative or beyond max_position_embeddings.
void decoder_forward(const Backbone& b, KvPool& pool, const TokenRows& rows, float* x, ForwardWorkspace& ws);

// One decoder layer (after rope tables are in ws: decoder_forward prepares them).
void decoder_layer_forward(const Backbone& b, int64_t layer, KvPool& pool, const TokenRows& rows, float* x,
                           ForwardWorkspace& ws);

// Embedding lookup: x[i, :] = embed_tokens[ids[i], :] (fp32). Throws on an id outside the vocabulary.
void embed_tokens(const Backbone& b, const int32_t* ids, int64_t N, float* x);

}  // namespace parscale
