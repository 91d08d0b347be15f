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

namespace parscale::bench {

// A mixed-P step: `count` sequences with P streams for each entry (e.g. {{1, 8}, {4, 2}, {8, 1}}).
struct MixEntry {
  int64_t streams = 1, count = 1;
};
// "1x8,4x2,8x1" -> entries; throws parscale::Error naming the option on bad input.
std::vector<MixEntry> parse_mix(const std::string& text);

struct MixOptions {
  int64_t prompt_len = 128;
  int64_t decode_steps = 8;   // timed steps of each kind
  int64_t page_tokens = 64;
  DType kv_dtype = DType::BF16;
  uint64_t seed = 1234;
  bool accounting_only = false;  // KV page accounting without running the model
};

struct MixResult {
  int64_t sequences = 0, stream_rows = 0;     // per decode step
  int64_t kv_pages = 0, kv_bytes = 0;         // pages held by the mix at the end
  int64_t kv_real_token_bytes = 0;            // what the real tokens alone need (no rounding)
  int64_t kv_prefix_bytes_per_sequence = 0;   // always 0: prefixes are read in place
  std::vector<double> mixed_ms, single_ms;    // decode steps: the whole mix, one P = 1 sequence
};

// Runs the mix on one backbone (one random adapter per distinct P > 1): prefill every sequence,
// then alternates timed decode steps of the whole mix and of one P = 1 sequence alone.
MixResult run_mix(const ModelWeights& backbone, const std::vector<MixEntry>& mix, const MixOptions& options);

}  // namespace parscale::bench

namespace parscale::bench {

// Decode latency under a long prompt, through the real scheduler and model pass: `decoders`
// sequences decode (undisturbed steps timed), then one `long_prompt`-token prompt is submitted and
// every step until its first token is timed (the decoders keep decoding beside its chunks).
struct InterferenceOptions {
  int64_t decoders = 4;
  int64_t decoder_prompt = 32;       // prompt tokens of each decoding sequence
  int64_t long_prompt = 2000;
  int64_t undisturbed_steps = 16;    // timed steps before the long prompt arrives
  int64_t batch_rows = 512;
  int64_t prefill_rows_while_decoding = 8;   // EngineOptions' cap (0 = none)
  int64_t page_tokens = 64;
  DType kv_dtype = DType::BF16;
  uint64_t seed = 1234;
};

struct InterferenceResult {
  std::vector<double> undisturbed_ms;  // one scheduler step each
  std::vector<double> admitting_ms;    // steps while the long prompt is admitted (to its first token)
  double long_prompt_first_token_ms = 0;  // submit -> first token of the long prompt
};

// `w`: the model (its own P and adapter).
InterferenceResult run_interference(const ModelWeights& w, const InterferenceOptions& options);

// The q-quantile (0..1, nearest rank) of v; 0 for an empty v.
double quantile(std::vector<double> v, double q);

}  // namespace parscale::bench
