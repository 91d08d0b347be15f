#include "train/prefix_reparam.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/backward.h"
#include "kernels/kernels.h"
#include "train/model_io.h"

namespace parscale::train {

namespace kb = parscale::kernels;

PrefixReparam::PrefixReparam(const ParameterSet& params, int64_t dim, uint64_t seed) : dim_(dim) {
  const ModelConfig& c = params.config;
  check(c.parscale_n > 1, "prefix reparameterization: the model has P = 1, so it has no prefixes");
  check(dim > 0, "prefix reparameterization: the dimension must be > 0, found " + std::to_string(dim));
  P_ = c.parscale_n;
  T_ = c.parscale_n_tokens;
  KVH_ = c.num_key_value_heads;
  D_ = c.head_dim;
  rows_ = P_ * T_;
  hidden_ = c.hidden_size;
  kvd_ = KVH_ * D_;
  set_.config = c;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, ParamKind kind) {
    set_.specs.push_back({name, std::move(shape), ParamGroup::ParScale, kind});
    set_.values.emplace_back(static_cast<size_t>(set_.specs.back().numel()), 0.0f);
    return static_cast<int64_t>(set_.specs.size() - 1);
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string pre = "reparam.layers." + std::to_string(l) + ".";
    Layer L;
    L.prefix_k = find_tensor(params, layer_tensor_name(l, "self_attn.prefix_k"));
    L.prefix_v = find_tensor(params, layer_tensor_name(l, "self_attn.prefix_v"));
    check(L.prefix_k >= 0 && L.prefix_v >= 0, "prefix reparameterization: layer " + std::to_string(l) + " has no prefixes");
    L.e = add(pre + "embedding", {rows_, dim}, ParamKind::Embedding);
    L.w1 = add(pre + "mlp.0.weight", {hidden_, dim}, ParamKind::Matrix);
    L.b1 = add(pre + "mlp.0.bias", {hidden_}, ParamKind::Bias);
    L.w2 = add(pre + "mlp.2.weight", {2 * kvd_, hidden_}, ParamKind::Matrix);
    L.b2 = add(pre + "mlp.2.bias", {2 * kvd_}, ParamKind::Bias);
    NormalRng rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(l) + 1);
    for (float& x : set_.values[static_cast<size_t>(L.e)]) x = static_cast<float>(rng.next());
    const double w1_std = 1.0 / std::sqrt(static_cast<double>(dim));
    for (float& x : set_.values[static_cast<size_t>(L.w1)]) x = static_cast<float>(w1_std * rng.next());
    base_k_.push_back(params.values[static_cast<size_t>(L.prefix_k)]);
    base_v_.push_back(params.values[static_cast<size_t>(L.prefix_v)]);
    layers_.push_back(L);
  }
}

void PrefixReparam::layer_forward(const Layer& L, std::vector<float>& hid, std::vector<float>& out) const {
  auto val = [&](int64_t i) { return set_.values[static_cast<size_t>(i)].data(); };
  hid.resize(static_cast<size_t>(rows_ * hidden_));
  out.resize(static_cast<size_t>(rows_ * 2 * kvd_));
  kb::matmul(val(L.e), rows_, WeightView{DType::F32, val(L.w1), hidden_, dim_}, val(L.b1), hid.data());
  for (float& h : hid) h = std::tanh(h);
  kb::matmul(hid.data(), rows_, WeightView{DType::F32, val(L.w2), 2 * kvd_, hidden_}, val(L.b2), out.data());
}

void PrefixReparam::materialize(ParameterSet& params) const {
  std::vector<float> hid, out;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    layer_forward(L, hid, out);
    float* pk = params.values[static_cast<size_t>(L.prefix_k)].data();
    float* pv = params.values[static_cast<size_t>(L.prefix_v)].data();
    for (int64_t s = 0; s < P_; ++s)
      for (int64_t h = 0; h < KVH_; ++h)
        for (int64_t t = 0; t < T_; ++t) {
          const int64_t dst = ((s * KVH_ + h) * T_ + t) * D_;
          const float* row = out.data() + (s * T_ + t) * 2 * kvd_ + h * D_;
          for (int64_t d = 0; d < D_; ++d) {
            pk[dst + d] = base_k_[l][static_cast<size_t>(dst + d)] + row[d];
            pv[dst + d] = base_v_[l][static_cast<size_t>(dst + d)] + row[kvd_ + d];
          }
        }
  }
}

void PrefixReparam::backward(const Gradients& prefix_grads, Gradients& grads) const {
  auto val = [&](int64_t i) { return set_.values[static_cast<size_t>(i)].data(); };
  auto grad = [&](int64_t i) {
    float* g = grads.get(i);
    check(g != nullptr, "prefix reparameterization: no gradient buffer for '" + set_.specs[static_cast<size_t>(i)].name + "'");
    return g;
  };
  std::vector<float> hid, out, dout(static_cast<size_t>(rows_ * 2 * kvd_)), dhid(static_cast<size_t>(rows_ * hidden_));
  for (const Layer& L : layers_) {
    const auto& gk = prefix_grads.values[static_cast<size_t>(L.prefix_k)];
    const auto& gv = prefix_grads.values[static_cast<size_t>(L.prefix_v)];
    check(!gk.empty() && !gv.empty(), "prefix reparameterization: the prefixes' gradients were not computed");
    layer_forward(L, hid, out);
    // dout[s·T + t, h·D + d] = ∂/∂prefix_k[s, h, t, d]; the V half likewise.
    for (int64_t s = 0; s < P_; ++s)
      for (int64_t h = 0; h < KVH_; ++h)
        for (int64_t t = 0; t < T_; ++t) {
          const int64_t src = ((s * KVH_ + h) * T_ + t) * D_;
          float* row = dout.data() + (s * T_ + t) * 2 * kvd_ + h * D_;
          for (int64_t d = 0; d < D_; ++d) {
            row[d] = gk[static_cast<size_t>(src + d)];
            row[kvd_ + d] = gv[static_cast<size_t>(src + d)];
          }
        }
    kb::matmul_backward_weight(dout.data(), hid.data(), rows_, 2 * kvd_, hidden_, grad(L.w2), grad(L.b2));
    kb::matmul_backward_input(dout.data(), rows_, val(L.w2), 2 * kvd_, hidden_, dhid.data(), false);
    for (size_t i = 0; i < dhid.size(); ++i) dhid[i] *= 1.0f - hid[i] * hid[i];  // tanh' = 1 − tanh²
    kb::matmul_backward_weight(dhid.data(), val(L.e), rows_, hidden_, dim_, grad(L.w1), grad(L.b1));
    kb::matmul_backward_input(dhid.data(), rows_, val(L.w1), hidden_, dim_, grad(L.e), true);
  }
}

}  // namespace parscale::train
