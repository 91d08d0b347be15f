// Engine benchmark building blocks: random weights of named or given shapes (generated in memory
// in the target dtype, ParScale prefixes and aggregation included), the bytes and multiply-adds a
// step reads and does, peak-RSS bookkeeping, and one timed prefill + decode run. Used by
// `parscale bench` and by `parscale cost --measure`.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"

namespace parscale::bench {

// "parscale-1.8b" (hidden 1536, intermediate 8320, 36 layers, 16/2 heads, head_dim 96, vocab
// 151936, tied), "qwen3-1.7b" (Qwen3-1.7B: hidden 2048, intermediate 6144, 28 layers, 16/8 heads,
// head_dim 128, vocab 151936, tied, q/k norm, no biases) or "tiny". Throws parscale::Error for
// other names.
ModelConfig named_shape(const std::string& name);

// Random P = 1 weights of `c` with matrices in `dtype` (DType::I8 = q8, block 32).
ModelWeights random_backbone(const ModelConfig& c, DType dtype, uint64_t seed);
// The backbone plus random prefixes (T = c.parscale_n_tokens) and aggregation for P streams.
ModelWeights with_streams(const ModelWeights& backbone, int64_t P, uint64_t seed);

// Bytes and multiply-adds of the matrices that every token row passes through.
struct ModelCost {
  int64_t backbone_bytes = 0, backbone_params = 0;  // decoder layers (per stream row)
  int64_t head_bytes = 0, head_params = 0;          // lm_head (per output row, after aggregation)
  int64_t agg_bytes = 0, agg_params = 0;            // aggregation MLP (per output row)
};
ModelCost model_cost(const ModelWeights& w);

// Peak resident set (VmHWM) in bytes, and its reset (/proc/self/clear_refs).
int64_t peak_rss_bytes();
void reset_peak_rss();
double now_seconds();

struct RunOptions {
  int64_t batch = 1;
  int64_t prompt_len = 512;
  int64_t decode_steps = 16;
  int64_t prefill_rows = 4096;  // at most this many stream rows per prefill pass
  int64_t repeat = 1;           // fresh session each time
  uint64_t seed = 1234;         // prompt ids
};

struct RunResult {
  double prefill_s = 0;          // best prefill time over the repeats
  std::vector<double> step_ms;   // every decode step of every repeat
  int64_t passes = 0;            // prefill passes (chunks)
  int64_t kv_bytes = 0;          // KV cache of one session
};

// Prefills `batch` random prompts, then times `decode_steps` greedy decode steps.
RunResult run(const ModelWeights& w, const RunOptions& options);

}  // namespace parscale::bench
