#include "model/tensor_specs.h"

namespace parscale {

std::string layer_tensor_name(int64_t layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

void for_each_tensor(const ModelConfig& c, const std::function<void(const TensorSpec&)>& visit) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t QD = c.q_dim(), KD = c.kv_dim();
  using G = ParamGroup;
  using K = ParamKind;
  using R = TensorRole;
  visit({"model.embed_tokens.weight", {V, H}, G::Backbone, K::Embedding, R::Embed, -1});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto t = [&](const char* suffix, std::vector<int64_t> shape, G g, K k, R r) {
      visit({layer_tensor_name(l, suffix), std::move(shape), g, k, r, l});
    };
    t("input_layernorm.weight", {H}, G::Backbone, K::Norm, R::InputNorm);
    t("self_attn.q_proj.weight", {QD, H}, G::Backbone, K::Matrix, R::QProj);
    t("self_attn.q_proj.bias", {QD}, G::Backbone, K::Bias, R::QBias);
    t("self_attn.k_proj.weight", {KD, H}, G::Backbone, K::Matrix, R::KProj);
    t("self_attn.k_proj.bias", {KD}, G::Backbone, K::Bias, R::KBias);
    t("self_attn.v_proj.weight", {KD, H}, G::Backbone, K::Matrix, R::VProj);
    t("self_attn.v_proj.bias", {KD}, G::Backbone, K::Bias, R::VBias);
    t("self_attn.o_proj.weight", {H, QD}, G::Backbone, K::Matrix, R::OProj);
    if (c.parscale_n > 1) {
      const std::vector<int64_t> pshape{c.parscale_n, c.num_key_value_heads, c.parscale_n_tokens, c.head_dim};
      t("self_attn.prefix_k", pshape, G::ParScale, K::Prefix, R::PrefixK);
      t("self_attn.prefix_v", pshape, G::ParScale, K::Prefix, R::PrefixV);
    }
    t("post_attention_layernorm.weight", {H}, G::Backbone, K::Norm, R::PostNorm);
    t("mlp.gate_proj.weight", {I, H}, G::Backbone, K::Matrix, R::GateProj);
    t("mlp.up_proj.weight", {I, H}, G::Backbone, K::Matrix, R::UpProj);
    t("mlp.down_proj.weight", {H, I}, G::Backbone, K::Matrix, R::DownProj);
  }
  visit({"model.norm.weight", {H}, G::Backbone, K::Norm, R::FinalNorm, -1});
  if (c.parscale_n > 1) {
    const int64_t P = c.parscale_n;
    visit({"model.aggregate_layer.0.weight", {H, P * H}, G::ParScale, K::AggregateMatrix, R::Aggregate0W, -1});
    visit({"model.aggregate_layer.0.bias", {H}, G::ParScale, K::AggregateBias, R::Aggregate0B, -1});
    visit({"model.aggregate_layer.2.weight", {P, H}, G::ParScale, K::AggregateMatrix, R::Aggregate2W, -1});
    visit({"model.aggregate_layer.2.bias", {P}, G::ParScale, K::AggregateBias, R::Aggregate2B, -1});
  }
  if (!c.tie_word_embeddings) visit({"lm_head.weight", {V, H}, G::Backbone, K::Matrix, R::LmHead, -1});
}

std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c) {
  std::vector<TensorSpec> s;
  for_each_tensor(c, [&](const TensorSpec& t) { s.push_back(t); });
  return s;
}

}  // namespace parscale
