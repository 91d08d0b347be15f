// A Session holds B sequences run together with one model (backbone + its adapter): their paged
// KV (every stream row's pages reserved up front for max_len tokens) and reusable buffers.
// `forward` appends a chunk of tokens to each sequence (any lengths, including 0) in ONE pass
// over the weights (BatchForward) and returns logits. The serving Engine schedules requests over
// the same BatchForward with pages allocated on demand; a Session is the fixed-batch form used by
// `logits`, batch `generate`, `chat` and tests.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/batch_forward.h"
#include "model/kv_pool.h"
#include "model/weights.h"

namespace parscale {

struct SessionOptions {
  DType kv_dtype = DType::F32;
  int64_t page_tokens = 64;
};

class Session {
 public:
  // max_len: real tokens each sequence may hold (at most max_position_embeddings). Holds its own
  // reference to the backbone and adapter (the caller's ModelWeights may go away).
  Session(const ModelWeights& weights, int64_t batch, int64_t max_len, const SessionOptions& options = {});
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  enum class Outputs { AllPositions, LastPosition };
  // Appends chunks[b] to sequence b (chunks.size() == batch). Writes logits [n_out, V] to
  // `logits`, ordered by sequence then position: every position of every chunk (AllPositions),
  // or the last position of each non-empty chunk (LastPosition).
  void forward(const std::vector<std::vector<int32_t>>& chunks, Outputs outputs, std::vector<float>& logits);

  // Forgets sequence b (length 0; its pages are overwritten by what comes next).
  void reset(int64_t b);
  int64_t length(int64_t b) const { return lengths_[static_cast<size_t>(b)]; }
  int64_t batch() const { return batch_; }
  int64_t max_len() const { return max_len_; }
  const ModelWeights& weights() const { return w_; }
  // Bytes of KV pages held (the adapter's prefixes are read in place and cost nothing here).
  int64_t kv_bytes() const { return pool_.bytes(); }
  // Smoothed stream weights [n_out, P] of the last forward (diagnostics).
  const std::vector<float>& stream_weights() const { return stream_weights_; }

 private:
  ModelWeights w_;
  int64_t batch_, max_len_;
  KvPool pool_;
  std::vector<std::vector<int32_t>> tables_;            // [b * P + s]: pages of stream s of sequence b
  std::vector<std::vector<const std::vector<int32_t>*>> table_ptrs_;  // [b][s]
  std::vector<int64_t> lengths_;
  std::vector<SequenceChunk> chunks_;
  BatchOutputs out_;
  BatchForward forward_;
  std::vector<float> stream_weights_;
};

}  // namespace parscale
