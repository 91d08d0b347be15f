// One forward pass over a mixed batch: a set of sequences, each with its own adapter (P_i
// streams; none = the plain backbone, P = 1) and a chunk of new tokens (a prefill chunk of any
// length, one decode token, or nothing). Each sequence is expanded into its P_i stream rows;
// every backbone matmul runs ONCE over all rows of all sequences (one pass over the weights per
// step, whatever the mix); then, per sequence, the final norm and its adapter's aggregation for
// the positions that need logits, and one lm_head over all of those positions.
//
// The caller (the scheduler) owns the block tables and the pool's pages: before run(), the block
// table of every stream row of a sequence must hold ceil((length + n_new) / page_tokens) pages,
// and the pages that receive new tokens must have a single holder. run() writes the new tokens'
// K/V into those pages; it never allocates or frees pages.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/kv_pool.h"
#include "model/qwen2.h"
#include "parscale/parscale.h"

namespace parscale {

struct SequenceChunk {
  const Adapter* adapter = nullptr;         // null: plain backbone (P = 1)
  // Block tables of the sequence's stream rows: block_tables[s] for stream s < P (P pointers).
  const std::vector<int32_t>* const* block_tables = nullptr;
  int64_t length = 0;                       // real tokens already in the cache
  const int32_t* tokens = nullptr;          // the new chunk
  int64_t n_new = 0;                        // >= 0
  enum class Outputs { None, Last, All } outputs = Outputs::Last;
};

// Results of run(): one output row per (sequence, position) asked for, in sequence order then
// position order. row_sequence[r] = index of the sequence in the span, row_position[r] = the
// token's position (0-based over the whole sequence).
struct BatchOutputs {
  int64_t rows = 0;
  std::vector<float> logits;          // [rows, V]
  std::vector<int32_t> row_sequence;  // [rows]
  std::vector<int32_t> row_position;  // [rows]
  // Aggregation weights of each output row's streams, stream_weights[row_weight_offset[r] + s]
  // for s < P of that sequence (1.0 for P = 1).
  std::vector<float> stream_weights;
  std::vector<int32_t> row_weight_offset;
};

class BatchForward {
 public:
  BatchForward(const Backbone& backbone, KvPool& pool);
  // Throws parscale::Error on an inconsistent chunk (ids outside the vocabulary, positions past
  // max_position_embeddings, a missing page). Reuses its buffers: a steady decode loop of a fixed
  // batch allocates nothing after the first step.
  void run(std::span<const SequenceChunk> batch, BatchOutputs& out);
  // Stream rows of the last pass (sum of P_i * n_new_i): the unit of compute.
  int64_t last_rows() const { return last_rows_; }

 private:
  const Backbone& backbone_;
  KvPool& pool_;
  int64_t last_rows_ = 0;
  // Reused buffers (grown on first use).
  std::vector<int32_t> ids_, pos_;
  std::vector<const int32_t*> row_pages_;
  std::vector<RowPrefix> row_prefix_;
  std::vector<int64_t> seq_row0_;               // first stream row of each sequence
  std::vector<float> x_, embedded_, selected_, aggregated_, weights_;
  std::vector<int32_t> group_out_;              // per group row: global output row
  std::vector<const Adapter*> groups_;          // distinct adapters of the pass
  ForwardWorkspace ws_;
  AggregateWorkspace agg_ws_;
};

}  // namespace parscale
