// AdamW with global-norm gradient clipping (torch.optim.AdamW + clip_grad_norm_ semantics) and
// the learning-rate schedule (linear warmup, cosine decay).
#pragma once
#include <cstdint>
#include <vector>

#include "model/weights.h"
#include "train/train_model.h"

namespace parscale::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  double clip_norm = 1.0;  // <= 0: no clipping
};

// Decay rule: a trained tensor gets weight decay iff it has ndim >= 2 and is not the embedding
// (prefixes, projections, lm_head and the aggregate-layer weights do; biases, norms and the
// embedding, tied or not, do not).
bool gets_weight_decay(const TensorSpec& spec);

class AdamW {
 public:
  AdamW(const std::vector<TensorSpec>& specs, const std::vector<bool>& mask, const AdamWConfig& config);

  // Clips g in place, applies one update to the trained tensors of p (those in the constructor's
  // mask) with learning rate lr, and returns the global gradient L2 norm before clipping (summed
  // in double in tensor order). global_norm >= 0 replaces that norm (clipping over tensors of
  // several optimizers, e.g. with the prefix reparameterization).
  double step(ParameterSet& p, Gradients& g, double lr, double global_norm = -1.0);

  int64_t steps_done() const { return step_; }
  void set_steps_done(int64_t s) { step_ = s; }
  // First/second moments aligned with the specs (empty for untrained tensors).
  std::vector<std::vector<float>> m, v;

 private:
  std::vector<TensorSpec> specs_;
  AdamWConfig cfg_;
  int64_t step_ = 0;
};

// Global L2 norm of the non-empty gradient entries (double, tensor order).
double gradient_norm(const Gradients& g);

// Learning rate at optimizer step k (0-based): linear warmup from lr/warmup to lr over `warmup`
// steps, then cosine decay to min_lr at step `total`.
double scheduled_lr(int64_t k, int64_t total, int64_t warmup, double lr, double min_lr);

}  // namespace parscale::train
