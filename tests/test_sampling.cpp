// Sampler: bad rows refused, temperature near 0, partial ordering gives the same tokens as a
// full sort, presence / frequency penalties, top_logprobs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "engine/sampling.h"

using namespace parscale;

namespace {

std::vector<float> random_row(int64_t V, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> row(static_cast<size_t>(V));
  for (auto& x : row) x = d(g);
  return row;
}

// The sampler's definition written the obvious way: full sort of the whole vocabulary, then
// top-k, top-p, min-p and one uniform draw over the kept mass (same RNG stream as Sampler).
int32_t reference_sample(const std::vector<float>& logits, const SamplingParams& p, std::mt19937_64& rng) {
  const size_t V = logits.size();
  std::vector<std::pair<float, int32_t>> c(V);
  for (size_t i = 0; i < V; ++i) c[i] = {logits[i], static_cast<int32_t>(i)};
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  size_t keep = V;
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < V) keep = static_cast<size_t>(p.top_k);
  std::vector<double> prob(keep);
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) sum += (prob[i] = std::exp((static_cast<double>(c[i].first) - c[0].first) / p.temperature));
  for (auto& q : prob) q /= sum;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    size_t n = 0;
    while (n < keep) {
      cum += prob[n++];
      if (cum >= p.top_p) break;
    }
    keep = std::max<size_t>(n, 1);
  }
  if (p.min_p > 0.0f) {
    size_t n = 0;
    while (n < keep && prob[n] >= p.min_p * prob[0]) ++n;
    keep = std::max<size_t>(n, 1);
  }
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng);
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r <= 0.0) return c[i].second;
  }
  return c[keep - 1].second;
}

TEST(Sampler, RefusesNaNAndPositiveInfinityLogits) {
  // A NaN made std::sort's comparator inconsistent (out-of-bounds reads); now the row is refused.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    for (float temperature : {0.0f, 1.0f}) {
      SamplingParams p;
      p.temperature = temperature;
      Sampler s(p, 0);
      std::vector<float> row = random_row(200, 1, 1.0f);
      for (size_t i = 3; i < row.size(); i += 7) row[i] = bad;
      try {
        s.sample(row.data(), static_cast<int64_t>(row.size()), {});
        ADD_FAILURE() << "no error for a row holding " << bad << " at temperature " << temperature;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("token 3 is"), std::string::npos) << e.what();
      }
    }
  }
  SamplingParams p;
  Sampler s(p, 0);
  std::vector<float> masked(10, -std::numeric_limits<float>::infinity());
  EXPECT_THROW(s.sample(masked.data(), 10, {}), Error);
}

TEST(Sampler, MaskedTokensAreNeverChosen) {
  SamplingParams p;
  p.seed = 7;
  Sampler s(p, 0);
  for (int i = 0; i < 300; ++i) {
    std::vector<float> row(8, -std::numeric_limits<float>::infinity());
    row[2] = 0.5f;
    row[6] = 0.0f;
    const int32_t id = s.sample(row.data(), 8, {});
    EXPECT_TRUE(id == 2 || id == 6) << id;
  }
}

TEST(Sampler, TemperatureNearZeroIsGreedy) {
  // logit / T overflowed to inf (then inf - inf = NaN) for tiny T; now the weights stay in [0, 1].
  const std::vector<float> row0 = random_row(300, 3, 4.0f);
  const int32_t best = argmax(row0.data(), static_cast<int64_t>(row0.size()));
  for (float temperature : {1e-40f, std::numeric_limits<float>::denorm_min(), 1e-30f, 1e-6f}) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      SamplingParams p;
      p.temperature = temperature;
      p.seed = seed;
      p.top_p = seed % 2 ? 0.9f : 1.0f;
      p.min_p = seed % 3 ? 0.05f : 0.0f;
      Sampler s(p, 0);
      std::vector<float> row = row0;
      EXPECT_EQ(s.sample(row.data(), static_cast<int64_t>(row.size()), {}), best) << temperature << " seed " << seed;
    }
  }
  // Tied maxima at a tiny temperature share the mass equally: both are chosen, nothing else.
  std::vector<int> hits(4, 0);
  SamplingParams p;
  p.temperature = 1e-40f;
  Sampler s(p, 0);
  for (int i = 0; i < 400; ++i) {
    std::vector<float> row = {1.0f, 3.0f, 3.0f, 2.0f};
    ++hits[static_cast<size_t>(s.sample(row.data(), 4, {}))];
  }
  EXPECT_EQ(hits[0] + hits[3], 0);
  EXPECT_GT(hits[1], 100);
  EXPECT_GT(hits[2], 100);
}

