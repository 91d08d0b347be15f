// A Session holds B sequences being processed together: their KV cache (B·P rows, prefixes
// loaded), their lengths, and reusable scratch. `forward` appends a chunk of tokens to each
// sequence (any lengths, including 0) in ONE pass over the weights and returns logits.
#pragma once
#include <cstdint>
#include <vector>

#include "model/kv_cache.h"
#include "model/qwen2.h"
#include "model/weights.h"
#include "parscale/parscale.h"

namespace parscale {

class Session {
 public:
  // max_len: real tokens each sequence may hold (at most max_position_embeddings).
  Session(const ModelWeights& weights, int64_t batch, int64_t max_len);

  enum class Outputs { AllPositions, LastPosition };
  // Appends chunks[b] to sequence b (chunks.size() == batch). Writes logits [n_out, V] to
  // `logits`, ordered by sequence then position: every position of every chunk (AllPositions),
  // or the last position of each non-empty chunk (LastPosition).
  void forward(const std::vector<std::vector<int32_t>>& chunks, Outputs outputs, std::vector<float>& logits);

  // Forgets sequence b (its rows get fresh prefixes, length 0).
  void reset(int64_t b);
  int64_t length(int64_t b) const { return lengths_[static_cast<size_t>(b)]; }
  int64_t batch() const { return batch_; }
  int64_t max_len() const { return max_len_; }
  const ModelWeights& weights() const { return w_; }
  const KVCache& cache() const { return cache_; }
  // Smoothed stream weights [n_out, P] of the last forward (diagnostics).
  const std::vector<float>& stream_weights() const { return stream_weights_; }

 private:
  const ModelWeights& w_;
  int64_t batch_, max_len_;
  KVCache cache_;
  std::vector<int64_t> lengths_;
  // Reused buffers (sized on first use; a decode loop of fixed B reuses them without allocating).
  std::vector<int32_t> ids_, rows_, pos_, out_index_;
  std::vector<float> x_, selected_, aggregated_, stream_weights_;
  ForwardWorkspace ws_;
  AggregateWorkspace agg_ws_;
};

}  // namespace parscale
