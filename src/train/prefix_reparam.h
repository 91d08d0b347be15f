// Prefix reparameterization (training only, as in prefix-tuning): instead of training each layer's
// prefix_k / prefix_v [P, KVH, T, D] directly, train a lower-dimensional embedding and a small MLP
// that produce a change of them. Per layer l:
//
//   E  [P·T, R]        W1 [H, R], b1 [H]        W2 [2·KVH·D, H], b2 [2·KVH·D]
//   out = tanh(E·W1ᵀ + b1)·W2ᵀ + b2                 [P·T, 2·KVH·D], row j = s·T + t
//   prefix_k[s, h, t, d] = base_k[s, h, t, d] + out[s·T + t, h·D + d]
//   prefix_v[s, h, t, d] = base_v[s, h, t, d] + out[s·T + t, KVH·D + h·D + d]
//
// base_* are the prefixes the training starts from (the model's or `init`'s), kept fixed. W2 and
// b2 start at zero, so training starts exactly where plain prefix training would, and every
// update moves all P·T prefix rows of a layer through the shared MLP (a low-rank, coupled
// update instead of independent per-slot steps). materialize() folds the current values into the
// ParameterSet's plain prefix tensors, which is all that inference, adapters and export ever see:
// the file format does not change.
//
// One MLP per layer (rather than one shared MLP with an NL-times wider output): each layer keeps
// its own parameters as without the reparameterization, and the largest matrix is [2·KVH·D, H].
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"
#include "train/train_model.h"

namespace parscale::train {

class PrefixReparam {
 public:
  // Tensors for every layer of `params` (P > 1 required): E ~ N(0, 1), W1 ~ N(0, 1/R), b1 = W2 =
  // b2 = 0, deterministic in `seed`; base = the current prefixes of `params`.
  PrefixReparam(const ParameterSet& params, int64_t dim, uint64_t seed);

  // The trainable tensors, named reparam.layers.{l}.{embedding, mlp.0.weight, mlp.0.bias,
  // mlp.2.weight, mlp.2.bias} (kinds Embedding / Matrix / Bias; config = the model's).
  ParameterSet& parameters() { return set_; }
  const ParameterSet& parameters() const { return set_; }
  int64_t dim() const { return dim_; }

  // Writes base + MLP(E) into every prefix_k / prefix_v of `params`.
  void materialize(ParameterSet& params) const;

  // Given the gradients of the model's prefixes in `prefix_grads` (aligned with the specs of the
  // ParameterSet this was made from; the prefix entries must be present), adds the gradients of
  // the reparameterization tensors into `grads` (aligned with parameters().specs).
  void backward(const Gradients& prefix_grads, Gradients& grads) const;

 private:
  struct Layer {
    int64_t prefix_k, prefix_v;  // indices in the model's ParameterSet
    int64_t e, w1, b1, w2, b2;   // indices in set_
  };
  // hid [P·T, H] = tanh(E·W1ᵀ + b1), out [P·T, 2·KVH·D] = hid·W2ᵀ + b2 of layer l.
  void layer_forward(const Layer& L, std::vector<float>& hid, std::vector<float>& out) const;

  int64_t dim_, rows_, hidden_, kvd_;  // R, P·T, H, KVH·D
  int64_t P_, T_, KVH_, D_;
  ParameterSet set_;
  std::vector<Layer> layers_;
  std::vector<std::vector<float>> base_k_, base_v_;  // per layer [P, KVH, T, D]
};

}  // namespace parscale::train
