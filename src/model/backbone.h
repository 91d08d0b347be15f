// The backbone: the Qwen2 / Qwen3 weights every stream and every adapter shares (embeddings, decoder
// layers, final norm, lm_head). Immutable once loaded; shared by any number of adapters and
// requests (hold it through std::shared_ptr<const Backbone>). Views point into the mapped files
// or into owned buffers that `store` / `owned` keep alive.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/weight_view.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace parscale {

struct BackboneLayer {
  const float* input_norm = nullptr;           // [H]
  const float* post_norm = nullptr;            // [H]
  WeightView q_proj, k_proj, v_proj, o_proj;   // [QD,H], [KD,H], [KD,H], [H,QD]
  const float* q_bias = nullptr;               // [QD], null unless config.attention_bias
  const float* k_bias = nullptr;               // [KD], null unless config.attention_bias
  const float* v_bias = nullptr;               // [KD], null unless config.attention_bias
  const float* q_norm = nullptr;               // [D] per-head RMSNorm of q, null unless config.qk_norm
  const float* k_norm = nullptr;               // [D] per-head RMSNorm of k, null unless config.qk_norm
  WeightView gate_proj, up_proj, down_proj;    // [I,H], [I,H], [H,I]
};

// f(view) for the seven matrices of a layer (q, k, v, o, gate, up, down); L may be const.
template <class Layer, class F>
void for_each_layer_matrix(Layer& L, F&& f) {
  for (auto* v : {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj}) f(*v);
}

struct Backbone {
  ModelConfig config;  // the backbone's shape; its ParScale fields describe the folder's own adapter
  WeightView embed_tokens;             // [V, H]
  WeightView lm_head;                  // [V, H] (the embedding's storage when tied)
  const float* final_norm = nullptr;   // [H]
  std::vector<BackboneLayer> layers;
  bool tied = false;
  std::shared_ptr<TensorStore> store;
  std::vector<std::shared_ptr<void>> owned;
};

}  // namespace parscale
