// The Qwen2 decoder stack over a ragged batch of N tokens. It is unaware of ParScale streams:
// each token names its KV-cache row and its RoPE position, and attends to the row's slots
// [0, n_prefix[row] + pos], i.e. whatever prefix the row holds plus the causal real tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "model/kv_cache.h"
#include "model/weights.h"

namespace parscale {

// Scratch buffers of a forward pass, grown on demand (never inside a fixed-size decode loop
// once reserved). Sizes in floats; N = tokens in the pass, V = max visible slots. gate/up hold
// at most 512 rows: the MLP runs over row chunks of that size (bounded memory for long prefills).
struct ForwardWorkspace {
  std::vector<float> xn, q, k, v, attn, gate, up, cos_t, sin_t, scratch, inv_freq;
  std::vector<int32_t> n_visible;
  void reserve(const ModelConfig& c, int64_t n_tokens, int64_t max_visible);
};

// Runs every decoder layer on x [N, H] (the residual stream, updated in place), writing the
// tokens' K/V into the cache at slot n_prefix[row] + pos. Does not apply the final norm.
// Throws parscale::Error when a position does not fit the cache.
void qwen2_layers_forward(const ModelWeights& w, KVCache& cache, const int32_t* row, const int32_t* pos, int64_t N,
                          float* x, ForwardWorkspace& ws);

// One decoder layer (the unit that training recomputes and differentiates).
void qwen2_layer_forward(const ModelWeights& w, int64_t layer, KVCache& cache, const int32_t* row, const int32_t* pos,
                         int64_t N, float* x, ForwardWorkspace& ws);

// Embedding lookup: x[i, :] = embed_tokens[ids[i], :] (fp32). Throws on an id outside the vocabulary.
void embed_tokens(const ModelWeights& w, const int32_t* ids, int64_t N, float* x);

}  // namespace parscale
