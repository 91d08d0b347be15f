#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace parscale {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    throw Error("--temperature must be >= 0, found " + std::to_string(temperature));
  if (top_k < 0) throw Error("--top-k must be >= 0, found " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) throw Error("--top-p must lie in (0, 1], found " + std::to_string(top_p));
  if (!(min_p >= 0.0f && min_p <= 1.0f)) throw Error("--min-p must lie in [0, 1], found " + std::to_string(min_p));
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    throw Error("--repetition-penalty must be > 0, found " + std::to_string(repetition_penalty));
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplingParams& params, uint64_t stream_id)
    : p_(params), rng_(params.seed * 0x9E3779B97F4A7C15ull + stream_id + 1) {}

int32_t Sampler::sample(float* logits, int64_t V, const std::vector<int32_t>& seen) {
  if (p_.repetition_penalty != 1.0f) {
    // Each distinct seen token is rescaled once (HF gathers, rescales and scatters).
    seen_mark_.assign(static_cast<size_t>(V), 0);
    for (int32_t id : seen) {
      if (id < 0 || id >= V || seen_mark_[static_cast<size_t>(id)]) continue;
      seen_mark_[static_cast<size_t>(id)] = 1;
      float& l = logits[id];
      l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.temperature == 0.0f) return argmax(logits, V);
  cand_.resize(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) cand_[static_cast<size_t>(i)] = {logits[i] / p_.temperature, static_cast<int32_t>(i)};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    keep = static_cast<size_t>(p_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Probabilities over the kept candidates (sorted, descending).
  const float mx = cand_[0].first;
  prob_.assign(keep, 0.0);
  auto& prob = prob_;
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) sum += (prob[i] = std::exp(static_cast<double>(cand_[i].first - mx)));
  for (auto& q : prob) q /= sum;
  if (p_.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (at least one token).
    double cum = 0.0;
    size_t n = 0;
    while (n < keep) {
      cum += prob[n++];
      if (cum >= p_.top_p) break;
    }
    keep = std::max<size_t>(n, 1);
  }
  if (p_.min_p > 0.0f) {
    const double threshold = p_.min_p * prob[0];
    size_t n = 0;
    while (n < keep && prob[n] >= threshold) ++n;
    keep = std::max<size_t>(n, 1);
  }
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r <= 0.0) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace parscale
