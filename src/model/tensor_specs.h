// The one enumeration of the tensors a configuration implies (HF names, shapes, and the role each
// plays). It drives loading and validation, saving, adapters, conversion, random weights for
// benchmarks, training parameters and export, so every tool agrees on what a model is.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"

namespace parscale {

enum class ParamGroup {
  Backbone,  // shared Qwen2 weights
  ParScale,  // per-stream prefixes and the aggregation MLP (what an adapter holds)
};

enum class ParamKind { Embedding, Matrix, Bias, Norm, Prefix, AggregateMatrix, AggregateBias };

// What a tensor is, independent of its layer: binds a name to a field of Backbone / Adapter.
enum class TensorRole {
  Embed, InputNorm, QProj, QBias, KProj, KBias, VProj, VBias, OProj, PrefixK, PrefixV, PostNorm,
  GateProj, UpProj, DownProj, FinalNorm, Aggregate0W, Aggregate0B, Aggregate2W, Aggregate2B, LmHead,
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  ParamGroup group;
  ParamKind kind;
  TensorRole role = TensorRole::Embed;
  int64_t layer = -1;  // decoder layer, or -1 for model-level tensors
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Visits every tensor of the model in a fixed order: embed_tokens, per layer (attention, prefixes
// when P > 1, mlp, norms), final norm, aggregate_layer (P > 1), lm_head (untied only).
void for_each_tensor(const ModelConfig& c, const std::function<void(const TensorSpec&)>& visit);

// The same enumeration as a list.
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c);

// HF names of layer tensors, e.g. layer_tensor_name(3, "self_attn.q_proj.weight").
std::string layer_tensor_name(int64_t layer, const char* suffix);

}  // namespace parscale
