#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
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
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    throw Error("presence_penalty must lie in [-2, 2], found " + std::to_string(presence_penalty));
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    throw Error("frequency_penalty must lie in [-2, 2], found " + std::to_string(frequency_penalty));
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

namespace {

// Largest logit of a row; refuses NaN, +inf and a row without any finite logit.
float checked_row_max(const float* logits, int64_t V, const char* who) {
  check(V > 0, std::string(who) + ": empty logits row");
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) {
    const float l = logits[i];
    if (std::isnan(l) || l == std::numeric_limits<float>::infinity())
      throw Error(std::string(who) + ": logit of token " + std::to_string(i) + " is " + (std::isnan(l) ? "NaN" : "+inf") +
                  " (broken model output)");
    mx = std::max(mx, l);
  }
  check(std::isfinite(mx), std::string(who) + ": every logit of the row is -inf (no token can be chosen)");
  return mx;
}

// Descending by logit, then ascending id: a strict total order on rows without NaN.
bool before(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

Sampler::Sampler(const SamplingParams& params, uint64_t stream_id)
    : p_(params), rng_(params.seed * 0x9E3779B97F4A7C15ull + stream_id + 1) {}

void Sampler::order_prefix(size_t n) {
  const size_t size = cand_.size();
  n = std::min(n, size);
  if (n <= sorted_) return;
  // Grow geometrically so that walking the order one token at a time stays O(V log depth).
  const size_t target = std::min(size, std::max({n, 2 * sorted_, size_t{64}}));
  auto first = cand_.begin() + static_cast<std::ptrdiff_t>(sorted_);
  auto mid = cand_.begin() + static_cast<std::ptrdiff_t>(target);
  if (target < size) std::nth_element(first, mid, cand_.end(), before);
  std::sort(first, mid, before);
  sorted_ = target;
}

int32_t Sampler::sample(float* logits, int64_t V, const std::vector<int32_t>& seen, size_t generated_from) {
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
  if ((p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) && generated_from < seen.size()) {
    if (counts_.size() != static_cast<size_t>(V)) counts_.assign(static_cast<size_t>(V), 0);
    const auto gen_begin = seen.begin() + static_cast<std::ptrdiff_t>(generated_from);
    for (auto it = gen_begin; it != seen.end(); ++it)
      if (*it >= 0 && *it < V) ++counts_[static_cast<size_t>(*it)];
    for (auto it = gen_begin; it != seen.end(); ++it) {
      if (*it < 0 || *it >= V) continue;
      int32_t& c = counts_[static_cast<size_t>(*it)];
      if (c == 0) continue;  // already applied for this id
      logits[*it] -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(c);
      c = 0;  // counts_ is all zero again after the loop
    }
  }
  const float mx = checked_row_max(logits, V, "sampler");
  if (p_.temperature == 0.0f) return argmax(logits, V);

  cand_.resize(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) cand_[static_cast<size_t>(i)] = {logits[i], static_cast<int32_t>(i)};
  sorted_ = 0;
  // Weights exp((l - max) / T) in double: in [0, 1] for any T > 0, never inf / NaN.
  const double T = p_.temperature;
  auto weight = [&](float l) { return std::exp((static_cast<double>(l) - mx) / T); };

  size_t keep = cand_.size();
  double sum = 0.0;
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
    keep = static_cast<size_t>(p_.top_k);
    order_prefix(keep);
    for (size_t i = 0; i < keep; ++i) sum += weight(cand_[i].first);
  } else {
    for (int64_t i = 0; i < V; ++i) sum += weight(logits[i]);
  }
  // prob(i): probability of the i-th most likely kept candidate; orders only as deep as asked.
  auto prob = [&](size_t i) {
    order_prefix(i + 1);
    return weight(cand_[i].first) / sum;
  };
  if (p_.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (at least one token).
    double cum = 0.0;
    size_t n = 0;
    while (n < keep) {
      cum += prob(n++);
      if (cum >= p_.top_p) break;
    }
    keep = std::max<size_t>(n, 1);
  }
  if (p_.min_p > 0.0f) {
    const double threshold = p_.min_p * prob(0);
    size_t n = 0;
    while (n < keep && prob(n) >= threshold) ++n;
    keep = std::max<size_t>(n, 1);
  }
  // Mass of the kept candidates (all of it, 1, when nothing was cut: no need to order them all).
  double total = 0.0;
  if (keep == cand_.size()) {
    total = 1.0;
  } else {
    for (size_t i = 0; i < keep; ++i) total += prob(i);
  }
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  size_t last_positive = 0;
  for (size_t i = 0; i < keep; ++i) {
    const double q = prob(i);
    if (q > 0.0) last_positive = i;
    r -= q;
    if (r <= 0.0) return cand_[i].second;
  }
  // Rounding left r > 0 after the whole kept mass: the last candidate that can be chosen.
  return cand_[last_positive].second;
}

void top_logprobs(const float* logits, int64_t V, int n, int32_t chosen, float* chosen_logprob,
                  std::vector<std::pair<int32_t, float>>* top) {
  const float mx = checked_row_max(logits, V, "top_logprobs");
  check(chosen >= 0 && chosen < V,
        "top_logprobs: chosen token " + std::to_string(chosen) + " outside the vocabulary [0, " + std::to_string(V) + ")");
  double sum = 0.0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  if (chosen_logprob) *chosen_logprob = static_cast<float>(static_cast<double>(logits[chosen]) - lse);
  if (!top) return;
  top->clear();
  const size_t k = static_cast<size_t>(std::clamp<int64_t>(n, 0, V));
  if (k == 0) return;
  std::vector<std::pair<float, int32_t>> c(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) c[static_cast<size_t>(i)] = {logits[i], static_cast<int32_t>(i)};
  std::partial_sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(k), c.end(), before);
  top->reserve(k);
  for (size_t i = 0; i < k; ++i) top->emplace_back(c[i].second, static_cast<float>(static_cast<double>(c[i].first) - lse));
}

}  // namespace parscale
