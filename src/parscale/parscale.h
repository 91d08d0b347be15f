// ParScale: P streams over one Qwen2 backbone.
//  - Stream layout: B sequences × P streams -> cache rows r = s·B + b (stream-major), and token
//    activations laid out [P][M][H] for M tokens per stream.
//  - Prefixes: layer l's prefix_k/prefix_v [P, KVH, T, D] fill slots 0..T-1 of every row of stream s.
//  - Aggregation: h [P][M][H] (after the per-stream final RMSNorm) -> interleaved concat
//    c[m, k·P + s] = h[s][m][k] -> Linear(P·H→H)+bias -> SiLU -> Linear(H→P)+bias -> softmax
//    (fp32) -> w·(1−ε)+ε/P -> out[m] = Σ_s w[m,s]·h[s][m].
#pragma once
#include <cstdint>
#include <vector>

#include "model/kv_cache.h"
#include "model/weights.h"

namespace parscale {

// Writes every layer's prefix of stream s into rows s·B + b (all b < B) and sets n_prefix = T.
// With P = 1 sets n_prefix = 0. Rows' real-token lengths are reset to 0.
void load_stream_prefixes(const ModelWeights& w, KVCache& cache, int64_t batch);
// Same for the rows of one sequence b only (reuse of a batch slot).
void load_stream_prefixes_for(const ModelWeights& w, KVCache& cache, int64_t batch, int64_t b);

struct AggregateWorkspace {
  std::vector<float> concat, hidden, logits;  // [M, P·H], [M, H], [M, P]
};

// h [P][M][H] -> out [M][H]. stream_weights (optional) receives the smoothed weights [M, P].
// P = 1: out = h.
void aggregate_streams(const ModelWeights& w, const float* h, int64_t M, float* out, AggregateWorkspace& ws,
                       float* stream_weights = nullptr);

}  // namespace parscale
