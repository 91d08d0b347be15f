// The one list of tensors a configuration implies (HF names and shapes). It drives loading,
// validation, saving, adapters and optimizer updates, so every tool agrees on what a model is.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace parscale {

enum class ParamGroup {
  Backbone,  // shared Qwen2 weights
  ParScale,  // per-stream prefixes and the aggregation MLP (what an adapter holds)
};

enum class ParamKind { Embedding, Matrix, Bias, Norm, Prefix, AggregateMatrix, AggregateBias };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  ParamGroup group;
  ParamKind kind;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// All tensors of the model in a fixed order: embed_tokens, per layer (input norm, q/k/v/o with
// q/k/v biases when attention_bias, q_norm/k_norm [head_dim] when qk_norm, prefixes when P > 1,
// post-attention norm, mlp), final norm, aggregate_layer (P > 1), lm_head (untied only).
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c);

// HF names of layer tensors, e.g. layer_tensor_name(3, "self_attn.q_proj.weight").
std::string layer_tensor_name(int64_t layer, const char* suffix);

}  // namespace parscale
