// ParScale: P streams over one Qwen2 backbone, described by an Adapter (parscale/adapter.h).
//  - Streams: a sequence run with an adapter of P streams becomes P cache rows (stream rows);
//    token activations of the sequence are laid out [P][M][H] (stream-major) for M tokens.
//  - Prefixes: stream s of layer l reads adapter.prefix_k/v[l] [P, KVH, T, D] slice s in place as
//    its row's T prefix slots (no RoPE, no positions): stream_prefix() describes it to the block.
//  - Aggregation: h [P][M][H] (after the per-stream final RMSNorm) -> interleaved concat
//    c[m, k·P + s] = h[s][m][k] -> Linear(P·H→H)+bias -> SiLU -> Linear(H→P)+bias -> softmax
//    (fp32) -> w·(1−ε)+ε/P -> out[m] = Σ_s w[m,s]·h[s][m].
#pragma once
#include <cstdint>
#include <vector>

#include "model/qwen2.h"
#include "parscale/adapter.h"

namespace parscale {

// The prefix slots of stream s's rows (no prefix when adapter is null).
RowPrefix stream_prefix(const Adapter* adapter, int64_t n_kv_heads, int64_t head_dim, int64_t s);

// Scratch of aggregate_streams, and after a call its intermediates: concat [M, P·H] (the
// interleaved streams), hidden [M, H] (after SiLU), logits [M, P] (the smoothed stream weights).
// With record = true it also keeps what the training backward needs: pre_silu [M, H] (first
// linear layer's output) and probs [M, P] (the softmax before smoothing).
struct AggregateWorkspace {
  std::vector<float> concat, hidden, logits;
  bool record = false;
  std::vector<float> pre_silu, probs;
};

// h [P][M][H] -> out [M][H] with the adapter's aggregation MLP (H = hidden size).
// stream_weights (optional) receives the smoothed weights [M, P]. adapter null (P = 1): out = h.
void aggregate_streams(const Adapter* adapter, int64_t H, const float* h, int64_t M, float* out, AggregateWorkspace& ws,
                       float* stream_weights = nullptr);

}  // namespace parscale
