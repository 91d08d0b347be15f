#include "core/threads.h"
#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace parscale::train {

bool gets_weight_decay(const TensorSpec& spec) {
  return spec.shape.size() >= 2 && spec.name != "model.embed_tokens.weight";
}

AdamW::AdamW(const std::vector<TensorSpec>& specs, const std::vector<bool>& mask, const AdamWConfig& config)
    : specs_(specs), cfg_(config) {
  m.resize(specs.size());
  v.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i)
    if (mask[i]) {
      m[i].assign(static_cast<size_t>(specs[i].numel()), 0.0f);
      v[i].assign(static_cast<size_t>(specs[i].numel()), 0.0f);
    }
}

double gradient_norm(const Gradients& g) {
  double ss = 0.0;
  for (const auto& t : g.values) {
    double s = 0.0;
    for (float x : t) s += static_cast<double>(x) * x;
    ss += s;
  }
  return std::sqrt(ss);
}

double AdamW::step(ParameterSet& p, Gradients& g, double lr, double global_norm) {
  const double norm = global_norm >= 0.0 ? global_norm : gradient_norm(g);
  const float clip = cfg_.clip_norm > 0 ? static_cast<float>(std::min(1.0, cfg_.clip_norm / (norm + 1e-6))) : 1.0f;
  ++step_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(step_));
  const float b1 = static_cast<float>(cfg_.beta1), b2 = static_cast<float>(cfg_.beta2);
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float eps = static_cast<float>(cfg_.eps);
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (g.values[i].empty() || m[i].empty()) continue;  // not trained by this optimizer
    float* w = p.values[i].data();
    float* gi = g.values[i].data();
    float* mi = m[i].data();
    float* vi = v[i].data();
    const int64_t n = static_cast<int64_t>(g.values[i].size());
    const float decay = gets_weight_decay(specs_[i]) ? static_cast<float>(1.0 - lr * cfg_.weight_decay) : 1.0f;
    // Element-wise: blocks of any size give the same result. The loop over a block (restrict
    // pointers, no call) is what the compiler vectorizes.
    const float scale = clip < 1.0f ? clip : 1.0f;
    parallel_for(n, grain_if(n > 65536, n), [=](int64_t b, int64_t e, int) {
      float* __restrict wr = w;
      const float* __restrict gr = gi;
      float* __restrict mr = mi;
      float* __restrict vr = vi;
      for (int64_t j = b; j < e; ++j) {
        const float gj = gr[j] * scale;
        wr[j] *= decay;
        mr[j] = b1 * mr[j] + (1.0f - b1) * gj;
        vr[j] = b2 * vr[j] + (1.0f - b2) * gj * gj;
        wr[j] -= step_size * mr[j] / (std::sqrt(vr[j]) * inv_sqrt_bc2 + eps);
      }
    });
  }
  return norm;
}

double scheduled_lr(int64_t k, int64_t total, int64_t warmup, double lr, double min_lr) {
  if (warmup > 0 && k < warmup) return lr * static_cast<double>(k + 1) / static_cast<double>(warmup);
  const int64_t span = std::max<int64_t>(1, total - warmup);
  const double progress = std::min(1.0, static_cast<double>(k - warmup) / static_cast<double>(span));
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace parscale::train
