#include "model/tensor_specs.h"

namespace parscale {

std::string layer_tensor_name(int64_t layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t QD = c.q_dim(), KD = c.kv_dim();
  using G = ParamGroup;
  using K = ParamKind;
  std::vector<TensorSpec> s;
  s.push_back({"model.embed_tokens.weight", {V, H}, G::Backbone, K::Embedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto n = [&](const char* suffix) { return layer_tensor_name(l, suffix); };
    s.push_back({n("input_layernorm.weight"), {H}, G::Backbone, K::Norm});
    s.push_back({n("self_attn.q_proj.weight"), {QD, H}, G::Backbone, K::Matrix});
    if (c.attention_bias) s.push_back({n("self_attn.q_proj.bias"), {QD}, G::Backbone, K::Bias});
    s.push_back({n("self_attn.k_proj.weight"), {KD, H}, G::Backbone, K::Matrix});
    if (c.attention_bias) s.push_back({n("self_attn.k_proj.bias"), {KD}, G::Backbone, K::Bias});
    s.push_back({n("self_attn.v_proj.weight"), {KD, H}, G::Backbone, K::Matrix});
    if (c.attention_bias) s.push_back({n("self_attn.v_proj.bias"), {KD}, G::Backbone, K::Bias});
    s.push_back({n("self_attn.o_proj.weight"), {H, QD}, G::Backbone, K::Matrix});
    if (c.qk_norm) {
      s.push_back({n("self_attn.q_norm.weight"), {c.head_dim}, G::Backbone, K::Norm});
      s.push_back({n("self_attn.k_norm.weight"), {c.head_dim}, G::Backbone, K::Norm});
    }
    if (c.parscale_n > 1) {
      const std::vector<int64_t> pshape{c.parscale_n, c.num_key_value_heads, c.parscale_n_tokens, c.head_dim};
      s.push_back({n("self_attn.prefix_k"), pshape, G::ParScale, K::Prefix});
      s.push_back({n("self_attn.prefix_v"), pshape, G::ParScale, K::Prefix});
    }
    s.push_back({n("post_attention_layernorm.weight"), {H}, G::Backbone, K::Norm});
    s.push_back({n("mlp.gate_proj.weight"), {I, H}, G::Backbone, K::Matrix});
    s.push_back({n("mlp.up_proj.weight"), {I, H}, G::Backbone, K::Matrix});
    s.push_back({n("mlp.down_proj.weight"), {H, I}, G::Backbone, K::Matrix});
  }
  s.push_back({"model.norm.weight", {H}, G::Backbone, K::Norm});
  if (c.parscale_n > 1) {
    const int64_t P = c.parscale_n;
    s.push_back({"model.aggregate_layer.0.weight", {H, P * H}, G::ParScale, K::AggregateMatrix});
    s.push_back({"model.aggregate_layer.0.bias", {H}, G::ParScale, K::AggregateBias});
    s.push_back({"model.aggregate_layer.2.weight", {P, H}, G::ParScale, K::AggregateMatrix});
    s.push_back({"model.aggregate_layer.2.bias", {P}, G::ParScale, K::AggregateBias});
  }
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {V, H}, G::Backbone, K::Matrix});
  return s;
}

}  // namespace parscale