TEST(Sampler, PartialOrderingMatchesFullSort) {
  // Top-k off: the sampler orders only as deep as top-p / min-p / the draw need; the tokens
  // must be those of the full-sort definition for the same RNG stream.
  struct Case { float temperature, top_p, min_p; int64_t top_k; float scale; };
  const Case cases[] = {{1.0f, 1.0f, 0.0f, 0, 1.0f},  {0.7f, 0.9f, 0.0f, 0, 3.0f},  {1.3f, 1.0f, 0.05f, 0, 2.0f},
                        {1.0f, 0.95f, 0.1f, 0, 5.0f}, {0.8f, 0.5f, 0.0f, 40, 1.0f}, {1.0f, 1.0f, 0.0f, 0, 0.01f},
                        {2.0f, 0.999f, 0.0f, 0, 0.5f}};
  for (const Case& c : cases) {
    SamplingParams p;
    p.temperature = c.temperature;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.top_k = c.top_k;
    p.seed = 11;
    Sampler s(p, 3);
    std::mt19937_64 ref_rng(p.seed * 0x9E3779B97F4A7C15ull + 3 + 1);
    for (uint32_t step = 0; step < 60; ++step) {
      std::vector<float> row = random_row(1000 + step, 100 + step, c.scale);
      if (step % 5 == 0)
        for (size_t i = 0; i < row.size(); i += 3) row[i] = row[0];  // many ties
      const int32_t want = reference_sample(row, p, ref_rng);
      EXPECT_EQ(s.sample(row.data(), static_cast<int64_t>(row.size()), {}), want)
          << "T " << c.temperature << " top_p " << c.top_p << " min_p " << c.min_p << " step " << step;
    }
  }
}

TEST(Sampler, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  Sampler s(p, 0);
  std::vector<float> row(8, 1.0f);
  // prompt {5, 5}, generated {1, 1, 2, 1, 9 (out of range: ignored)}
  const std::vector<int32_t> seen = {5, 5, 1, 1, 2, 1, 9};
  s.sample(row.data(), 8, seen, 2);
  EXPECT_FLOAT_EQ(row[1], 1.0f - (0.5f + 0.25f * 3));
  EXPECT_FLOAT_EQ(row[2], 1.0f - (0.5f + 0.25f * 1));
  EXPECT_FLOAT_EQ(row[5], 1.0f);  // prompt token: not penalised
  EXPECT_FLOAT_EQ(row[0], 1.0f);
  // Called again, the counts start from zero (no state carried between calls).
  std::vector<float> row2(8, 1.0f);
  s.sample(row2.data(), 8, seen, 2);
  EXPECT_EQ(row2, row);
  // The default counts all of `seen`; negative penalties raise the logits; the choice follows.
  SamplingParams q;
  q.temperature = 0.0f;
  q.presence_penalty = -1.0f;
  Sampler s2(q, 0);
  std::vector<float> row3 = {1.0f, 1.5f, 1.0f, 1.0f};
  EXPECT_EQ(s2.sample(row3.data(), 4, {3}), 3);
  EXPECT_FLOAT_EQ(row3[3], 2.0f);
}

TEST(SamplingParams, PenaltyRanges) {
  SamplingParams p;
  for (float v : {-2.0f, 0.0f, 2.0f}) {
    p.presence_penalty = v;
    p.frequency_penalty = v;
    EXPECT_NO_THROW(p.validate());
  }
  for (float v : {-2.01f, 2.5f, std::numeric_limits<float>::quiet_NaN()}) {
    p = SamplingParams{};
    p.presence_penalty = v;
    EXPECT_THROW(p.validate(), Error);
    p = SamplingParams{};
    p.frequency_penalty = v;
    EXPECT_THROW(p.validate(), Error);
  }
}

TEST(TopLogprobs, LogSoftmaxSortedTiesByLowerId) {
  const std::vector<float> row = {0.5f, 2.0f, -1.0f, 2.0f, -std::numeric_limits<float>::infinity(), 1.0f};
  double sum = 0.0;
  for (float x : row) sum += std::exp(static_cast<double>(x));
  auto lp = [&](int i) { return static_cast<float>(row[static_cast<size_t>(i)] - std::log(sum)); };
  float chosen = 0.0f;
  std::vector<std::pair<int32_t, float>> top;
  top_logprobs(row.data(), 6, 4, 5, &chosen, &top);
  EXPECT_FLOAT_EQ(chosen, lp(5));
  ASSERT_EQ(top.size(), 4u);
  const int32_t order[] = {1, 3, 5, 0};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(top[i].first, order[i]);
    EXPECT_FLOAT_EQ(top[i].second, lp(order[i]));
  }
  top_logprobs(row.data(), 6, 50, 4, &chosen, &top);  // n clamped to V; masked token: -inf
  ASSERT_EQ(top.size(), 6u);
  EXPECT_EQ(top.back().first, 4);
  EXPECT_EQ(chosen, -std::numeric_limits<float>::infinity());
  top_logprobs(row.data(), 6, 0, 1, &chosen, &top);
  EXPECT_TRUE(top.empty());
  // Large logits: the sum is taken relative to the max (no overflow).
  const std::vector<float> big = {1000.0f, 1000.0f};  // exp(1000) overflows even a double
  top_logprobs(big.data(), 2, 1, 0, &chosen, &top);
  EXPECT_FLOAT_EQ(chosen, static_cast<float>(-std::log(2.0)));
  EXPECT_THROW(top_logprobs(row.data(), 6, 1, 6, &chosen, &top), Error);
  std::vector<float> nan_row = row;
  nan_row[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(top_logprobs(nan_row.data(), 6, 1, 0, &chosen, &top), Error);
}

}  // namespace
