// A ParScale adapter: what turns the shared backbone into P parallel streams. Per layer, the
// streams' learned prefix keys/values; after the stack, the aggregation MLP that mixes the
// streams' final hidden states. Immutable once loaded; many adapters (P = 2, 4, 8, ...) share one
// backbone, and every request names the adapter it runs with. P = 1 needs no adapter.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/weight_view.h"

namespace parscale {

struct Adapter {
  std::string name;            // the file it came from ("" for a model folder's own)
  int64_t streams = 2;         // P >= 2
  int64_t prefix_tokens = 0;   // T >= 1
  double smooth = 0.01;        // epsilon of w(1 - eps) + eps / P
  // Per layer l: prefix_k[l], prefix_v[l] [P, KVH, T, D] fp32. The T slots of (stream s, kv head
  // h) are contiguous at ((s * KVH + h) * T) * D: attention reads them in place, as cache slots
  // 0..T-1 of every row of stream s (no RoPE, no positions).
  std::vector<const float*> prefix_k, prefix_v;
  WeightView aggregate0;                    // [H, P*H] fp32, input feature index h*P + s
  const float* aggregate0_bias = nullptr;   // [H]
  WeightView aggregate2;                    // [P, H] fp32
  const float* aggregate2_bias = nullptr;   // [P]
  std::vector<std::shared_ptr<void>> owned; // keeps the storage alive
};

}  // namespace parscale
